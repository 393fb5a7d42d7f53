"""Validation curves of several runs in one figure (the README's training curves).

  python experiments/curves.py --runs LABEL=DIR ... [--metric next_item/ndcg@10] [--part val]
                               [--ref LABEL=VALUE ...] [--x step|wall_s] --out FIGURE.png

Each DIR is a run directory: one seed (its ``metrics.jsonl``) or ``--seeds N`` (its ``seed*/metrics.jsonl``).
A run's curve is the mean over its seeds of ``PART/PROTOCOL/METRIC`` at every evaluated step (only the steps
every seed reached), with the seeds' range shaded; ``--ref`` draws a horizontal line per published value (or
target) and prints where each run's curve first reaches it. ``--x wall_s``: against the run's wall seconds at
each evaluation (the seeds' mean), to compare configurations by time to a quality rather than by steps.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxrec.cli import ArgParser, cli_main
from jaxrec.errors import InputError


def seed_files(run_dir: Path) -> list[Path]:
    """The ``metrics.jsonl`` of each seed of a run directory (one file for a single-seed run)."""
    files = sorted(run_dir.glob("seed*/metrics.jsonl")) or [run_dir / "metrics.jsonl"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError(run_dir, "no metrics.jsonl (nor seed*/metrics.jsonl): not a run directory")
    return files


def curve(path: Path, part: str, metric: str) -> dict[int, tuple[float, float]]:
    """step -> (value of ``part``/``metric`` (``PROTOCOL/NAME``), wall seconds) in one metrics.jsonl."""
    proto, _, name = metric.partition("/")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{i}", "not a JSON line") from None
        value = rec.get(part, {}).get(proto, {}).get(name) if isinstance(rec.get(part), dict) else None
        if isinstance(value, (int, float)):
            out[int(rec["step"])] = (float(value), float(rec.get("wall_s", "nan")))
    return out


def run_curve(run_dir: Path, part: str, metric: str, x: str = "step"):
    """(xs, mean, low, high, n_seeds) over the seeds of ``run_dir`` at the steps every seed evaluated; ``xs``
    are the steps, or with ``x="wall_s"`` the seeds' mean wall seconds at those steps."""
    curves = [curve(f, part, metric) for f in seed_files(run_dir)]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        raise InputError(run_dir, f"no '{part}' value of '{metric}' in its metrics.jsonl")
    values = [[c[s][0] for c in curves] for s in steps]
    xs = steps if x == "step" else [sum(c[s][1] for c in curves) / len(curves) for s in steps]
    return xs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values], len(curves)


def first_reach(xs: list, mean: list, target: float):
    """The first x at which the mean curve is at least ``target`` (None if it never is)."""
    return next((x for x, m in zip(xs, mean) if m >= target), None)


def labelled(specs: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        label, sep, value = spec.partition("=")
        if not sep or not label or not value:
            raise InputError(flag, f"{spec!r}: expected LABEL=VALUE")
        out.append((label, value))
    return out


def main_args(argv):
    p = ArgParser(prog="curves.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR")
    p.add_argument("--metric", default="next_item/ndcg@10", help="PROTOCOL/METRIC")
    p.add_argument("--part", default="val", choices=("val", "test"))
    p.add_argument("--ref", nargs="+", default=[], help="LABEL=VALUE: a published value as a horizontal line")
    p.add_argument("--x", default="step", choices=("step", "wall_s"), help="x axis: training step or wall seconds")
    p.add_argument("--out", required=True, help="figure to write (.png)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if "/" not in args.metric:
        raise InputError("--metric", f"{args.metric!r}: expected PROTOCOL/METRIC, e.g. next_item/ndcg@10")
    refs = []
    for label, value in labelled(args.ref, "--ref"):
        try:
            refs.append((label, float(value)))
        except ValueError:
            raise InputError("--ref", f"{label}={value}: not a number") from None
    runs = [(label, run_curve(Path(d), args.part, args.metric, args.x)) for label, d in labelled(args.runs, "--runs")]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (steps, mean, low, high, n) in runs:
        line, = ax.plot(steps, mean, marker="o", ms=3, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    for label, value in refs:
        ax.axhline(value, ls="--", lw=1, color="grey")
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
    ax.set_xlabel("step" if args.x == "step" else "wall seconds")
    ax.set_ylabel(f"{args.part} {args.metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    unit = "step" if args.x == "step" else "wall_s"
    for label, (xs, mean, *_ ) in runs:
        print(f"{label}: {args.part} {args.metric} {mean[0]:.4f} ({unit} {xs[0]:g}) ... {mean[-1]:.4f} ({unit} {xs[-1]:g}), "
              f"best {max(mean):.4f}")
        for ref, value in refs:
            at = first_reach(xs, mean, value)
            print(f"  reaches {ref} ({value:g}) " + (f"at {unit} {at:g}" if at is not None else "never"))
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
