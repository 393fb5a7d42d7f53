"""Data parallelism over local devices: one global batch split along a 1-D device mesh, the rest replicated.

This is what ``jax.pmap`` became (pmap is in maintenance): the training step stays the single-device
program, jitted once; only where its arrays live changes. The training state and the training data are
replicated on every device of the mesh; inside the step, the per-step batch (SQN/M3S/SASRec/GRU4Rec: the
sampled chunks; DDPG: the parallel users and the replay minibatch) is constrained to be split along its
first axis (``shard``). XLA's SPMD partitioner then runs each device's slice of the batch and inserts the
all-reduces: the one place gradients are averaged is the loss's mean over the GLOBAL batch, so they come
out as on one device (not multiplied by the device count, the classic error of summing per-device means
by hand) and a run's numbers equal its one-device numbers up to the order of floating-point reductions.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrec.errors import ConfigError

AXIS = "data"
"""The mesh axis the batch is split along."""


def make_mesh(n_devices: int) -> Mesh | None:
    """A 1-D mesh of the first ``n_devices`` devices (all processes' in a multi-host run); None for one."""
    if n_devices <= 1:
        return None
    devices = jax.devices()
    if n_devices > len(devices):
        raise ConfigError("--devices", f"{n_devices} requested but only {len(devices)} devices exist")
    return jax.make_mesh((n_devices,), (AXIS,), (AxisType.Auto,), devices=devices[:n_devices])


def check_divisible(key: str, size: int, mesh: Mesh | None):
    """A batch dimension ``size`` (config key ``key``) must split evenly over the mesh's devices."""
    if mesh is not None and size % mesh.size:
        raise ConfigError(key, f"{size} does not split over {mesh.size} devices: use a multiple of {mesh.size}")


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with every array on every device of ``mesh`` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, replicated(mesh))


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """The sharding of an array held whole by every device of ``mesh`` (None without a mesh): as the
    ``out_shardings`` of a jitted training chunk it pins the state's layout between chunks, so every chunk
    runs the one compiled program (inside the chunk XLA may keep the users split)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def no_sharding(tree: Any, axis: int = 0) -> Any:
    """The ``shard`` of one device: ``tree`` as it is (the default of the trainers' ``shard`` arguments)."""
    return tree


def batch_sharder(mesh: Mesh | None) -> Callable[..., Any]:
    """``shard(tree, axis=0)``: inside a jitted step, every leaf of ``tree`` split along ``axis`` over the
    mesh (identity without a mesh). Leaves must have that axis with a size divisible by the device count."""
    if mesh is None:
        return no_sharding

    def shard(tree, axis: int = 0):
        def one(x):
            spec = PartitionSpec(*([None] * axis + [AXIS]))
            return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

        return jax.tree.map(one, tree)

    return shard


def describe(mesh: Mesh | None) -> str:
    """One line for logs: the devices a run uses."""
    if mesh is None:
        return f"1 device ({jax.devices()[0].platform})"
    kinds = sorted({d.device_kind for d in np.ravel(mesh.devices)})
    return f"{mesh.size} devices ({', '.join(kinds)}), batch split along '{AXIS}'"
