"""DRR networks (Liu et al. 2018): state representation modules, actor and critic (Flax linen).

Unbatched in spirit (one user's ``[d]`` vector and ``[N, d]`` state items); every module also accepts
leading batch axes because Dense layers broadcast.

State representation (paper section 3.3; ``h_l`` = embedding of the l-th state item, ``u`` = user):
* ``ave`` (DRR-ave): ``g = sum_l w_l h_l`` with learned position weights, ``s = [u, u * g, g]`` (3d).
* ``p`` (DRR-p): ``s = [h_1..h_N, {w_a h_a * w_b h_b}_{a<b}]`` (pairwise item products).
* ``u`` (DRR-u): ``s = [{u * w_l h_l}_l, {w_a h_a * w_b h_b}_{a<b}]`` (user-item plus item-item).
* ``fixed_ave``: the seed's DRR-ave with frozen weights 0.19, 0.17, ..., 0.01 on positions 0..9
  (oldest first; docs/differences.md#drr-srm), kept to reproduce it; the learned modules are the corrected default.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SRM_KINDS = ("ave", "p", "u", "fixed_ave")


def srm_dim(kind: str, n_state: int, dim: int) -> int:
    pairs = n_state * (n_state - 1) // 2
    return {"ave": 3 * dim, "fixed_ave": 3 * dim, "p": (n_state + pairs) * dim, "u": (n_state + pairs) * dim}[kind]


def _pairwise(weighted: jnp.ndarray) -> jnp.ndarray:
    """[..., N, d] -> [..., N(N-1)/2 * d]: element-wise products of every pair a < b, flattened."""
    n = weighted.shape[-2]
    a, b = np.triu_indices(n, k=1)
    prods = weighted[..., a, :] * weighted[..., b, :]
    return prods.reshape(*prods.shape[:-2], -1)


class StateRepr(nn.Module):
    kind: str = "ave"

    @nn.compact
    def __call__(self, user: jnp.ndarray, items: jnp.ndarray) -> jnp.ndarray:
        n = items.shape[-2]
        if self.kind == "fixed_ave":
            w = jnp.asarray(np.linspace(0.19, 0.01, n) if n == 10 else np.full(n, 1.0 / n), jnp.float32)
        else:
            # Initialised to a plain average so training starts from DRR-ave's intent.
            w = self.param("position_weights", nn.initializers.constant(1.0 / n), (n,))
        if self.kind in ("ave", "fixed_ave"):
            g = jnp.einsum("n,...nd->...d", w, items)
            return jnp.concatenate([user, user * g, g], axis=-1)
        weighted = items * w[:, None]
        pairs = _pairwise(weighted)
        if self.kind == "p":
            first = items.reshape(*items.shape[:-2], -1)
        elif self.kind == "u":
            first = (user[..., None, :] * weighted).reshape(*items.shape[:-2], -1)
        else:
            raise ValueError(f"unknown state representation {self.kind!r}, expected one of {SRM_KINDS}")
        return jnp.concatenate([first, pairs], axis=-1)


ACTION_KINDS = ("tanh", "unit")


def to_unit(x: jax.Array) -> jax.Array:
    """``x / |x|`` over the last axis (a zero vector stays zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Actor(nn.Module):
    """s -> h ReLU -> h ReLU -> d, then tanh (the seed's actor, drr-hyperparameters) or unit length.

    d = item representation size. Items are ranked by <item_i, a>, which depends on the direction of
    ``a`` only; ``unit`` makes that explicit, so exploration noise of a given sigma means the same
    angle whatever the dimension (with tanh, sigma 1.5 noise on |a| <= sqrt(d) is mostly a random
    direction).
    """

    action_dim: int
    hidden: int = 128
    srm: str = "ave"
    action: str = "tanh"

    @nn.compact
    def __call__(self, user, items):
        s = StateRepr(self.srm, name="srm")(user, items)
        x = nn.relu(nn.Dense(self.hidden)(s))
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dense(self.action_dim)(x)
        if self.action == "tanh":
            return nn.tanh(x)
        if self.action == "unit":
            return to_unit(x)
        raise ValueError(f"unknown action kind {self.action!r}, expected one of {ACTION_KINDS}")


class Critic(nn.Module):
    """Q(s, a): s -> d ReLU, concat a -> h ReLU -> h ReLU -> 1 (the seed's critic, drr-hyperparameters).

    The critic owns its own state-representation module, learned by the TD loss (the actor's is learned
    by the policy gradient); sharing one would let the actor's objective reshape the critic's input.
    """

    hidden: int = 128
    srm: str = "ave"

    @nn.compact
    def __call__(self, user, items, action):
        s = StateRepr(self.srm, name="srm")(user, items)
        s = nn.relu(nn.Dense(action.shape[-1])(s))
        x = jnp.concatenate([action, s], axis=-1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(1)(x)[..., 0]
