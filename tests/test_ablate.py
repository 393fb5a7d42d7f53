"""experiments/ablate.py: grids run through the harness and are tabulated."""
import argparse
import csv
import json

import pytest

from experiments import ablate
from tests.helpers import synthetic_interactions, write_prepared


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(synthetic_interactions(n_users=40, n_items=50, per_user=(12, 24), seed=9),
                          tmp_path_factory.mktemp("abl") / "syn", positive_threshold=1.0)


USERS = ["--set", "data.split.scheme=users", "data.split.heldout_visible=5"]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", ["lambda", "nsteps", "ssl", "doubleq"])
def test_every_point_of_the_issue_grids_is_a_valid_m3s_config(name):
    from experiments.registry import EXPERIMENTS

    from jaxrec import config as C

    grid = ablate.GRIDS[name]
    args = argparse.Namespace(quick=False, data=None, seed=None, set=["data.split.scheme=users"])
    base = C.to_dict(C.apply_overrides(EXPERIMENTS[grid.exp].make_config(), ["data.split.scheme=users"]))
    values = []
    for label, overrides in grid.points:
        cfg = ablate.point_config(EXPERIMENTS[grid.exp], grid, overrides, args)
        assert cfg.exp == "m3s_tdlambda" and cfg.data.split.scheme == "users"
        # A point differs from the experiment (with the user's --set) in its own overrides and nothing else.
        changed = {k for k in _flat(C.to_dict(cfg)) if _flat(C.to_dict(cfg))[k] != _flat(base)[k]}
        assert changed <= {o.split("=")[0] for o in overrides}, (label, changed)
        values.append(ablate.value_of(cfg, grid.key))
    expected = {"lambda": [0.0, 0.5, 0.8, 1.0], "nsteps": [1, 3, 6, 10], "ssl": ["none", "future_states", "ahead"],
                "doubleq": ["heads", "networks", "none"]}
    assert values == expected[name]


@pytest.mark.parametrize("name,programs", [("ddpg_lr", 1), ("ddpg_target", 1), ("ddpg_explore", 1), ("ddpg_critic", 4),
                                           ("ddpg_envs", 4)])
def test_ddpg_tuning_grids_are_valid_and_traced_points_share_one_program(name, programs):
    """Each point of a DDPG tuning grid is ddpg_id with the user's --set and its own overrides, nothing else;
    the learning-rate, target and exploration grids vary traced fields only, so their points form one program."""
    from experiments.registry import EXPERIMENTS

    from jaxrec import config as C

    grid = ablate.GRIDS[name]
    user = ["model.agent.sigma=0.5"] if name != "ddpg_explore" else ["model.agent.tau=0.01"]
    args = argparse.Namespace(quick=False, data=None, seed=None, set=user)
    base = _flat(C.to_dict(C.apply_overrides(EXPERIMENTS[grid.exp].make_config(), user)))
    cfgs = [ablate.point_config(EXPERIMENTS[grid.exp], grid, o, args) for _, o in grid.points]
    for (label, overrides), cfg in zip(grid.points, cfgs):
        flat = _flat(C.to_dict(cfg))
        assert {k for k in flat if flat[k] != base[k]} <= {o.split("=")[0] for o in overrides}, label
        assert flat[user[0].split("=")[0]] == float(user[0].split("=")[1]) and grid.references == ("mf", "popularity")
    assert len({C.program_key(c) for c in cfgs}) == programs
    # The DDPG experiments' first protocol (drr) has no hr@K: the default metrics name the full protocol's.
    assert grid.metrics == "full:ndcg@10,full:hr@10" and cfgs[0].eval.protocols[0] == "drr"
    assert len({ablate.grid_value(c, grid) for c in cfgs}) == len(cfgs)
    if name == "ddpg_lr":
        assert ablate.grid_value(cfgs[1], grid) == "0.0001 / 0.0003"


def test_grid_runs_tables_plot_seeds_ci_and_rerun_reuses_points(data_dir, tmp_path, monkeypatch, capsys):
    grid = ablate.Grid("popularity_seq", "model.exclude_seen",
                       (("seen", ("model.exclude_seen=true",)), ("all", ("model.exclude_seen=false",))), "test grid")
    monkeypatch.setitem(ablate.GRIDS, "tiny", grid)
    out = tmp_path / "tiny"
    args = ["--grid=tiny", "--data", str(data_dir), "--out", str(out), "--seeds", "2", *USERS]
    assert ablate.main(args) == 0
    first = (out / "table.csv").read_text()
    rows = list(csv.reader(open(out / "table.csv")))
    assert rows[0][:4] == ["label", "model.exclude_seen", "seeds", "val ndcg@10"]
    assert [r[0] for r in rows[1:]] == ["seen", "all"]
    final = json.loads((out / "seen" / "final.json").read_text())
    assert float(rows[1][4]) == pytest.approx(final["test"]["next_item"]["hr@10"])
    assert rows[1][2] == "2" and float(rows[1][5]) == 0.0  # popularity: no spread over learner seeds
    assert (out / "plot.png").stat().st_size > 0 and "| seen | True | 2 |" in (out / "table.md").read_text()
    # Excluding seen items can only help a fixed ranking.
    assert float(rows[1][4]) >= float(rows[2][4])
    capsys.readouterr()
    assert ablate.main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert (out / "table.csv").read_text() == first


def test_unknown_grid_and_list(capsys):
    assert ablate.main(["--grid=nope"]) == 2
    assert "unknown grid 'nope'" in capsys.readouterr().err
    assert ablate.main(["--grid=list"]) == 0
    listing = capsys.readouterr().out
    assert "lambda" in listing and "nsteps" in listing and "ssl" in listing
    assert [o for _, o in ablate.GRIDS["lambda"].points] == [("model.lam=0.0",), ("model.lam=0.5",), ("model.lam=0.8",),
                                                              ("model.lam=1.0",)]


def test_multimodal_grids_cover_every_subset_and_carry_reference_rows(tmp_path, capsys):
    from tests.helpers import planted_content, write_features

    inter, feats, _ = planted_content(n_users=80, n_items=60, per_user=16)
    data = write_prepared(inter, tmp_path / "data")
    features = write_features(tmp_path / "feat", data, {**feats, "meta": (feats["noise"][0][:, :2], feats["noise"][1], "meta")})
    grid = ablate.multimodal_grid("modalities", "ddpg_multimodal", str(features))
    assert [label for label, _ in grid.points] == ["text", "noise", "meta", "text+noise", "text+meta", "noise+meta",
                                                   "text+noise+meta"]
    assert grid.points[3][1] == ("model.embed.modalities=text,noise",) and grid.references == ("ddpg_id", "popularity")
    fusion = ablate.multimodal_grid("fusion", "mf_multimodal", None)
    assert grid.metrics == "full:ndcg@10,full:hr@10" and fusion.metrics == "hr@10,ndcg@10"
    assert [o for _, o in fusion.points][-1] == ("model.fusion=late", "model.pool=mean")
    out = tmp_path / "out"
    args = ["--grid=fusion", "--exp", "mf_multimodal", "--data", str(data), "--features", str(features), "--out", str(out),
            "--quick", "--set", "data.split.cold_items=0.25", "eval.protocols=full,cold_start", "eval.ks=5,10",
            # One epoch (one evaluation) per run instead of --quick's three: the grid's rows are what is checked.
            "model.epochs=1", "train.steps=1", "train.eval_every=1", "train.ckpt_every=1",
            "--metrics", "ndcg@10,cold_start:ndcg@10"]
    assert ablate.main(args) == 0
    rows = list(csv.reader(open(out / "table.csv")))
    assert [r[0] for r in rows[1:]] == ["early_concat", "early_mean", "late_concat", "late_mean", "mf", "popularity"]
    # The reference rows ran on the grid's split and protocols, not on their own defaults.
    ref = json.loads((out / "ref-popularity" / "config.json").read_text())
    assert ref["data"]["split"]["scheme"] == "users" and ref["data"]["split"]["cold_items"] == 0.25
    assert ref["eval"]["protocols"] == ["full", "cold_start"]
    mf_final = json.loads((out / "ref-mf" / "final.json").read_text())
    assert float(rows[5][6]) == pytest.approx(mf_final["test"]["cold_start"]["ndcg@10"])
    assert (out / "plot.png").stat().st_size > 0
    assert ablate.main(["--grid=modalities", "--exp", "ddpg_id"]) == 2
    assert "runs on one of" in capsys.readouterr().err
