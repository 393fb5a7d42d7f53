"""``plots/metrics.png`` of a run directory: a look at the learning curves without opening a notebook."""
from __future__ import annotations

import json
import math

from experiments.rundir import RunDir

# Panel and margin sizes in inches. The margins are fixed rather than fitted by ``tight_layout``, which draws
# the whole figure once more to measure it: with ~30 panels that extra pass was half of the plot's time, and
# every run (and every test run) writes one plot per seed and one for the seeds together.
PANEL_W, PANEL_H = 4.5, 3.2
LEFT, RIGHT, BOTTOM, TOP = 0.75, 0.15, 0.45, 0.35
LEGEND_H = 0.35


def write_plots(rd: RunDir):
    """``plots/metrics.png``: every logged scalar against the step (one panel each; one line per seed, with one
    legend for the figure when there are several seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int | None, list[tuple[int, float]]]] = {}
    for line in rd.metrics.read_text().splitlines() if rd.metrics.exists() else []:
        rec = json.loads(line)
        for key, value in _flatten(rec).items():
            if key in ("step", "wall_s", "seed") or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, {}).setdefault(rec.get("seed"), []).append((rec["step"], value))
    if not series:
        return
    names = sorted(series)
    seeds = sorted({s for per_seed in series.values() for s in per_seed}, key=lambda s: -1 if s is None else s)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    legend_h = LEGEND_H if len(seeds) > 1 else 0.0
    width, height = PANEL_W * cols, PANEL_H * rows + legend_h
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, gridspec_kw=dict(
        left=LEFT / width, right=1 - RIGHT / width, bottom=BOTTOM / height, top=1 - (TOP + legend_h) / height,
        wspace=0.3, hspace=0.55))
    colour = {s: f"C{i % 10}" for i, s in enumerate(seeds)}  # a seed keeps its colour in every panel
    lines = {}
    for ax, name in zip(axes.flat, names):
        for seed, points in series[name].items():
            xs, ys = zip(*points)
            lines[seed], = ax.plot(xs, ys, marker="o", ms=3, color=colour[seed])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if len(seeds) > 1:
        fig.legend([lines[s] for s in seeds], [f"seed {s}" for s in seeds], loc="upper center",
                   ncols=min(len(seeds), 8), fontsize=8, frameon=False)
    (rd.path / "plots").mkdir(exist_ok=True)
    fig.savefig(rd.path / "plots" / "metrics.png", dpi=100)
    plt.close(fig)


def _flatten(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
