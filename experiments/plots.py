"""``plots/metrics.png`` of a run directory: a look at the learning curves without opening a notebook."""
from __future__ import annotations

import json
import math

from experiments.rundir import RunDir


def write_plots(rd: RunDir):
    """``plots/metrics.png``: every logged scalar against the step (one panel each)."""
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
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for seed, points in series[name].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, label=None if seed is None else f"seed {seed}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if len(series[name]) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
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
