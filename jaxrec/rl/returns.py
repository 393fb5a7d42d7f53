"""Multi-step return targets: λ-returns and n-step bootstrapped returns (rlax conventions).

Every function here is *unbatched*: it takes one trajectory slice of length ``T`` and is applied to a
batch with ``jax.vmap`` at the call site (the rlax style).

Convention (docs/design.md, section 6; the same as ``rlax.lambda_returns``): for steps ``t = 0..T-1``,
``r_t[t]`` is the reward received after acting at step t, ``discount_t[t]`` the discount applied to
what follows it (``gamma`` for a regular step, 0 where the episode ends at that step), and ``v_t[t]``
the value of the state reached *after* step t (the bootstrap value of step t).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def lambda_returns(r_t: jax.Array, discount_t: jax.Array, v_t: jax.Array, lambda_=1.0,
                   stop_target_gradients: bool = False) -> jax.Array:
    """λ-returns of a trajectory slice, truncated at its end by bootstrapping from ``v_t[T-1]``.

    The recursion (Sutton & Barto 2018, eq. 12.18, written backwards as in Watkins' Q(λ)):

        G_{T-1} = r_{T-1} + discount_{T-1} * v_{T-1}
        G_t     = r_t + discount_t * ((1 - λ_t) * v_t + λ_t * G_{t+1})

    ``lambda_ = 0`` gives one-step TD targets ``r_t + discount_t * v_t``; ``lambda_ = 1`` gives the
    discounted Monte-Carlo return of the slice bootstrapped once at its end. A zero discount at an
    episode boundary inside the slice stops everything after it from leaking into earlier returns.

    Args:
      r_t: [T] rewards.
      discount_t: [T] discounts (0 at a terminal step).
      v_t: [T] values of the states after each step.
      lambda_: scalar or [T] mixing parameter; a per-step ``lambda_`` of 0 truncates the return there
        (used to bootstrap at the end of a logged history that is cut, not ended).
      stop_target_gradients: whether to stop gradients through the returned targets.

    Returns:
      [T] λ-returns ``G_0..G_{T-1}``.
    """
    chex.assert_rank([r_t, discount_t, v_t], 1)
    chex.assert_equal_shape([r_t, discount_t, v_t])
    dtype = jnp.result_type(r_t, discount_t, v_t, jnp.float32)
    lambda_ = jnp.broadcast_to(jnp.asarray(lambda_, dtype), r_t.shape)

    def backward(g_next, xs):
        r, discount, v, lam = xs
        g = r + discount * ((1.0 - lam) * v + lam * g_next)
        return g, g

    # The value after the last step seeds the recursion: with g_next = v_{T-1} the last step's return is
    # r_{T-1} + discount_{T-1} * v_{T-1} whatever λ_{T-1} is.
    _, returns = jax.lax.scan(backward, v_t[-1].astype(dtype),
                              (r_t.astype(dtype), discount_t.astype(dtype), v_t.astype(dtype), lambda_),
                              reverse=True)
    return jax.lax.stop_gradient(returns) if stop_target_gradients else returns


def n_step_returns(r_t: jax.Array, discount_t: jax.Array, v_t: jax.Array, n: int,
                   stop_target_gradients: bool = False) -> jax.Array:
    """n-step bootstrapped returns (Sutton & Barto 2018, eq. 7.1) of every step of a slice.

        G_t = r_t + d_t r_{t+1} + ... + (d_t ... d_{t+m-2}) r_{t+m-1} + (d_t ... d_{t+m-1}) v_{t+m-1}

    with ``m = min(n, T - t)``: near the end of the slice fewer steps exist and the return bootstraps
    from the last value ``v_{T-1}`` (``rlax.n_step_bootstrapped_returns`` with ``lambda_t = 1``).

    Args:
      r_t, discount_t, v_t: [T] arrays, conventions as in the module docstring.
      n: number of steps (static, >= 1).
      stop_target_gradients: whether to stop gradients through the returned targets.

    Returns:
      [T] n-step returns.
    """
    chex.assert_rank([r_t, discount_t, v_t], 1)
    chex.assert_equal_shape([r_t, discount_t, v_t])
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    T = r_t.shape[0]
    dtype = jnp.result_type(r_t, discount_t, v_t, jnp.float32)
    r_t, discount_t, v_t = r_t.astype(dtype), discount_t.astype(dtype), v_t.astype(dtype)
    t = jnp.arange(T)
    # Bootstrap of step t: the value after its last step t + m - 1.
    g = v_t[jnp.minimum(t + n - 1, T - 1)]
    # Fold the steps in from the farthest (j = n - 1) to the nearest (j = 0); a step beyond the slice
    # (t + j >= T) leaves the partial return unchanged, so short tails bootstrap from v_{T-1}.
    for j in reversed(range(n)):
        idx = jnp.minimum(t + j, T - 1)
        g = jnp.where(t + j < T, r_t[idx] + discount_t[idx] * g, g)
    return jax.lax.stop_gradient(g) if stop_target_gradients else g
