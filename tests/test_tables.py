"""experiments/tables.py: every README table's rows are valid runs, shared rows agree, and run + report fill a
table from real runs."""
import argparse
import json

import pytest

from experiments import tables
from experiments.registry import EXPERIMENTS
from experiments.run import resolve_config
from jaxrec.errors import ConfigError
from tests.helpers import synthetic_interactions, write_prepared


@pytest.mark.parametrize("table", tables.TABLES, ids=lambda t: t.name)
def test_every_row_resolves_to_a_config(table):
    """A typo in a row's --set (key or value) would only show hours into a regeneration: resolve them all."""
    for row in table.rows:
        ns = argparse.Namespace(quick=False, data="data/ml-1m", features="data/features/ml-1m" if row.features else None,
                                seed=None, devices=None, set=list(row.sets))
        cfg = resolve_config(EXPERIMENTS[row.exp], ns)
        assert table.protocol in cfg.eval.protocols or table.protocol == "full", (table.name, row.label)
        for metric in table.metrics.split(","):
            proto = metric.rpartition(":")[0] or table.protocol
            assert proto in cfg.eval.protocols, (table.name, row.label, metric)


def test_rows_shared_by_tables_are_one_run():
    rows = tables.unique_rows(list(tables.TABLES))
    assert len({r.run_dir for r in rows}) == len(rows)
    assert sum(len(t.rows) for t in tables.TABLES) > len(rows)  # popularity, mf, ddpg_id are shared
    clash = tables.Table("x", (tables.Row("a", "d", "mf"), tables.Row("b", "d", "mf", seeds=1)), "hr@10")
    with pytest.raises(ConfigError, match="two different runs"):
        tables.unique_rows([clash])


def test_run_then_report_fills_the_readme_table(tmp_path, monkeypatch, capsys):
    data = write_prepared(synthetic_interactions(n_users=50, n_items=30, per_user=(12, 20), seed=2),
                          tmp_path / "syn", positive_threshold=1.0)
    quick = ("data.split.scheme=users", "data.split.heldout_visible=5", "eval.drr_n_state=5", "model.dim=8",
             "model.epochs=2", "train.steps=2", "train.eval_every=1", "train.ckpt_every=1")
    table = tables.Table("demo", (tables.Row("floor", "demo/popularity", "popularity", seeds=2,
                                             sets=("data.split.scheme=users", "data.split.heldout_visible=5")),
                                  tables.Row("mf, tiny", "demo/mf", "mf", seeds=2, sets=quick)), "hr@10,ndcg@10")
    monkeypatch.setattr(tables, "TABLES", (table,))
    monkeypatch.setattr(tables, "BY_NAME", {"demo": table})
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- table:demo -->\nold\n<!-- /table:demo -->\nafter\n")
    runs = tmp_path / "runs"
    assert tables.main(["report", "--runs", str(runs), "--readme", str(readme)]) == 0
    assert "old" in readme.read_text() and "runs not finished" in capsys.readouterr().out
    assert tables.main(["run", "--data", str(data), "--runs", str(runs), "--jobs", "2"]) == 0
    finals = {r: json.loads((runs / "demo" / r / "final.json").read_text()) for r in ("popularity", "mf")}
    assert all(len(f["seeds"]) == 2 for f in finals.values())
    assert tables.main(["run", "--data", str(data), "--runs", str(runs)]) == 0
    assert "2 of 2 runs already finished" in capsys.readouterr().out
    assert tables.main(["report", "--runs", str(runs), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| floor | 2 |" in text and "| mf, tiny | 2 |" in text
    assert text.startswith("before\n") and text.endswith("after\n")
    hr = finals["mf"]["test"]["full"]["hr@10"]
    assert f"{hr:.4f}" in text
