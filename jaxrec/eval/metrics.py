"""Top-K ranking metrics for full-catalogue recommendation evaluation.

All metrics are computed per user, vectorised over a batch of users, inside a
single jitted function (:func:`topk_metrics`). Conventions:

* Inputs are dense ``[B, I]`` arrays: ``scores`` (float, higher is better),
  ``relevant`` (bool, the held-out ground truth) and ``exclude`` (bool, items
  that must never be recommended, typically the user's training interactions).
* Excluded items are removed from the ranking by setting their score to
  ``-inf``. NaN scores are also mapped to ``-inf`` so that a single NaN cannot
  poison the ordering (``top_k`` has no well-defined order for NaN).
* Ranking uses :func:`jax.lax.top_k`, which breaks ties in favour of the lower
  item index. Evaluation is therefore deterministic, but a model that outputs
  constant scores is credited with whatever lies at the lowest indices.
* When fewer than ``K`` items are rankable, ``top_k`` fills the remaining
  slots with excluded (``-inf``) items; such slots are never hits, and
  ``precision@K`` still divides by ``K``. Rankable items whose score is ``-inf``
  or NaN tie with those filler slots and are ordered among them by index.
* An item that is both relevant and excluded is *not* counted as relevant:
  it can never be ranked, so counting it would cap recall/NDCG below 1 for
  reasons that have nothing to do with the model.
  ``n_rel = sum(relevant & ~exclude)`` per user.
* Relevance is binary. ``ndcg@K = DCG@K / IDCG@K`` with
  ``DCG@K = sum_{p<K} rel_p / log2(p + 2)`` (``p`` is the 0-based rank) and
  ``IDCG@K = sum_{p < min(K, n_rel)} 1 / log2(p + 2)``.
* Users with ``n_rel == 0`` get NaN for ``recall@K`` and ``ndcg@K`` (the
  quantities are undefined) and 0 for ``hr@K`` and ``precision@K``.
  :func:`mean_metrics` averages with ``nanmean`` so such users are left out of
  the undefined metrics rather than dragging them towards 0.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ideal_dcg", "mean_metrics", "topk_metrics"]


def _discounts(k: int) -> jax.Array:
    """Binary-relevance DCG gain at 0-based ranks ``0..k-1``: ``1/log2(p+2)``."""
    return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def ideal_dcg(n_rel: jax.Array, k: int) -> jax.Array:
    """Best achievable DCG@k for a user with ``n_rel`` relevant items.

    Args:
      n_rel: integer array of any shape, number of rankable relevant items.
      k: static cut-off.

    Returns:
      float32 array shaped like ``n_rel``: ``sum_{p < min(k, n_rel)} 1/log2(p+2)``.
      Zero where ``n_rel == 0``.
    """
    n_rel = jnp.asarray(n_rel)
    positions = jnp.arange(k)
    filled = positions < n_rel[..., None]
    return jnp.sum(jnp.where(filled, _discounts(k), 0.0), axis=-1)


def _ranked_relevance(
    masked_scores: jax.Array, rankable_relevant: jax.Array, k_max: int
) -> jax.Array:
    """Relevance (0/1, float32) of the items at ranks ``0..k_max-1``, ``[B, k_max]``.

    Excluded items are not in ``rankable_relevant``, so a slot filled by an
    excluded item reads as 0 without any extra masking.
    """
    _, top_idx = jax.lax.top_k(masked_scores, k_max)
    return jnp.take_along_axis(rankable_relevant, top_idx, axis=1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("ks",))
def _topk_metrics_jit(
    scores: jax.Array, relevant: jax.Array, exclude: jax.Array, ks: tuple[int, ...]
) -> dict[str, jax.Array]:
    chex.assert_rank([scores, relevant, exclude], 2)
    chex.assert_equal_shape([scores, relevant, exclude])
    n_items = scores.shape[1]
    k_max = max(ks)
    if k_max > n_items:
        raise ValueError(f"max(ks)={k_max} exceeds the number of items {n_items}")

    # Integer scores cannot hold -inf; bf16/f16 keep enough range for ranking
    # but are promoted anyway so that the masking value is exact.
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    # Cast explicitly: with 0/1 integer masks `~` would be bitwise NOT.
    relevant = relevant.astype(bool)
    exclude = exclude.astype(bool)

    unrankable = exclude | jnp.isnan(scores)
    masked = jnp.where(unrankable, -jnp.inf, scores)
    # A NaN-scored but non-excluded item still counts as relevant: the model
    # scored it badly, which is the model's fault, not the protocol's.
    rankable_relevant = relevant & ~exclude
    n_rel = jnp.sum(rankable_relevant, axis=1)
    has_rel = n_rel > 0
    # Avoid 0/0 in the untaken branch of jnp.where (keeps gradients/debug_nans clean).
    safe_n_rel = jnp.maximum(n_rel, 1).astype(jnp.float32)

    ranked_rel = _ranked_relevance(masked, rankable_relevant, k_max)
    gains = ranked_rel * _discounts(k_max)

    out: dict[str, jax.Array] = {}
    for k in ks:
        hits = jnp.sum(ranked_rel[:, :k], axis=1)
        dcg = jnp.sum(gains[:, :k], axis=1)
        idcg = ideal_dcg(n_rel, k)
        safe_idcg = jnp.where(has_rel, idcg, 1.0)
        out[f"hr@{k}"] = (hits > 0).astype(jnp.float32)
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = jnp.where(has_rel, hits / safe_n_rel, jnp.nan)
        out[f"ndcg@{k}"] = jnp.where(has_rel, dcg / safe_idcg, jnp.nan)
    return out


def topk_metrics(
    scores: jax.Array,
    relevant: jax.Array,
    exclude: jax.Array,
    ks: int | Iterable[int],
) -> dict[str, jax.Array]:
    """Per-user HR, precision, recall and NDCG at each cut-off in ``ks``.

    Args:
      scores: ``[B, I]`` float scores, higher ranks first. NaN is treated as
        ``-inf``.
      relevant: ``[B, I]`` bool ground-truth relevance.
      exclude: ``[B, I]`` bool; these items get score ``-inf`` before ranking
        and can never be hits. An item that is relevant *and* excluded is not
        counted as relevant (it cannot be ranked, so no model could retrieve
        it; counting it would unfairly cap recall and NDCG).
      ks: cut-offs (static). A list or a single int is accepted and normalised
        to a tuple so that equal cut-offs share one compiled function.

    Returns:
      ``{"hr@K", "precision@K", "recall@K", "ndcg@K"}`` for each ``K``, each a
      ``[B]`` float32 array. Ranking uses ``jax.lax.top_k(masked, max(ks))``,
      which ranks the lower item index first among equal scores. Slots filled by
      excluded items (fewer than ``K`` rankable items) are never hits and
      ``precision@K`` still divides by ``K``. ``recall@K`` and ``ndcg@K`` are
      NaN for users with no rankable relevant item; ``hr@K`` and
      ``precision@K`` are 0 there.

    Raises:
      ValueError: if ``ks`` is empty, contains a non-positive value, or
        ``max(ks)`` exceeds ``I``.
    """
    ks_tuple = (int(ks),) if isinstance(ks, (int, np.integer)) else tuple(int(k) for k in ks)
    if not ks_tuple:
        raise ValueError("ks must contain at least one cut-off")
    if min(ks_tuple) < 1:
        raise ValueError(f"cut-offs must be positive, got {ks_tuple}")
    return _topk_metrics_jit(
        jnp.asarray(scores), jnp.asarray(relevant), jnp.asarray(exclude), ks_tuple
    )


def mean_metrics(per_user: Mapping[str, jax.Array]) -> dict[str, float]:
    """Average each per-user metric over users, ignoring NaN rows.

    NaN marks users for whom a metric is undefined (no rankable relevant item),
    so they are left out of that metric's mean instead of counting as 0. A
    metric that is NaN for every user averages to NaN.
    """
    means: dict[str, float] = {}
    for name, values in per_user.items():
        arr = np.asarray(values, dtype=np.float64)
        defined = arr[~np.isnan(arr)]
        # Explicit branch: np.nanmean of an all-NaN array warns.
        means[name] = float(defined.mean()) if defined.size else float("nan")
    return means
