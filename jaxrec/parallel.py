"""Data parallelism over local devices: one global batch split along a 1-D device mesh, the rest replicated.

This is what ``jax.pmap`` became (pmap is in maintenance): the training step stays the single-device
program, jitted once; only where its arrays live changes. The training state and the training data are
replicated on every device of the mesh; inside the step, the per-step batch (SQN/M3S/SASRec/GRU4Rec: the
sampled chunks; DDPG: the parallel users and the replay minibatch) is constrained to be split along its
first axis (``shard``). XLA's SPMD partitioner then runs each device's slice of the batch and inserts the
all-reduces: the one place gradients are averaged is the loss's mean over the GLOBAL batch, so they come
out as on one device (not multiplied by the device count, the classic error of summing per-device means
by hand) and a run's numbers equal its one-device numbers up to the order of floating-point reductions.

Several hosts (processes): ``initialize`` joins the processes of one run (``jax.distributed.initialize``);
the mesh then spans every process's devices (the same number from each), and every process runs the
same program on the same global batch: they all read the same prepared files, so the data, the
initial state and every sampled batch are the same on each. Arrays that are replicated over such a mesh
are global (no process holds all of its devices), so host values become global arrays through
``replicate`` (``jax.make_array_from_callback``: each process fills its own devices from its copy) and
global arrays become local ones through ``local`` (a process's own replica) before host-side code such as
evaluation uses them. ``is_primary`` is the one process that writes files; ``sync`` is a barrier.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrec.errors import ConfigError

AXIS = "data"
"""The mesh axis the batch is split along."""


ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
"""The environment variables read where a flag is not given."""
FLAGS = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of a run as resolved from flags and environment; None fields are left to JAX's
    cluster detection (SLURM, Open MPI, Cloud TPU)."""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def cluster_detected() -> bool:
    """Whether JAX can detect the processes of a cluster (SLURM, Open MPI, Cloud TPU) from this environment."""
    try:
        from jax._src.clusters import ClusterEnv  # no public API says whether detection would succeed

        return any(not env.opt_in_only_method and env.is_env_present() for env in ClusterEnv._cluster_types)
    except Exception:  # a private API that may move: then detection is left to jax.distributed.initialize
        return True


def resolve_processes(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                      auto: bool = False, environ=None) -> Processes | None:
    """The processes a run asks for, from the flags or else ``ENV``; None for a run of one process (nothing
    given and not ``auto``, or one process). ``auto``: join a cluster JAX detects even without any value.
    Refuses (``ConfigError`` naming the flag or variable) what cannot work, before JAX starts anything."""
    environ = os.environ if environ is None else environ
    values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    where = dict(FLAGS)
    for name, var in ENV.items():
        if values[name] is None and environ.get(var):
            raw, where[name] = environ[var], var
            if name == "coordinator":
                values[name] = raw
            else:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigError(var, f"{raw!r} is not an integer") from None
    coord, n, pid = values["coordinator"], values["num_processes"], values["process_id"]
    if coord is not None:
        host, sep, port = coord.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(where["coordinator"], f"{coord!r}, expected HOST:PORT (e.g. 10.0.0.1:1234)")
    if n is not None and n < 1:
        raise ConfigError(where["num_processes"], f"{n}, expected a positive number of processes")
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        limit = f" of {n} processes (0..{n - 1})" if n is not None else ""
        raise ConfigError(where["process_id"], f"{pid} is not a process id{limit}")
    if coord is None and n is None and pid is None and not auto:
        return None
    if n == 1:
        return None
    missing = [name for name, v in values.items() if v is None]
    if missing and not cluster_detected():
        raise ConfigError(FLAGS[missing[0]], f"not given ({', '.join(f'{FLAGS[m]} or ${ENV[m]}' for m in missing)}) "
                                             "and no cluster JAX can detect (SLURM, Open MPI, Cloud TPU): give "
                                             "--coordinator HOST:PORT, --num-processes N and --process-id I")
    return Processes(coord, n, pid)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None):
    """Joins this process to the run's other processes (``jax.distributed.initialize``; before JAX computes
    anything). Values not given come from ``ENV`` or else from the cluster JAX detects (SLURM, Open MPI,
    Cloud TPU). On CPUs the cross-process collectives are gloo's (the default of
    ``jax_cpu_collectives_implementation`` in jax 0.10; set here should it be unset)."""
    if jax.distributed.is_initialized():
        return
    procs = resolve_processes(coordinator, num_processes, process_id, auto=True) or Processes()
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(procs.coordinator, procs.num_processes, procs.process_id)


def is_primary() -> bool:
    """Whether this is the process that writes files (logs, metrics, plots, final.json): process 0."""
    return jax.process_index() == 0


def sync(name: str):
    """A barrier of every process of the run (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def make_mesh(n_devices: int, key: str = "--devices") -> Mesh | None:
    """A 1-D mesh of ``n_devices`` devices, None for one. With several processes it takes the same number of
    devices from each (their first ``n_devices / process_count``), so every process has a share of the batch.
    ``key``: the flag or config key errors name."""
    if n_devices <= 1:
        return None
    devices = jax.devices()
    if n_devices > len(devices):
        hint = (f" (on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n_devices} before the command)"
                if jax.default_backend() == "cpu" else "")
        raise ConfigError(key, f"{n_devices} requested but only {len(devices)} devices exist{hint}")
    n_proc = jax.process_count()
    if n_devices % n_proc:
        raise ConfigError(key, f"{n_devices} does not split over {n_proc} processes: use a multiple of {n_proc}")
    per = n_devices // n_proc
    chosen = []
    for p in range(n_proc):
        mine = [d for d in devices if d.process_index == p]
        if per > len(mine):
            raise ConfigError(key, f"{n_devices} requested but process {p} has only {len(mine)} devices "
                                   f"({per} needed from each of {n_proc} processes)")
        chosen += mine[:per]
    return jax.make_mesh((n_devices,), (AXIS,), (AxisType.Auto,), devices=chosen)


def check_divisible(key: str, size: int, mesh: Mesh | None):
    """A batch dimension ``size`` (config key ``key``) must split evenly over the mesh's devices."""
    if mesh is not None and size % mesh.size:
        raise ConfigError(key, f"{size} does not split over {mesh.size} devices: use a multiple of {mesh.size}")


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with every array on every device of ``mesh`` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    if jax.process_count() == 1:
        return jax.device_put(tree, replicated(mesh))
    sharding = replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            raise ValueError(f"cannot replicate a global array of sharding {x.sharding}")
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        # Every process holds the same host value (the same files, the same program): each fills its own devices.
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def local(tree: Any) -> Any:
    """``tree`` with every global array (one spanning other processes' devices, which host code cannot read
    whole) replaced by this process's own replica of it; arrays of this process are left as they are."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"a global array split over processes ({x.sharding}) has no local replica")
            return x.addressable_data(0)
        return x

    return jax.tree.map(one, tree)


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """The sharding of an array held whole by every device of ``mesh`` (None without a mesh): as the
    ``out_shardings`` of a jitted training chunk it pins the state's layout between chunks, so every chunk
    runs the one compiled program (inside the chunk XLA may keep the users split)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def split_leading(mesh: Mesh | None) -> NamedSharding | None:
    """The sharding of an array split along its FIRST axis over ``mesh`` (None without a mesh): a stack of
    seed states under seed parallelism (``jaxrec.seeds.vmap_train``), each device holding its seeds whole."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(AXIS))


def per_device(fn: Callable, mesh: Mesh, n_shared: int) -> Callable:
    """``fn(split, *shared)`` run by every device of ``mesh`` on its own slice of ``split``'s leading axis (a
    stack of independent seed states), the ``n_shared`` further arguments whole on each; every output is split
    the same way. A ``shard_map``, not ``jit``'s partitioner: the latter all-gathers the operands of some
    batched ops (``top_k`` over a vmapped axis) and would make devices wait on each other; here each device
    runs the one-device program on its share and nothing crosses devices by construction."""
    split = PartitionSpec(AXIS)
    return jax.shard_map(fn, mesh=mesh, in_specs=(split,) + (PartitionSpec(),) * n_shared, out_specs=split,
                         check_vma=False)


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
    hosts = f" of {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{mesh.size} devices{hosts} ({', '.join(kinds)}), batch split along '{AXIS}'"
