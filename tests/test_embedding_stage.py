"""The pretrained-embeddings stage (experiments/embed_stage.py): fitted once per run, loaded on resume, by
recommend.py and by seeds sharing ``model.embed.seed``; a changed config or a corrupt file refits.

Fits are counted by wrapping ``jaxrec.embed.mf.fit_mf`` (ddpg_id) and ``jaxrec.embed.multimodal.fit``
(ddpg_multimodal). Loaded embeddings must be bit-identical to fitted ones: a run that loads them ends with
the same final.json and logs the same losses as the run that fitted them, and a trainer's initial state is
the same array for array."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from experiments import embed_stage
from experiments.recommend import recommend
from experiments.run import main
from jaxrec.embed import mf
from jaxrec.embed import multimodal as mm
from tests.helpers import synthetic_interactions, write_prepared

QUICK = ["--quick", "--set", "train.steps=40", "train.eval_every=20", "train.ckpt_every=20", "train.log_every=10",
         "model.agent.n_envs=4", "model.agent.batch_size=16", "model.agent.replay_capacity=512", "eval.protocols=drr"]


class FitCounter:
    def __init__(self):
        self.calls = 0

    def wrap(self, fn):
        def counted(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


@pytest.fixture
def fits(monkeypatch):
    counter = FitCounter()
    monkeypatch.setattr(mf, "fit_mf", counter.wrap(mf.fit_mf))
    monkeypatch.setattr(mm, "fit", counter.wrap(mm.fit))
    return counter


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(synthetic_interactions(n_users=80, n_items=40, per_user=(14, 30)), tmp_path_factory.mktemp("d") / "syn")


def _run(data_dir, run_dir, *flags, sets=()) -> int:
    return main(["--exp=ddpg_id", "--data", str(data_dir), "--run-dir", str(run_dir), "--quiet", *flags, *QUICK, *sets])


def _final(run_dir) -> dict:
    final = json.loads((run_dir / "final.json").read_text())
    final.pop("wall_s")
    return final


def _metrics(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "wall_s"} for line in lines]


def _entries(root) -> list[str]:
    return sorted(p.name for p in (root / embed_stage.STAGE).iterdir())


@pytest.fixture(scope="module")
def two_seeds(data_dir, tmp_path_factory):
    """ddpg_id, --seeds 2, default model.embed.seed (each seed its own embeddings): (run root, fits)."""
    run = tmp_path_factory.mktemp("two") / "run"
    counter = FitCounter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mf, "fit_mf", counter.wrap(mf.fit_mf))
        assert _run(data_dir, run, "--seeds", "2") == 0
    return run, counter.calls


def test_each_seed_fits_its_own_embeddings_once_into_the_run_root(two_seeds):
    run, calls = two_seeds
    assert calls == 2
    entries = _entries(run)
    assert len(entries) == 4 and {e.rsplit(".", 1)[1] for e in entries} == {"json", "npz"}
    assert not any((run / f"seed{s}" / embed_stage.STAGE).exists() for s in (0, 1))
    keys = {json.loads((run / embed_stage.STAGE / e).read_text())["key"]["data"][0] for e in entries if e.endswith(".json")}
    assert len(keys) == 2  # seed 0 and seed 1 fitted with different keys
    deps = json.loads((run / embed_stage.STAGE / entries[0]).read_text())
    assert deps["embed"]["epochs"] == 2 and deps["data"]["n_users"] == 80 and deps["split"]["scheme"] == "users"


def test_resume_loads_the_embeddings_and_ends_identical(data_dir, two_seeds, tmp_path, fits, capsys):
    run, _ = two_seeds
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # Interrupted after seed 1's first checkpoint: its final.json, last checkpoint and the aggregate are gone.
    (copy / "seed1" / "final.json").unlink()
    (copy / "final.json").unlink()
    shutil.rmtree(copy / "seed1" / "checkpoints" / "40")
    capsys.readouterr()
    assert _run(data_dir, copy, "--seeds", "2") == 0
    assert "resuming from step 20" in capsys.readouterr().out
    assert fits.calls == 0
    assert _final(copy / "seed1") == _final(run / "seed1")
    assert _metrics(copy / "seed1") == _metrics(run / "seed1")


def test_shared_embed_seed_fits_once_for_all_seeds_and_loading_is_bit_identical(data_dir, two_seeds, tmp_path, fits):
    """model.embed.seed=1: one fit (seed 0 fits the embeddings training seed 1 fits by default, seed 1 loads
    them), and seed 1, which loaded them, ends exactly as the default run's seed 1, which fitted them."""
    run, _ = two_seeds
    shared = tmp_path / "shared"
    assert _run(data_dir, shared, "--seeds", "2", sets=["model.embed.seed=1"]) == 0
    assert fits.calls == 1
    assert len(_entries(shared)) == 2 and set(_entries(shared)) < set(_entries(run))
    assert _final(shared / "seed1") == _final(run / "seed1")
    # The logged losses too: ranking metrics on small data can survive a last-bit difference, losses cannot.
    assert _metrics(shared / "seed1") == _metrics(run / "seed1")
    assert _metrics(shared / "seed0") != _metrics(run / "seed0")


def test_recommend_loads_the_stage_and_recommends_as_a_refit_does(two_seeds, tmp_path, fits):
    run, _ = two_seeds
    loaded = recommend(run / "seed1", "5", 5)
    assert fits.calls == 0
    # The same seed directory without the stage beside it: recommend refits (as before the stage) and agrees.
    alone = tmp_path / "seed1"
    shutil.copytree(run / "seed1", alone)
    refitted = recommend(alone, "5", 5)
    assert fits.calls == 1
    assert loaded.equals(refitted)
    assert len(_entries(alone)) == 2  # and saves it, so the next call loads it
    recommend(alone, "5", 5)
    assert fits.calls == 1


def test_a_changed_embed_config_is_refused_by_the_run_or_refitted_into_a_new_entry(data_dir, two_seeds, tmp_path, fits,
                                                                                   capsys):
    run, _ = two_seeds
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "seed0" / "final.json").unlink()
    # The harness refuses another config in an existing run directory before anything is fitted.
    assert _run(data_dir, copy / "seed0", sets=["model.embed.epochs=3"]) == 2
    assert "holds a different config" in capsys.readouterr().err and fits.calls == 0
    # A trainer with other embedding settings pointed at the same stage fits a new entry beside the old ones.
    _trainer(data_dir, copy, "model.embed.epochs=3").init(jax.random.key(0))
    assert fits.calls == 1
    assert len(_entries(copy)) == 6
    _trainer(data_dir, copy, "model.embed.epochs=3").init(jax.random.key(0))
    assert fits.calls == 1


def test_an_unreadable_entry_warns_and_is_refitted_identically(data_dir, two_seeds, tmp_path, fits, capsys):
    run, _ = two_seeds
    stage = tmp_path / "run" / embed_stage.STAGE
    shutil.copytree(run / embed_stage.STAGE, stage)
    good = {k: _trainer(data_dir, run).init(jax.random.key(k)) for k in (0, 1)}
    assert fits.calls == 0
    seed0, seed1 = (_entry_of(stage, k) for k in (0, 1))
    seed0.write_bytes(seed0.read_bytes()[: seed0.stat().st_size // 2])  # a write cut short
    deps = json.loads(seed1.with_suffix(".json").read_text())
    deps["embed"]["epochs"] = 99  # an entry whose description is not what the run needs
    seed1.with_suffix(".json").write_text(json.dumps(deps))
    capsys.readouterr()
    for k, why in ((0, "BadZipFile"), (1, "describes other inputs")):
        state = _trainer(data_dir, stage.parent).init(jax.random.key(k))
        assert fits.calls == k + 1
        err = capsys.readouterr().err
        assert "cannot be read" in err and why in err and "fitting them again" in err
        _assert_same(state, good[k])
    # Both entries were written again and load.
    for k in (0, 1):
        _assert_same(_trainer(data_dir, stage.parent).init(jax.random.key(k)), good[k])
    assert fits.calls == 2


def test_multimodal_embeddings_are_saved_and_loaded_bit_identical(tmp_path, fits):
    from experiments.multimodal import EXPERIMENTS
    from experiments.dataset import load_dataset
    from experiments.run import build_parser, resolve_config
    from tests.helpers import planted_content, write_features

    inter, feats, _ = planted_content(n_users=100)
    data_dir = write_prepared(inter, tmp_path / "data")
    features_dir = write_features(tmp_path / "features", data_dir, feats)
    exp = next(e for e in EXPERIMENTS if e.name == "ddpg_multimodal")
    args = build_parser().parse_args(["--exp=ddpg_multimodal", "--data", str(data_dir), "--features", str(features_dir),
                                      "--quick"])
    cfg = resolve_config(exp, args)
    data = load_dataset(cfg)
    states = []
    for _ in range(2):
        trainer = exp.make_trainer(cfg, data)
        trainer.stage_dir = tmp_path / "run"
        states.append(trainer.init(jax.random.key(0)))
    assert fits.calls == 1
    assert len(_entries(tmp_path / "run")) == 2
    deps = json.loads(next((tmp_path / "run" / embed_stage.STAGE).glob("*.json")).read_text())
    assert deps["fit"] == "jaxrec.embed.multimodal.fit" and "features_sha256" in deps
    _assert_same(states[0], states[1])


def test_without_a_stage_dir_the_trainer_fits_every_time(data_dir, fits):
    trainer = _trainer(data_dir, None)
    trainer.init(jax.random.key(0))
    trainer.init(jax.random.key(0))
    assert fits.calls == 2


# ----------------------------------------------------------------------------------------------------


def _entry_of(stage, seed):
    """The .npz of training seed ``seed``'s default embeddings (key split(key(seed))[0])."""
    key_data = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed))[0])).tolist()
    return next(p.with_suffix(".npz") for p in stage.glob("*.json") if json.loads(p.read_text())["key"]["data"] == key_data)


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _trainer(data_dir, stage_root, *sets):
    """A ddpg_id trainer as the harness builds it (--quick + QUICK), saving its stage under ``stage_root``."""
    from experiments import ddpg
    from experiments.dataset import load_dataset
    from experiments.run import build_parser, resolve_config

    args = build_parser().parse_args(["--exp=ddpg_id", "--data", str(data_dir), *QUICK, *sets])
    cfg = resolve_config(ddpg.EXPERIMENT, args)
    trainer = ddpg.make_trainer(cfg, load_dataset(cfg))
    trainer.stage_dir = stage_root
    return trainer
