"""Fusion of per-item modality features into one item vector (multimodal DRR; docs/differences.md#drr-mm-training).

Inputs are M modality vectors ``x_m`` ([..., d_m], d_m may differ) and a presence mask ``p`` ([..., M]);
an item lacking modality m has ``p_m = 0`` (its ``x_m`` is ignored, whatever it holds). Every layer is
linear, as in the seed (no activations). With ``P = sum_m p_m``:

* early / concat:  f = W [p_1 x_1; ...; p_M x_M; p] + b                 (one Dense on the pooled input;
                   the mask is an input too, so "modality missing" is not the same as "feature = 0")
* early / mean:    f = W (sum_m p_m pad(x_m) / max(P, 1)) + b           (pad: zero-pad to max d_m; the
                   seed's features were all 768-d, where pad is the identity)
* late / concat:   f = [p_1 (W_1 x_1 + b_1); ...; p_M (W_M x_M + b_M)]  (out dims split as evenly as
                   possible, the remainder to the first modalities: 64 over 3 = 22/21/21, as the seed)
* late / mean:     f = sum_m p_m (W_m x_m + b_m) / max(P, 1)            (each W_m maps to the full width)

An item with no modality at all gets ``b`` (early) or zeros (late): a defined vector, never NaN. The
module is unbatched in spirit; leading axes broadcast through Dense, so it fuses one item, a batch, or
the whole catalogue.
"""
from __future__ import annotations

from typing import Literal, Sequence

import flax.linen as nn
import jax.numpy as jnp

FUSIONS = ("early", "late")
POOLS = ("concat", "mean")


def late_concat_dims(out_dim: int, n_modalities: int) -> tuple[int, ...]:
    """Per-modality widths of late/concat fusion: as even as possible, extras to the first ones."""
    base, extra = divmod(out_dim, n_modalities)
    return tuple(base + (m < extra) for m in range(n_modalities))


class Fusion(nn.Module):
    out_dim: int
    """Width of the fused item vector."""
    fusion: Literal["early", "late"] = "early"
    """early: pool the raw modality vectors, then one Dense; late: one Dense per modality, then pool."""
    pool: Literal["concat", "mean"] = "concat"
    """How modalities are pooled: concatenation, or the element-wise mean over the present ones."""

    @nn.compact
    def __call__(self, feats: Sequence[jnp.ndarray], present: jnp.ndarray) -> jnp.ndarray:
        if self.fusion not in FUSIONS or self.pool not in POOLS:
            raise ValueError(f"fusion must be one of {FUSIONS} and pool one of {POOLS}, got {self.fusion}/{self.pool}")
        n = len(feats)
        if n == 0 or present.shape[-1] != n:
            raise ValueError(f"need >= 1 modality and a [..., {n}] presence mask, got {present.shape}")
        p = present.astype(jnp.float32)
        masked = [x * p[..., m, None] for m, x in enumerate(feats)]
        count = jnp.maximum(p.sum(-1, keepdims=True), 1.0)
        if self.fusion == "early":
            if self.pool == "concat":
                pooled = jnp.concatenate(masked + [p], axis=-1)
            else:
                width = max(x.shape[-1] for x in feats)
                padded = [jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]) for x in masked]
                pooled = sum(padded) / count
            return nn.Dense(self.out_dim, name="early")(pooled)
        widths = late_concat_dims(self.out_dim, n) if self.pool == "concat" else (self.out_dim,) * n
        if min(widths) < 1:
            raise ValueError(f"late/concat needs out_dim >= number of modalities ({self.out_dim} < {n})")
        outs = [nn.Dense(w, name=f"late_{m}")(x) * p[..., m, None] for m, (x, w) in enumerate(zip(feats, widths))]
        if self.pool == "concat":
            return jnp.concatenate(outs, axis=-1)
        return sum(outs) / count
