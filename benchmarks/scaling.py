"""Data-parallel scaling: training throughput of one run on 1, 2, 4, ... devices (``--devices``), one process.

  python benchmarks/scaling.py [--quick] [--exps ddpg_id,m3s_tdlambda] [--devices 1,2,4] [--repeats R]
                               [--data DIR] [--set a.b=value ...]

Methodology
-----------
1. Data and configs. The prepared ML-1M (``data/ml-1m``) and each experiment's registered config plus
   ``--set``; ``ddpg_id`` with ``model.agent.n_envs=256`` (the parallel users are what it splits; its
   registered one user cannot be split) and ``model.embed.seed=0`` (one MF fit, not timed).
2. For each device count the experiment's own trainer is built with ``devices=N`` (``jaxrec/parallel.py``:
   state and data replicated, the batch split over a 1-D mesh), initialised, compiled and warmed up with
   one untimed chunk. On a CPU with fewer devices than asked, the script restarts itself with
   ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the CPU's cores split into N devices: this
   checks the mechanism, it cannot speed anything up).
3. Repeats (default 5; ``--quick`` 2) cycle through the device counts in rotating order; each times one
   training chunk to ``block_until_ready``. Reported numbers are MEDIANS of steps/s.
4. Output: one JSON line per experiment and device count above 1 (docs/design.md, section 7):
   ``scaling_<exp>_<N>dev``, ``ours`` = steps/s on N devices, ``baseline`` = steps/s on 1 device,
   ``ratio`` = speed-up (ideal N on N accelerators).
"""
from __future__ import annotations

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

FLAG = "--xla_force_host_platform_device_count"


def _respawn_with_cpu_devices(argv: list[str], n: int) -> int | None:
    """On a CPU-only host with too few devices: this script again with the CPU split into ``n`` devices."""
    import jax

    if jax.default_backend() != "cpu" or jax.device_count() >= n or FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FLAG}={n}".strip()}
    return subprocess.call([sys.executable, __file__, *argv], env=env)


def main_args(argv) -> None:
    args = parse_args(argv)
    import jax

    from benchmarks.common import device, load_note
    from experiments.dataset import load_dataset
    from experiments.registry import EXPERIMENTS
    from jaxrec.data.prepared import check_prepared

    cfgs = {name: config(name, args) for name in args.exps}
    check_prepared(args.data)
    respawned = _respawn_with_cpu_devices(argv, max(args.devices))
    if respawned is not None:
        if respawned:
            sys.exit(respawned)
        return
    if max(args.devices) > jax.device_count():
        from jaxrec.errors import InputError

        raise InputError("--devices", f"{max(args.devices)} requested but only {jax.device_count()} devices exist")
    dev = device() if jax.default_backend() == "cpu" else str(jax.devices()[0].device_kind)
    print(f"device: {dev} x {jax.device_count()}; jax {jax.__version__} ({jax.default_backend()})", flush=True)
    chunk = 20 if args.quick else 100
    for name, base in cfgs.items():
        data = load_dataset(base)
        with tempfile.TemporaryDirectory() as stage:
            runs = {}
            for n in args.devices:
                from jaxrec import config as C

                cfg = C.replace(base, "devices", n)
                trainer = EXPERIMENTS[name].make_trainer(cfg, data)
                if hasattr(trainer, "stage_dir"):
                    trainer.stage_dir = Path(stage)
                state = trainer.init(jax.random.key(0))
                state, _ = trainer.train(state, chunk)
                jax.block_until_ready(state)
                runs[n] = [trainer, state]
            load_note(f"{name} before")
            rates = {n: [] for n in args.devices}
            for r in range(args.repeats):
                order = args.devices[r % len(args.devices):] + args.devices[:r % len(args.devices)]
                for n in order:
                    trainer, state = runs[n]
                    t0 = time.perf_counter()
                    state, metrics = trainer.train(state, chunk)
                    jax.block_until_ready(state)
                    rates[n].append(chunk / (time.perf_counter() - t0))
                    runs[n][1] = state
            load_note(f"{name} after")
        one = statistics.median(rates[args.devices[0]])
        for n in args.devices[1:]:
            med = statistics.median(rates[n])
            print(json.dumps({"metric": f"scaling_{name}_{n}dev", "ours": round(med, 2), "baseline": round(one, 2),
                              "ratio": round(med / one, 3), "unit": "steps/s", "device": f"{dev} x {n}",
                              "chunk": chunk, "repeats": args.repeats,
                              "ours_all": [round(x, 2) for x in rates[n]]}), flush=True)
        del runs, data


def parse_args(argv=None):
    from benchmarks.common import positive
    from jaxrec.cli import ArgParser
    from jaxrec.errors import InputError

    p = ArgParser(prog="scaling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter chunks and 2 repeats")
    p.add_argument("--exps", default="ddpg_id,m3s_tdlambda", help="comma-separated experiments")
    p.add_argument("--devices", default="1,2,4", help="comma-separated device counts, the first the baseline")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per device count (default 5; --quick: 2)")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--set", nargs="*", default=[], metavar="a.b=value", help="config overrides for every experiment")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    args.repeats = positive("--repeats", args.repeats) or (2 if args.quick else 5)
    try:
        args.devices = [int(d) for d in args.devices.split(",")]
    except ValueError:
        raise InputError("--devices", f"{args.devices!r}, expected comma-separated positive integers") from None
    if len(args.devices) < 2 or min(args.devices) < 1:
        raise InputError("--devices", f"{args.devices}, expected at least two positive device counts")
    from experiments.registry import EXPERIMENTS

    args.exps = [e for e in args.exps.split(",") if e]
    bad = [e for e in args.exps if e not in EXPERIMENTS or not EXPERIMENTS[e].data_parallel]
    if not args.exps or bad:
        raise InputError("--exps", f"{','.join(bad) or args.exps!r}: not a data-parallel experiment; those are "
                                   f"{', '.join(n for n, e in EXPERIMENTS.items() if e.data_parallel)}")
    return args


def config(name: str, args):
    from experiments.registry import EXPERIMENTS
    from jaxrec import config as C

    overrides = [f"data.path={args.data}"]
    if name in ("ddpg_id", "ddpg_multimodal"):
        overrides += ["model.agent.n_envs=256", "model.embed.seed=0"]
    return C.apply_overrides(EXPERIMENTS[name].make_config(), overrides + list(args.set))


def main(argv=None) -> int:
    from jaxrec.cli import cli_main

    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
