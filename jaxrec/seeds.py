"""Several seeds of one configuration trained as ONE compiled program: ``vmap`` over stacked states.

A trainer's pure ``train(state, ...)`` is vmapped over a leading seed axis of the state; everything else
(the data, the step count) is shared. Seed ``i`` of the batch computes exactly what a run of that seed
alone computes, up to the order of floating-point reductions inside the batched kernels, because every
random draw comes from keys held in the state (``fold_in(key, step)``). What batching buys is speed:
small per-seed matmuls (a replay minibatch of 64) use a fraction of the hardware, and a batch of seeds
fills it (benchmarks/seed_sweep.py measures the ratio).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def traced_values(cfg) -> dict[str, jax.Array]:
    """The fields a config class lists in ``TRACED`` as float32 scalars: the ``hyper`` of a trainer's state,
    read at run time instead of compiled in, so that grid points differing only in them share a program."""
    return {name: jnp.float32(getattr(cfg, name)) for name in cfg.TRACED}


def stack(states: Sequence[Any]) -> Any:
    """One pytree whose leaves carry a leading axis of ``len(states)`` (the seed axis)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(states: Any, n: int) -> list[Any]:
    """The ``n`` per-seed pytrees of a stacked one (copies: they survive the stack being donated)."""
    return [jax.tree.map(lambda x: x[i], states) for i in range(n)]


def vmap_train(train: Callable, n_shared: int = 0, static_steps: bool = True, out_shardings: Any = None) -> Callable:
    """``train_many(states, *shared, n_steps) -> (states, metrics)``, jitted, donating ``states``.

    ``train(state, *shared, n_steps)`` is a pure function of one seed's state; ``shared`` arguments (data
    arrays) are the same for every seed and passed once, not copied per seed. ``static_steps``: the step
    count fixes the program (a ``lax.scan`` length); otherwise it is traced (a ``fori_loop`` bound).
    Returned metrics have a leading seed axis. ``out_shardings``: as ``jax.jit``'s (``jaxrec.parallel``).
    """
    def train_many(states, *args):
        *shared, n_steps = args

        def one_seed(state, *shared):
            return train(state, *shared, n_steps)

        return jax.vmap(one_seed, in_axes=(0,) + (None,) * len(shared))(states, *shared)

    return jax.jit(train_many, static_argnums=(1 + n_shared,) if static_steps else (), donate_argnums=0,
                   out_shardings=out_shardings)
