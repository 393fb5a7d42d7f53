"""Seeds in one program: N seeds of one configuration trained as ONE vmapped program against the same N seeds
trained one after another, in one process (training steps per second, all seeds together).

  python benchmarks/seed_sweep.py [--quick] [--exps ddpg_id,m3s_tdlambda] [--seeds 8] [--seed-devices N]
                                  [--repeats R] [--data DIR] [--set a.b=value ...] [--trace]

Methodology
-----------
1. Data and configs. The prepared ML-1M (``data/ml-1m``) and each experiment's registered config (its default
   split) plus ``--set``; ``ddpg_id`` with ``model.embed.seed=0`` so that the seeds share one MF fit (the
   embedding stage, fitted once in a temp directory and not timed: the benchmark is about training).
2. Both sides run the experiment's own trainer, i.e. what ``run.py --seeds N`` runs: the baseline is
   ``trainer.train(state, K)`` for each seed in turn (the program ``train.seed_batch=1`` runs), ours is
   ``trainer.train_seeds(stacked_states, K)`` (``jaxrec.seeds``: one ``vmap`` over the seed axis, one jit).
   Both are compiled and warmed up with one untimed chunk outside the timed region. ``--seed-devices N``
   (``train.seed_devices``): ours splits the vmapped seeds over N devices, each training N-th of them (on a
   CPU, N of XLA's host devices, which the script creates before JAX starts); the baseline stays one seed at
   a time on one device, exactly as before. Forcing N host devices slows that one-device baseline (the CPU's
   threads are divided among the devices: ``ddpg_id`` 1,265 seed-steps/s with 1 device, 1,045 with 4, 776
   with 8), which would flatter the in-process ratio; so the baseline is ALSO measured in a child process
   with JAX's default single CPU device (the same chunks and repeats, right after the parent's): with
   ``--seed-devices N`` the reported ``baseline`` and ``ratio`` are that child's, against the best
   one-after-another run this machine can do, and the in-process ones are kept as
   ``baseline_same_process`` / ``ratio_same_process``.
3. Repeats (default 5; ``--quick`` 2, with shorter chunks) alternate which side goes first, so load from
   other processes hits both alike. A repeat of the baseline trains each of the N seeds one chunk of K steps;
   a repeat of ours trains all N seeds one chunk of K steps; both are timed to ``block_until_ready``. The
   rate is N x K / wall seconds; reported numbers are MEDIANS over repeats.
4. ``--trace``: one more chunk per side (at most 50 steps: the profiler keeps a bounded number of events) under
   ``jax.profiler``; the trace's XLA kernels are summed per side
   (``kernel_ms``) and those that are matmuls (``dot`` and the XNNPACK ``ynn_fusion`` kernels, which hold the
   dense layers) apart (``matmul_ms``). Equal sums on both sides mean batching seeds did not make the kernels
   cheaper, and ``kernel / matmul`` of the sequential side bounds the ratio batching could reach by
   removing everything except the matmuls (a batch of seeds is a batch of distinct weight matrices: its
   matmuls are as many and as large as the sequential side's). Profiling slows both sides, so these
   figures explain the ratio; they are not the ratio.
5. Output: one JSON line per experiment (docs/design.md, section 7): ``seed_sweep_<exp>``, ``ours`` = vmapped
   seed-steps/s, ``baseline`` = one-after-another seed-steps/s, ``ratio`` = ours / baseline; the issue's goal
   is >= 2 on a 2-core CPU. With ``--seed-devices N`` the metric is ``seed_sweep_<exp>_<N>dev``. Measured
   there on one device: 0.82-1.00, with equal kernel sums on both sides (``--trace``): a batch of seeds is a
   batch of distinct matmuls, each as costly as alone on a CPU, and one XLA CPU device runs a program's
   kernels one after another, each too small to use the second core. Split over 2 host devices (one per
   core, ``--seed-devices 2``): 1.13-1.17x for ``ddpg_id`` and 1.26-1.29x for ``m3s_tdlambda`` in two runs
   (README, Benchmarks). The gain is expected on accelerators, where one seed's batch-64 update leaves most
   of the chip idle.
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def host_devices(argv: list[str]) -> None:
    """``--seed-devices N`` on a CPU needs N of XLA's host devices, whose number is fixed when JAX starts:
    sets ``XLA_FLAGS`` before the import unless the caller already chose a count (invalid values are left
    for the parser to refuse)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--seed-devices" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--seed-devices=") else "")
        flags = os.environ.get("XLA_FLAGS", "")
        if value.isdigit() and int(value) > 1 and "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={value}".strip()


if __name__ == "__main__":
    host_devices(sys.argv[1:])

import jax  # noqa: E402

from benchmarks.common import device, load_note, positive  # noqa: E402
from jaxrec import config as C  # noqa: E402
from jaxrec import seeds as seeds_lib  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402
from jaxrec.data.prepared import check_prepared  # noqa: E402
from jaxrec.errors import ConfigError, InputError  # noqa: E402

GOAL = 2.0
# Steps per timed chunk of one seed (about 1 s each on the 2-core CPU at the registered configs).
CHUNK = {"ddpg_id": 400, "m3s_tdlambda": 6}
CHUNK_QUICK = {"ddpg_id": 100, "m3s_tdlambda": 2}
DEFAULT_CHUNK, DEFAULT_CHUNK_QUICK = 20, 4
TRACE_STEPS = 50


def block(tree):
    return jax.block_until_ready(tree)


class Sweep:
    """One experiment's trainer with N seed states, each side compiled and warmed up on construction."""

    def __init__(self, name: str, cfg: C.Config, data, n_seeds: int, chunk: int, stage_dir: Path):
        from experiments.registry import EXPERIMENTS

        trainer = EXPERIMENTS[name].make_trainer(cfg, data)
        if getattr(trainer, "train_seeds", None) is None or not trainer.can_train_seeds():
            raise ConfigError("--exps", f"{name} does not train seeds in one program (no train_seeds)")
        if hasattr(trainer, "stage_dir"):
            trainer.stage_dir = stage_dir
        self.trainer, self.n, self.chunk = trainer, n_seeds, chunk
        self.states = [trainer.init(jax.random.key(cfg.seed + s)) for s in range(n_seeds)]
        self.stacked = seeds_lib.stack([jax.tree.map(lambda x: x.copy(), s) for s in self.states])
        self.sequential()  # compile + warm up
        self.vmapped()

    def sequential(self, steps: int | None = None) -> float:
        """Wall seconds of one chunk (``steps``, default the sweep's chunk) for each seed in turn."""
        t0 = time.perf_counter()
        for i in range(self.n):
            self.states[i], metrics = self.trainer.train(self.states[i], steps or self.chunk)
            block((self.states[i], metrics))
        return time.perf_counter() - t0

    def vmapped(self, steps: int | None = None) -> float:
        """Wall seconds of one chunk (``steps``, default the sweep's chunk) for all seeds as one program."""
        t0 = time.perf_counter()
        self.stacked, metrics = self.trainer.train_seeds(self.stacked, steps or self.chunk)
        block((self.stacked, metrics))
        return time.perf_counter() - t0


def kernel_times(run) -> dict:
    """Summed XLA kernel milliseconds of one ``run()`` under ``jax.profiler`` (all kernels, and matmuls)."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            run()
        events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    total = collections.Counter()
    for e in events:
        name = e.get("name", "")
        # Python frames ($file:line), the executor and dispatch wrappers span the kernels: not kernels.
        if e.get("ph") == "X" and not name.startswith("$") and not any(
                w in name for w in ("Thunk", "Pjit", "np.asarray", "PjRt")):
            total[name] += e["dur"]
    matmul = sum(t for n, t in total.items() if n.startswith(("dot", "ynn_fusion")))
    return {"kernel_ms": round(sum(total.values()) / 1e3, 1), "matmul_ms": round(matmul / 1e3, 1)}


def parse_args(argv=None):
    """The flags, checked (InputError naming the flag) before anything is built or timed."""
    p = ArgParser(prog="seed_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter chunks and 2 repeats")
    p.add_argument("--exps", default="ddpg_id,m3s_tdlambda",
                   help="comma-separated experiments (default ddpg_id,m3s_tdlambda)")
    p.add_argument("--seeds", type=int, default=8, help="seeds per side (default 8)")
    p.add_argument("--seed-devices", type=int, default=1,
                   help="devices the vmapped seeds are split over (train.seed_devices; default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5; --quick: 2)")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--set", nargs="*", default=[], metavar="a.b=value", help="config overrides for every experiment")
    p.add_argument("--trace", action="store_true", help="also sum each side's XLA kernel times under the profiler")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--sequential-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = positive("--repeats", args.repeats) or (2 if args.quick else 5)
    if positive("--seeds", args.seeds) < 2:
        raise InputError("--seeds", f"{args.seeds}, expected at least 2 seeds to batch")
    if positive("--seed-devices", args.seed_devices) and args.seeds % args.seed_devices:
        raise InputError("--seed-devices", f"{args.seed_devices} does not divide --seeds {args.seeds}")
    if args.seed_devices > len(jax.devices()):
        raise InputError("--seed-devices", f"{args.seed_devices} requested but only {len(jax.devices())} devices "
                                           f"exist (XLA_FLAGS already fixes the CPU's host devices: unset it)")
    from experiments.registry import EXPERIMENTS

    args.exps = [e for e in args.exps.split(",") if e]
    unknown = [e for e in args.exps if e not in EXPERIMENTS]
    if not args.exps or unknown:
        raise InputError("--exps", f"{','.join(unknown) or args.exps!r}: unknown; known: {', '.join(EXPERIMENTS)}")
    return args


def config(name: str, args) -> C.Config:
    from experiments.registry import EXPERIMENTS

    overrides = ([f"data.path={args.data}", f"train.seed_devices={args.seed_devices}"]
                 + (["model.embed.seed=0"] if name == "ddpg_id" else []))
    return C.apply_overrides(EXPERIMENTS[name].make_config(), overrides + list(args.set))


def main_args(argv) -> None:
    args = parse_args(argv)
    from experiments.dataset import load_dataset

    cfgs = {name: config(name, args) for name in args.exps}  # every config checked before any data is read
    check_prepared(args.data)
    dev = device() if jax.default_backend() == "cpu" else str(jax.devices()[0].device_kind)
    print(f"device: {dev}; jax {jax.__version__} ({jax.default_backend()})", flush=True)
    for name, cfg in cfgs.items():
        data = load_dataset(cfg)
        chunk = (CHUNK_QUICK if args.quick else CHUNK).get(name, DEFAULT_CHUNK_QUICK if args.quick else DEFAULT_CHUNK)
        with tempfile.TemporaryDirectory() as stage:
            t0 = time.perf_counter()
            sweep = Sweep(name, cfg, data, args.seeds, chunk, Path(stage))
            print(f"{name}: {args.seeds} seeds built, compiled and warmed up in {time.perf_counter() - t0:.1f}s "
                  f"(chunk {chunk} steps)", flush=True)
            load_note(f"{name} before")
            seq, vm = [], []
            for r in range(args.repeats):
                order = ((seq, sweep.sequential), (vm, sweep.vmapped))
                if args.sequential_only:
                    order = order[:1]
                for out, timed in (order if r % 2 == 0 else order[::-1]):
                    out.append(args.seeds * chunk / timed())
            load_note(f"{name} after")
            if args.sequential_only:
                print(json.dumps({"metric": f"seed_sweep_{name}_sequential", "baseline": statistics.median(seq),
                                  "baseline_all": seq}), flush=True)
                del sweep, data
                continue
            trace = {}
            if args.trace:
                # Short chunks: the profiler keeps a bounded number of events (a ddpg_id step is ~1,200 kernels).
                steps = min(chunk, TRACE_STEPS)
                sweep.sequential(steps), sweep.vmapped(steps)  # compiled outside the trace
                trace = {"trace_steps": steps, "trace_sequential": kernel_times(functools.partial(sweep.sequential, steps)),
                         "trace_vmapped": kernel_times(functools.partial(sweep.vmapped, steps))}
                seq_t = trace["trace_sequential"]
                trace["bound_without_non_matmul"] = round(seq_t["kernel_ms"] / max(seq_t["matmul_ms"], 1e-9), 2)
        ours, base = statistics.median(vm), statistics.median(seq)
        suffix, same = "", {}
        if args.seed_devices > 1:
            suffix, same = f"_{args.seed_devices}dev", {
                "baseline_same_process": round(base, 2), "ratio_same_process": round(ours / base, 2),
                "baseline_same_process_all": [round(x, 2) for x in seq]}
            base = sequential_alone(name, args)
        print(json.dumps({
            "metric": f"seed_sweep_{name}{suffix}", "ours": round(ours, 2), "baseline": round(base, 2),
            "ratio": round(ours / base, 2), "unit": "seed-steps/s", "device": dev, "seeds": args.seeds,
            "seed_devices": args.seed_devices, "chunk": chunk, "repeats": args.repeats, "goal": GOAL,
            "ours_all": [round(x, 2) for x in vm], **({} if same else {"baseline_all": [round(x, 2) for x in seq]}),
            **same, **trace}), flush=True)
        del sweep, data


def sequential_alone(name: str, args) -> float:
    """The one-after-another rate (median seed-steps/s) of a child process of this script with JAX's default
    CPU devices (no forced host devices), the same seeds, chunks and repeats."""
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if "xla_force_host_platform_device_count" not in f)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sequential-only", "--exps", name, "--seeds",
           str(args.seeds), "--repeats", str(args.repeats), "--data", args.data, "--set", *args.set]
    res = subprocess.run(cmd + (["--quick"] if args.quick else []), env={**os.environ, "XLA_FLAGS": flags},
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"the one-device baseline failed: {res.stderr[-2000:]}")
    return json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])["baseline"]


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
