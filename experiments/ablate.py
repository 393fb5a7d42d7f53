"""Runs an ablation grid of an experiment and tabulates it (DESIGN.md 2.3).

  python experiments/ablate.py --grid=lambda|nsteps|ssl|doubleq [--data DIR] [--out DIR] [--seed N] [--seeds N]
                               [--quick] [--set a.b=value ...] [--metrics hr@10,ndcg@10]
  python experiments/ablate.py --grid=list

Each grid point is one run directory ``OUT/<label>`` of the harness (resumable: re-running the same
command resumes unfinished points and reuses finished ones), with the experiment's config, the shared
``--set`` overrides and the point's own overrides. Then ``OUT/table.csv`` and ``OUT/table.md`` (one row
per point: validation selection metric and test metrics, mean +- 95% half-width over seeds) and
``OUT/plot.png`` (test metrics against the grid value) are written. Model selection inside every run
uses the validation part only; the table shows the test numbers of the validation-selected states.

Grids (all on ``m3s_tdlambda``; OUT defaults to ``runs/ablate-<grid>[-quick]``):
  lambda  model.lam in 0, 0.5, 0.8, 1 (one-step TD ... n-step Monte-Carlo targets)
  nsteps  model.n_steps in 1, 3, 6, 10 (n = 1 has no future step, so its self-supervision is off)
  ssl     model.ssl in none, future_states, ahead (without / with multi-step self-supervision)
  doubleq model.double_q in heads, networks, none (how the double-Q estimators are built)
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

from data_prep.common import cli_main
from jaxrec.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Grid:
    exp: str
    key: str
    """The varied config key (the plot's x axis)."""
    points: tuple[tuple[str, tuple[str, ...]], ...]
    """(label, --set overrides) per point; the first override sets ``key``."""
    description: str


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
}


def point_config(exp, grid: Grid, overrides: tuple[str, ...], args):
    from experiments.run import resolve_config

    ns = argparse.Namespace(quick=args.quick, data=args.data, features=None, seed=args.seed, devices=None,
                            set=list(args.set) + list(overrides))
    return resolve_config(exp, ns)


def value_of(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def run_grid(grid: Grid, args, out: Path, progress=print) -> list[dict]:
    from experiments.harness import run_experiment
    from experiments.registry import EXPERIMENTS

    exp = EXPERIMENTS[grid.exp]
    rows = []
    for label, overrides in grid.points:
        cfg = point_config(exp, grid, overrides, args)
        progress(f"== {args.grid}: {label} ({' '.join(overrides)})")
        final = run_experiment(exp, cfg, out / label, args.seeds, progress=progress)
        rows.append({"label": label, "value": value_of(cfg, grid.key), "overrides": list(overrides), "final": final,
                     "select": cfg.eval.select, "protocol": cfg.eval.protocols[0]})
    return rows


def write_tables(rows: list[dict], grid: Grid, metrics: list[str], out: Path) -> str:
    header = ["label", grid.key, "seeds", f"val {rows[0]['select']}"]
    for m in metrics:
        header += [f"test {m}", f"test {m} ci95"]
    header.append("wall_s")
    table = []
    for r in rows:
        f, proto = r["final"], r["protocol"]
        n = len(f.get("seeds", [None]))
        line = [r["label"], r["value"], n, f["val"][proto].get(r["select"], float("nan"))]
        for m in metrics:
            line += [f["test"][proto].get(m, float("nan")), f.get("test_ci95", {}).get(proto, {}).get(m, 0.0)]
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
        ys = [r["final"]["test"][proto].get(m, float("nan")) for r in rows]
        err = [r["final"].get("test_ci95", {}).get(proto, {}).get(m, 0.0) for r in rows]
        ax.errorbar(x, ys, yerr=err, marker="o", capsize=3, label=f"test {m}")
    ax.set_xticks(x, [str(r["value"]) for r in rows])
    ax.set_xlabel(grid.key)
    ax.set_title(grid.description, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
    plt.close(fig)


def main_args(argv):
    p = argparse.ArgumentParser(prog="ablate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid name, or 'list'")
    p.add_argument("--data", help="prepared data directory (data.path)")
    p.add_argument("--out", help="output directory (default runs/ablate-GRID[-quick])")
    p.add_argument("--seed", type=int, help="first learner seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per point (mean +- 95%% CI)")
    p.add_argument("--quick", action="store_true", help="each point with the experiment's --quick config")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="overrides for every point")
    p.add_argument("--metrics", default="hr@10,ndcg@10", help="test metrics of the table and plot")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.grid == "list":
        for name, g in GRIDS.items():
            print(f"{name:<8} {g.exp}: {g.key} in {', '.join(str(v) for v in (o[0] for _, o in g.points))} ({g.description})")
        return
    if args.grid not in GRIDS:
        raise ConfigError("--grid", f"unknown grid {args.grid!r}; known: {', '.join(GRIDS)} (or 'list')")
    if args.seeds < 1:
        raise ConfigError("--seeds", "must be >= 1")
    grid = GRIDS[args.grid]
    out = Path(args.out) if args.out else Path("runs") / f"ablate-{args.grid}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    rows = run_grid(grid, args, out)
    missing = [m for m in metrics if m not in rows[0]["final"]["test"][rows[0]["protocol"]]]
    if missing:
        raise ConfigError("--metrics", f"{missing} not among the runs' metrics {sorted(rows[0]['final']['test'][rows[0]['protocol']])}")
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
