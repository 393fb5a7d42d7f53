"""plots/metrics.png: one panel per logged scalar, laid out at a fixed size (no second layout pass)."""
import json

import numpy as np
from PIL import Image

from experiments import plots
from experiments.rundir import RunDir


def _write(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return RunDir(path)


def test_one_panel_per_scalar_at_the_fixed_size_with_a_legend_for_several_seeds(tmp_path):
    records = [{"step": s, "seed": seed, "wall_s": 0.1 * s, "loss": 1.0 / s + seed,
                "val": {"next_item": {"ndcg@10": 0.1 * s}}, "note": "text is not plotted"}
               for seed in (0, 1) for s in (1, 2, 3)]
    plots.write_plots(_write(tmp_path / "two", records))
    width, height = Image.open(tmp_path / "two" / "plots" / "metrics.png").size
    # loss and val/next_item/ndcg@10: 2 panels in one row (step, seed, wall_s and text are not plotted), with
    # room above for the seeds' legend.
    assert (width, height) == (round(100 * 2 * plots.PANEL_W), round(100 * (plots.PANEL_H + plots.LEGEND_H)))
    one = [r for r in records if r["seed"] == 0]
    plots.write_plots(_write(tmp_path / "one", one))
    assert Image.open(tmp_path / "one" / "plots" / "metrics.png").size == (width, round(100 * plots.PANEL_H))
    seven = [{"step": 1, f"m{i}": float(i)} for i in range(7)]
    plots.write_plots(_write(tmp_path / "seven", seven))
    image = np.asarray(Image.open(tmp_path / "seven" / "plots" / "metrics.png").convert("L"))
    assert image.shape == (round(100 * 3 * plots.PANEL_H), round(100 * 3 * plots.PANEL_W))
    # The two unused panels of the last row are switched off: blank.
    assert (image[-int(100 * plots.PANEL_H):, -int(100 * 2 * plots.PANEL_W):] == 255).all()


def test_nothing_to_plot_writes_nothing(tmp_path):
    plots.write_plots(_write(tmp_path / "empty", [{"step": 1, "note": "x"}]))
    plots.write_plots(RunDir(tmp_path / "missing"))
    assert not (tmp_path / "empty" / "plots").exists() and not (tmp_path / "missing" / "plots").exists()
