"""Runs a registered experiment (docs/design.md, section 4).

  python experiments/run.py --exp=NAME [--data DIR] [--features DIR] [--run-dir DIR] [--seed N]
                            [--seeds N] [--devices N] [--quick] [--set a.b=value ...]
                            [--coordinator HOST:PORT --num-processes N --process-id I | --distributed]
  python experiments/run.py --exp=list            # names + one-line descriptions
  python experiments/run.py --exp=NAME --show-config   # every config key, type, value and doc

Writes config.json, metrics.jsonl, final.json, checkpoints/ and plots/ into the run directory
(default runs/NAME[-quick]/seedS); re-running the same command resumes it.

Several hosts: start one process per host with the same command plus --coordinator (process 0's
HOST:PORT), --num-processes and --process-id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
$JAX_PROCESS_ID), or --distributed where JAX detects the cluster (SLURM, Open MPI, Cloud TPU pod slice).
--devices counts the devices of all processes; the run directory must be on a filesystem they share.
"""
from __future__ import annotations

import sys
from pathlib import Path

from jaxrec.cli import ArgParser, cli_main
from jaxrec import config as C
from jaxrec.errors import ConfigError


def add_process_flags(p):
    """``--devices`` and the flags that join several processes (also ``experiments/ablate.py``'s)."""
    p.add_argument("--devices", type=int, help="devices for data parallelism (of all processes together)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address: join a run of several processes "
                                                               "(default $JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="processes of the run (default $JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (default $JAX_PROCESS_ID)")
    p.add_argument("--distributed", action="store_true",
                   help="join the processes of a cluster JAX detects (SLURM, Open MPI, Cloud TPU pod slice)")


def resolve_processes(args):
    """The processes the flags or the environment ask for (None: this process alone), checked before any work."""
    from jaxrec import parallel

    return parallel.resolve_processes(args.coordinator, args.num_processes, args.process_id, args.distributed)


def join_processes(procs, devices: int):
    """Joins the processes of ``procs`` (``resolve_processes``), once the configs are known to be valid."""
    from jaxrec import parallel

    if procs is None:
        return
    if procs.num_processes is not None and devices % procs.num_processes:
        raise ConfigError("--devices", f"{devices} does not split over {procs.num_processes} processes: "
                                       f"use a multiple of {procs.num_processes} (the devices of all processes)")
    parallel.initialize(procs.coordinator, procs.num_processes, procs.process_id)


def build_parser():
    p = ArgParser(prog="run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", required=True, help="experiment name, or 'list'")
    p.add_argument("--data", help="prepared data directory (data.path)")
    p.add_argument("--features", help="extracted item features directory (data.features)")
    p.add_argument("--run-dir", help="run directory (default runs/EXP[-quick]/seedS)")
    p.add_argument("--seed", type=int, help="learner seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="train this many seeds (seed, seed+1, ...) and report mean +- 95%% CI")
    add_process_flags(p)
    p.add_argument("--quick", action="store_true", help="tiny but real configuration (smoke test)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--show-config", action="store_true", help="print every config key with its doc and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars (also when $CI is set)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolve_config(exp, args) -> C.Config:
    cfg = exp.make_config()
    overrides = list(exp.quick) if args.quick else []
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.features:
        overrides.append(f"data.features={args.features}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.devices is not None:
        overrides.append(f"devices={args.devices}")
    return C.apply_overrides(cfg, overrides + list(args.set))


def main_args(argv):
    args = build_parser().parse_args(argv)
    from experiments.registry import EXPERIMENTS

    if args.exp == "list":
        width = max(map(len, EXPERIMENTS))
        for name, exp in EXPERIMENTS.items():
            print(f"{name:<{width}}  {exp.description}")
        return
    if args.exp not in EXPERIMENTS:
        raise ConfigError("--exp", f"unknown experiment {args.exp!r}; known: {', '.join(EXPERIMENTS)} (or 'list')")
    if args.seeds < 1:
        raise ConfigError("--seeds", "must be >= 1")
    from jaxrec import parallel

    exp = EXPERIMENTS[args.exp]
    procs = resolve_processes(args)
    cfg = resolve_config(exp, args)
    if args.show_config:
        for key, type_name, value, doc in C.describe(cfg):
            print(f"{key} ({type_name}) = {value!r}\n    {doc}")
        return
    join_processes(procs, cfg.devices)
    from experiments.loop import run_experiment

    suffix = "-quick" if args.quick else ""
    seeds = f"seed{cfg.seed}" if args.seeds == 1 else f"seeds{cfg.seed}-{cfg.seed + args.seeds - 1}"
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{exp.name}{suffix}" / seeds
    final = run_experiment(exp, cfg, run_dir, args.seeds, quiet=args.quiet)
    if parallel.is_primary():
        print(f"run directory: {run_dir}  (final.json: test {final['test']})")


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
