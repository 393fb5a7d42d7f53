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
from jax.sharding import Mesh

from jaxrec import parallel


def traced_values(cfg) -> dict[str, jax.Array]:
    """The fields a config class lists in ``TRACED`` as float32 scalars: the ``hyper`` of a trainer's state,
    read at run time instead of compiled in, so that grid points differing only in them share a program."""
    return {name: jnp.float32(getattr(cfg, name)) for name in cfg.TRACED}


def stack(states: Sequence[Any]) -> Any:
    """One pytree whose leaves carry a leading axis of ``len(states)`` (the seed axis)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(states: Any, n: int) -> list[Any]:
    """The ``n`` per-seed pytrees of a stacked one (copies: they survive the stack being donated).

    A stack split over a seed mesh (``vmap_train(mesh=...)``) gives each seed back on this process's first
    device, where a one-seed program (evaluation, the next chunk of a seed trained alone) expects it; a stack
    replicated over a data-parallel mesh keeps that layout."""
    home = jax.local_devices()[0]

    def take(x, i):
        if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated:
            # Read seed i from the one device holding it: ``x[i]`` on a split array compiles a program over
            # all devices (an all-reduce), whose rendezvous aborts the process when a device thread is
            # starved for 40 s on a loaded CPU.
            for shard in x.addressable_shards:
                rows = range(*shard.index[0].indices(x.shape[0]))
                if i in rows:
                    return jax.device_put(shard.data[i - rows.start], home)
        return x[i]

    return [jax.tree.map(lambda x: take(x, i), states) for i in range(n)]


def vmap_train(train: Callable, n_shared: int = 0, static_steps: bool = True, out_shardings: Any = None,
               mesh: Mesh | None = None) -> Callable:
    """``train_many(states, *shared, n_steps) -> (states, metrics)``, jitted, donating ``states``.

    ``train(state, *shared, n_steps)`` is a pure function of one seed's state; ``shared`` arguments (data
    arrays) are the same for every seed and passed once, not copied per seed. ``static_steps``: the step
    count fixes the program (a ``lax.scan`` length); otherwise it is traced (a ``fori_loop`` bound).
    Returned metrics have a leading seed axis. ``out_shardings``: as ``jax.jit``'s (``jaxrec.parallel``).

    ``mesh`` (seed parallelism, ``train.seed_devices``): the seed axis of the states, and of everything
    returned, is split over the mesh's devices, each running the vmapped program on its own seeds
    (``parallel.per_device``); seeds never interact, so no device waits on another and each seed computes what
    it computes alone. A batch of seeds that does not split evenly over the mesh runs on one device.
    """
    def train_many(states, *args):
        *shared, n_steps = args

        def one_seed(state, *shared):
            return train(state, *shared, n_steps)

        return jax.vmap(one_seed, in_axes=(0,) + (None,) * len(shared))(states, *shared)

    static = (1 + n_shared,) if static_steps else ()
    plain = jax.jit(train_many, static_argnums=static, donate_argnums=0, out_shardings=out_shardings)
    if mesh is None:
        return plain

    def spread_many(states, *args):
        *shared, n_steps = args
        if static_steps:  # a Python int fixes the scan length; a traced count goes in as a replicated operand
            return parallel.per_device(lambda s, *sh: train_many(s, *sh, n_steps), mesh, n_shared)(states, *shared)
        return parallel.per_device(train_many, mesh, n_shared + 1)(states, *shared, n_steps)

    spread = jax.jit(spread_many, static_argnums=static, donate_argnums=0)
    split = parallel.split_leading(mesh)

    def train_split(states, *args):
        if jax.tree.leaves(states)[0].shape[0] % mesh.size:
            return plain(states, *args)
        return spread(jax.device_put(states, split), *args)

    return train_split
