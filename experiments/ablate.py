"""Runs an ablation grid of an experiment and tabulates it (docs/design.md, section 4).

  python experiments/ablate.py --grid=lambda|nsteps|ssl|doubleq [--data DIR] [--out DIR] [--seed N] [--seeds N]
                               [--quick] [--set a.b=value ...] [--metrics METRICS (default the grid's)]
  python experiments/ablate.py --grid=modalities|fusion --features DIR [--exp ddpg_multimodal|mf_multimodal] ...
  python experiments/ablate.py --grid=list
  ... [--devices N] [--coordinator HOST:PORT --num-processes N --process-id I | --distributed]   (as run.py)

Each grid point is one run directory ``OUT/<label>`` of the harness (resumable: re-running the same
command resumes unfinished points and reuses finished ones), with the experiment's config, the shared
``--set`` overrides and the point's own overrides. Then ``OUT/table.csv`` and ``OUT/table.md`` (one row
per point: validation selection metric and test metrics, mean +- 95% half-width over seeds) and
``OUT/plot.png`` (test metrics against the grid value) are written. Model selection inside every run
uses the validation part only; the table shows the test numbers of the validation-selected states.
With ``--devices`` every point trains data-parallel over that many devices; with the multi-process flags (the
same command on every host, as ``run.py``) the points span the devices of all processes and process 0 alone
writes the run directories and the grid's files.
Consecutive points whose configs differ only in traced hyper-parameters (``jaxrec.config.program_key``:
e.g. the lambda grid) train together with their seeds as one vmapped program (``train.seed_batch`` states
at a time, 0 = all); each point's numbers are those of its own run.

Grids (OUT defaults to ``runs/ablate-<grid>[-quick]``). On ``m3s_tdlambda``:
  lambda  model.lam in 0, 0.5, 0.8, 1 (one-step TD ... n-step Monte-Carlo targets)
  nsteps  model.n_steps in 1, 3, 6, 10 (n = 1 has no future step, so its self-supervision is off)
  ssl     model.ssl in none, future_states, ahead (without / with multi-step self-supervision)
  doubleq model.double_q in heads, networks, none (how the double-Q estimators are built)
On ``ddpg_id`` (the tuning of the README, in this order; reference rows ``mf`` and ``popularity``):
  ddpg_lr       actor_lr x critic_lr in 1e-4, 3e-4, 1e-3 (9 points, one vmapped program)
  ddpg_target   gamma in 0.5, 0.9 x tau in 0.001, 0.01 (one program)
  ddpg_explore  sigma in 0.1, 0.5, 1.5 (one program)
  ddpg_critic   srm ave, ave with twin critics, p, u (separate programs)
  ddpg_envs     (n_envs, updates_per_step, steps) in (1, 1, 100k), (16, 1, 10k), (64, 1, 5k), (64, 4, 5k)

Multimodal grids (on ``ddpg_multimodal``, or ``mf_multimodal`` with ``--exp``; they need ``--features``):
  modalities  every non-empty subset of the modalities in the features directory (manifest order)
  fusion      early/late x concat/mean
Their tables also hold reference rows, run on the same split, relevance and protocols as the grid's
points: the ID-only counterpart (``ddpg_id`` or ``mf``, its own model defaults plus the shared ``--set``
keys it has) and ``popularity``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

from jaxrec.cli import ArgParser, cli_main
from jaxrec.data.prepared import check_prepared
from jaxrec import config as C
from jaxrec.errors import ConfigError, InputError


@dataclasses.dataclass(frozen=True)
class Grid:
    exp: str
    key: str
    """The varied config key (the plot's x axis)."""
    points: tuple[tuple[str, tuple[str, ...]], ...]
    """(label, --set overrides) per point; the first override sets ``key``."""
    description: str
    references: tuple[str, ...] = ()
    """Experiments run once as reference rows on the grid's split, relevance and protocols."""
    metrics: str = "hr@10,ndcg@10"
    """Default ``--metrics`` (``DDPG_METRICS`` on the DDPG experiments)."""


DDPG_METRICS = "full:ndcg@10,full:hr@10"
"""Default metrics of grids on the DDPG experiments, whose first protocol (``drr``) has no hr@K."""

MULTIMODAL = {"ddpg_multimodal": ("model.embed.", "ddpg_id"), "mf_multimodal": ("model.", "mf")}
"""Multimodal experiment -> (prefix of its embedding config keys, its ID-only counterpart)."""


def multimodal_grid(name: str, exp: str, features: str | None) -> Grid:
    """The ``modalities`` or ``fusion`` grid of ``exp`` (points depend on the features directory)."""
    if exp not in MULTIMODAL:
        raise ConfigError("--exp", f"{exp!r}: the {name} grid runs on one of {', '.join(MULTIMODAL)}")
    prefix, id_only = MULTIMODAL[exp]
    metrics = DDPG_METRICS if exp == "ddpg_multimodal" else Grid.metrics
    if name == "fusion":
        points = tuple((f"{f}_{p}", (f"{prefix}fusion={f}", f"{prefix}pool={p}"))
                       for f in ("early", "late") for p in ("concat", "mean"))
        return Grid(exp, f"{prefix}fusion", points, "fusion x pooling of the item features",
                    references=(id_only, "popularity"), metrics=metrics)
    if not features:
        raise ConfigError("--features", "the modalities grid takes its modalities from a features directory")
    from jaxrec.features.store import read_manifest

    names = list(read_manifest(Path(features) / "manifest.json")["modalities"])
    subsets = [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
    points = tuple(("+".join(c), (f"{prefix}modalities={','.join(c)}",)) for c in subsets)
    return Grid(exp, f"{prefix}modalities", points, "modalities used by the item tower (every non-empty subset)",
                references=(id_only, "popularity"), metrics=metrics)


def ddpg_grid(key: str, points, description: str) -> Grid:
    """A ``ddpg_id`` tuning grid: ``mf`` (what the embeddings come from) and ``popularity`` as reference rows,
    the full protocol's metrics."""
    return Grid("ddpg_id", key, points, description, references=("mf", "popularity"), metrics=DDPG_METRICS)


GRIDS = {
    "lambda": Grid("m3s_tdlambda", "model.lam",
                   tuple((f"lam{v}", (f"model.lam={v}",)) for v in ("0.0", "0.5", "0.8", "1.0")),
                   "lambda of the TD(lambda) targets: 0 = one-step TD, 1 = n-step Monte-Carlo bootstrapped once"),
    "nsteps": Grid("m3s_tdlambda", "model.n_steps",
                   (("n1", ("model.n_steps=1", "model.ssl=none")),) +
                   tuple((f"n{v}", (f"model.n_steps={v}",)) for v in (3, 6, 10)),
                   "steps n of the multi-step targets and self-supervision (n = 1: no self-supervision)"),
    "ssl": Grid("m3s_tdlambda", "model.ssl",
                tuple((v, (f"model.ssl={v}",)) for v in ("none", "future_states", "ahead")),
                "multi-step self-supervision: none, CE at the future states, or the next items from the current state"),
    "doubleq": Grid("m3s_tdlambda", "model.double_q",
                    tuple((v, (f"model.double_q={v}",)) for v in ("heads", "networks", "none")),
                    "double Q: two heads on one encoder, two coin-switched networks (SQN, the seed), or none"),
    # DDPG tuning on ML-1M (issue 11), one grid per group of hyper-parameters; run them in this order, each
    # with the previous grids' validation winners as --set.
    "ddpg_lr": ddpg_grid("model.agent.actor_lr,model.agent.critic_lr",
                         tuple((f"a{a}_c{c}", (f"model.agent.actor_lr={a}", f"model.agent.critic_lr={c}"))
                               for a in ("1e-4", "3e-4", "1e-3") for c in ("1e-4", "3e-4", "1e-3")),
                         "actor x critic Adam learning rates"),
    "ddpg_target": ddpg_grid("model.agent.gamma,model.agent.tau",
                             tuple((f"g{g}_tau{t}", (f"model.agent.gamma={g}", f"model.agent.tau={t}"))
                                   for g in ("0.5", "0.9") for t in ("0.001", "0.01")),
                             "discount x soft target rate"),
    "ddpg_explore": ddpg_grid("model.agent.sigma",
                              tuple((f"sigma{v}", (f"model.agent.sigma={v}",)) for v in ("0.1", "0.5", "1.5")),
                              "exploration noise (tanh actions, the seed's epsilon schedule)"),
    "ddpg_critic": ddpg_grid("model.agent.srm,model.agent.twin",
                             tuple((f"{v}{'_twin' if t else ''}",
                                    (f"model.agent.srm={v}", f"model.agent.twin={str(t).lower()}"))
                                   for v, t in (("ave", False), ("ave", True), ("p", False), ("u", False))),
                             "state representation module, clipped double Q"),
    # Parallel users: the same number of sampled transitions per update is not the point; wall time to the
    # one-user quality is (steps scaled so that every point sees 100k to 320k transitions).
    "ddpg_envs": ddpg_grid("model.agent.n_envs,model.agent.updates_per_step",
                           tuple((f"envs{n}_upd{u}", (f"model.agent.n_envs={n}", f"model.agent.updates_per_step={u}",
                                                      f"train.steps={steps}", f"train.eval_every={steps // 10}",
                                                      f"train.ckpt_every={steps // 10}",
                                                      f"train.log_every={steps // 100}"))
                                 for n, u, steps in ((1, 1, 100_000), (16, 1, 10_000), (64, 1, 5_000), (64, 4, 5_000))),
                           "parallel users x updates per vectorised step"),
}


def point_config(exp, grid: Grid, overrides: tuple[str, ...], args):
    from experiments.run import resolve_config

    ns = argparse.Namespace(quick=args.quick, data=args.data, features=getattr(args, "features", None), seed=args.seed,
                            devices=None, set=list(args.set) + list(overrides))
    return resolve_config(exp, ns)


def reference_config(ref, point_cfg, args):
    """``ref``'s config with the shared ``--set`` keys it has, and the grid's data and eval settings (so its
    row shares the split, relevance and protocols of the points)."""
    from experiments.run import resolve_config

    keys = {k for k, *_ in C.describe(ref.make_config())}
    shared = [o for o in args.set if o.partition("=")[0].strip() in keys]
    ns = argparse.Namespace(quick=args.quick, data=args.data, features=None, seed=args.seed, devices=None, set=shared)
    cfg = resolve_config(ref, ns)
    protocols = tuple(p for p in point_cfg.eval.protocols if p in ref.protocols)
    return dataclasses.replace(cfg, data=dataclasses.replace(point_cfg.data, features=None),
                               eval=dataclasses.replace(point_cfg.eval, protocols=protocols))


def value_of(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def grid_value(cfg, grid: Grid):
    """The point's value of the grid's key, or of its comma-separated keys joined by ' / '."""
    values = ["+".join(v) if isinstance(v, tuple) else v for v in (value_of(cfg, k) for k in grid.key.split(","))]
    return values[0] if len(values) == 1 else " / ".join(str(v) for v in values)


def run_grid(grid: Grid, args, out: Path, progress=print) -> list[dict]:
    """Runs every point (and the reference rows). Consecutive points whose configs differ only in traced
    hyper-parameters (``C.program_key``; e.g. the lambda grid) train together as one vmapped program of
    points x seeds (``experiments.loop.run_points``); the others run one after another."""
    from experiments.loop import run_experiment, run_points
    from experiments.registry import EXPERIMENTS

    exp = EXPERIMENTS[grid.exp]
    cfgs = [point_config(exp, grid, overrides, args) for _, overrides in grid.points]
    groups = [list(g) for _, g in itertools.groupby(range(len(cfgs)), key=lambda i: C.program_key(cfgs[i]))]
    finals = {}
    for group in groups:
        for i in group:
            label, overrides = grid.points[i]
            progress(f"== {args.grid}: {label} ({' '.join(overrides)})")
        if len(group) > 1:
            progress(f"== {len(group)} points x {args.seeds} seed(s) share one program")
            results = run_points(exp, [cfgs[i] for i in group], [out / grid.points[i][0] for i in group], args.seeds,
                                 progress=progress)
        else:
            results = [run_experiment(exp, cfgs[group[0]], out / grid.points[group[0]][0], args.seeds, progress=progress)]
        finals.update(zip(group, results))
    rows = []
    for i, ((label, overrides), cfg) in enumerate(zip(grid.points, cfgs)):
        rows.append({"label": label, "value": grid_value(cfg, grid),
                     "overrides": list(overrides), "final": finals[i], "select": cfg.eval.select,
                     "protocol": cfg.eval.protocols[0]})
    cfg = cfgs[-1]
    for name in grid.references:
        ref_cfg = reference_config(EXPERIMENTS[name], cfg, args)
        progress(f"== {args.grid}: reference {name}")
        final = run_experiment(EXPERIMENTS[name], ref_cfg, out / f"ref-{name}", args.seeds, progress=progress)
        rows.append({"label": name, "value": "(reference)", "overrides": [], "final": final,
                     "select": ref_cfg.eval.select, "protocol": ref_cfg.eval.protocols[0]})
    return rows


def _metric(final: dict, name: str, ci: bool = False) -> float:
    """``PROTOCOL:METRIC`` (or METRIC of the row's first protocol) from a final.json."""
    proto, _, metric = name.rpartition(":")
    part = final.get("test_ci95", {}) if ci else final["test"]
    return part.get(proto or final["_protocol"], {}).get(metric, 0.0 if ci else float("nan"))


def write_tables(rows: list[dict], grid: Grid, metrics: list[str], out: Path) -> str:
    header = ["label", grid.key, "seeds", f"val {rows[0]['select']}"]
    for m in metrics:
        header += [f"test {m}", f"test {m} ci95"]
    header.append("wall_s")
    table = []
    for r in rows:
        f, proto = {**r["final"], "_protocol": r["protocol"]}, r["protocol"]
        n = len(f.get("seeds", [None]))
        line = [r["label"], r["value"], n, f["val"][proto].get(r["select"], float("nan"))]
        for m in metrics:
            line += [_metric(f, m), _metric(f, m, ci=True)]
        line.append(round(f["wall_s"], 1))
        table.append(line)
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(table)
    md = [f"| point | {grid.key} | seeds | val {rows[0]['select']} | " + " | ".join(f"test {m}" for m in metrics) + " | wall s |",
          "|" + "---|" * (len(metrics) + 5)]
    for line in table:
        cells = []
        for i, m in enumerate(metrics):
            mean, ci = line[4 + 2 * i], line[5 + 2 * i]
            cells.append(f"{mean:.4f} ± {ci:.4f}" if line[2] > 1 else f"{mean:.4f}")
        md.append(f"| {line[0]} | {line[1]} | {line[2]} | {line[3]:.4f} | " + " | ".join(cells) + f" | {line[-1]} |")
    text = "\n".join(md) + "\n"
    (out / "table.md").write_text(text)
    return text


def write_plot(rows: list[dict], grid: Grid, metrics: list[str], out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in metrics:
        proto = rows[0]["protocol"]
        ys = [_metric({**r["final"], "_protocol": proto}, m) for r in rows]
        err = [_metric({**r["final"], "_protocol": proto}, m, ci=True) for r in rows]
        ax.errorbar(x, ys, yerr=err, marker="o", capsize=3, label=f"test {m}")
    ax.set_xticks(x, [str(r["value"]) for r in rows])
    ax.set_xlabel(grid.key)
    ax.set_title(grid.description, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
    plt.close(fig)


def check_points(grid: Grid, args):
    """Every point's config resolves (a bad ``--set`` key or value is a ConfigError) and its data directory
    is a prepared one, checked before the output directory is created or any point runs."""
    from experiments.registry import EXPERIMENTS

    exp = EXPERIMENTS[grid.exp]
    cfgs = [point_config(exp, grid, overrides, args) for _, overrides in grid.points]
    if not cfgs:
        raise ConfigError("--features", f"{args.features}: the features directory holds no modality")
    check_prepared(cfgs[0].data.path)


def main_args(argv):
    from experiments.run import add_process_flags, join_processes, resolve_processes
    from jaxrec import parallel

    p = ArgParser(prog="ablate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid name, or 'list'")
    p.add_argument("--data", help="prepared data directory (data.path)")
    p.add_argument("--features", help="extracted item features directory (multimodal grids)")
    p.add_argument("--exp", default="ddpg_multimodal", help="experiment of the multimodal grids (ddpg_multimodal or mf_multimodal)")
    p.add_argument("--out", help="output directory (default runs/ablate-GRID[-quick])")
    p.add_argument("--seed", type=int, help="first learner seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per point (mean +- 95%% CI)")
    p.add_argument("--quick", action="store_true", help="each point with the experiment's --quick config")
    add_process_flags(p)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="overrides for every point")
    p.add_argument("--metrics", help="test metrics of the table and plot: METRIC (the first protocol's) or "
                                      "PROTOCOL:METRIC (default: the grid's, hr@10,ndcg@10 for most)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.grid == "list":
        for name, g in GRIDS.items():
            print(f"{name:<12} {g.exp}: {g.key}: {', '.join(label for label, _ in g.points)} ({g.description})")
        print("modalities   ddpg_multimodal|mf_multimodal: every non-empty subset of the --features modalities")
        print("fusion       ddpg_multimodal|mf_multimodal: early/late x concat/mean")
        return
    if args.grid not in (*GRIDS, "modalities", "fusion"):
        raise ConfigError("--grid", f"unknown grid {args.grid!r}; known: {', '.join(GRIDS)}, modalities, fusion (or 'list')")
    if args.seeds < 1:
        raise ConfigError("--seeds", "must be >= 1")
    procs = resolve_processes(args)
    if args.devices is not None:  # every point (and reference) of the grid on these devices
        args.set = [f"devices={args.devices}", *args.set]
    grid = multimodal_grid(args.grid, args.exp, args.features) if args.grid in ("modalities", "fusion") else GRIDS[args.grid]
    check_points(grid, args)
    out = Path(args.out) if args.out else Path("runs") / f"ablate-{args.grid}{'-quick' if args.quick else ''}"
    if out.exists() and not out.is_dir():
        raise InputError("--out", f"{out} exists and is not a directory")
    args.metrics = args.metrics if args.metrics is not None else grid.metrics
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise ConfigError("--metrics", f"{args.metrics!r}, expected comma-separated metric names")
    join_processes(procs, args.devices or 1)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_grid(grid, args, out, progress=print if parallel.is_primary() else (lambda _: None))
    first = {**rows[0]["final"], "_protocol": rows[0]["protocol"]}
    missing = [m for m in metrics if math.isnan(_metric(first, m))]
    if missing:
        known = [f"{p}:{k}" for p, ms in first["test"].items() for k in ms]
        raise ConfigError("--metrics", f"{missing} not among the runs' metrics {known}")
    if not parallel.is_primary():  # process 0 alone writes the grid's files (each run's too: experiments.loop)
        return
    text = write_tables(rows, grid, metrics, out)
    write_plot(rows, grid, metrics, out)
    (out / "grid.json").write_text(json.dumps({"grid": args.grid, "key": grid.key, "points": [
        {"label": r["label"], "value": r["value"], "overrides": r["overrides"]} for r in rows]}, indent=2) + "\n")
    print(text, end="")
    print(f"wrote {out / 'table.csv'}, {out / 'table.md'}, {out / 'plot.png'}")


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
