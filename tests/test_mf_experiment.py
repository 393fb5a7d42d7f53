"""The ``mf`` experiment: leak-free fitting, fold-in of held-out users, and the run end to end."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import mf as mf_exp
from experiments import registry
from experiments.dataset import Dataset
from experiments.run import main
from jaxrec import config as C
from jaxrec.data.splits import eval_view, user_split
from jaxrec.embed import mf
from tests.helpers import synthetic_interactions, write_prepared
from tests.test_runner import check_contract

QUICK = list(mf_exp.EXPERIMENT.quick)


@pytest.fixture(scope="module")
def inter():
    return synthetic_interactions(n_users=60, n_items=40, per_user=(14, 30), seed=1)


def make(inter, *overrides, split=None):
    cfg = C.apply_overrides(mf_exp.make_config(), QUICK + list(overrides))
    split = split if split is not None else user_split(inter, cfg.data.split.fractions, cfg.data.split.seed)
    data = Dataset("", inter, {}, None, split, 4.0)
    return cfg, data, mf_exp.make_trainer(cfg, data)


def trained_params(trainer, cfg, seed=0):
    state = trainer.init(jax.random.key(seed))
    state, logs = trainer.train(state, cfg.train.steps)
    return state, logs


@pytest.mark.parametrize("objective", ["bce", "mse"])
def test_fit_sees_training_rows_only(inter, objective, monkeypatch):
    """Held-out rows with absurd ratings change nothing: the fit equals one on the training rows alone."""
    split = user_split(inter, seed=0)
    held = np.union1d(split.val, split.test)
    rating = inter.rating.copy()
    rating[held] = 1e6  # every held-out row a (huge) positive: any leak moves the embeddings
    absurd = dataclasses.replace(inter, rating=rating)
    calls = []
    real_train_view = mf_exp.train_view

    def spy(inter_, split_):
        calls.append(split_)
        return real_train_view(inter_, split_)

    monkeypatch.setattr(mf_exp, "train_view", spy)
    cfg, _, trainer = make(absurd, f"model.objective={objective}", split=split)
    assert calls == [split]
    state, _ = trained_params(trainer, cfg)
    train = inter.take(split.train)
    model = dataclasses.replace(cfg.model, epochs=cfg.train.steps, positive_threshold=4.0)
    alone = mf.fit_mf(jax.random.key(0), train.user, train.item, train.rating, inter.n_users, inter.n_items, model)
    for name in ("user", "item", "user_bias", "item_bias", "scale", "offset", "prior_mean", "noise_var"):
        np.testing.assert_array_equal(getattr(state["params"], name), getattr(alone, name), err_msg=name)


def test_heldout_fold_in_uses_visible_rows_only(inter):
    cfg, data, trainer = make(inter)
    state, _ = trained_params(trainer, cfg)
    view = eval_view(inter, data.split, "test", cfg.data.split.heldout_visible)
    assert not trainer.trained[view.users].any()  # scheme users: test users were never fitted
    base = trainer.folded_params(state["params"], view.users, view.context, refit_all=False)

    def fold_with(rating):
        changed = dataclasses.replace(inter, rating=rating)
        _, _, other = make(changed, split=data.split)
        return other.folded_params(state["params"], view.users, view.context, refit_all=False)

    rating = inter.rating.copy()
    rating[view.target] = np.where(rating[view.target] >= 4, 1.0, 5.0)  # flip every target's relevance
    np.testing.assert_array_equal(fold_with(rating).user, base.user)
    rating = inter.rating.copy()
    rating[view.context] = np.where(rating[view.context] >= 4, 1.0, 5.0)  # the visible history does matter
    assert not np.allclose(fold_with(rating).user[view.users], base.user[view.users])
    # Users outside the view keep their fitted rows.
    others = np.setdiff1d(np.arange(inter.n_users), view.users)
    np.testing.assert_array_equal(base.user[others], state["params"].user[others])


def test_drr_folds_in_from_the_state_items_only(inter, monkeypatch):
    cfg, data, trainer = make(inter, "data.split.heldout_visible=12")
    state, _ = trained_params(trainer, cfg)
    view = eval_view(inter, data.split, "val", 12)
    seen = []
    real = mf.fold_in_users

    def spy(params, items, mask, ratings, model):
        seen.append((np.asarray(items), np.asarray(mask)))
        return real(params, items, mask, ratings, model)

    monkeypatch.setattr(mf, "fold_in_users", spy)
    metrics, n_users = trainer.evaluate_drr(state, view, "val")
    assert set(metrics) == {"precision@5", "precision@10", "ndcg@5", "ndcg@10"} and n_users > 0
    # Every folded history is exactly the user's first 10 visible items (12 are visible).
    folded = np.concatenate([m.sum(1) for _, m in seen])
    assert folded.max() == 10 and (folded[folded > 0] == 10).all()
    first_user = view.users[np.bincount(inter.user[view.context], minlength=inter.n_users)[view.users] >= 10][0]
    rows = view.context[inter.user[view.context] == first_user][:10]
    items, mask = seen[0]
    assert set(items[0][mask[0]]) == set(inter.item[rows])


def test_drr_follows_the_eval_drr_keys(inter):
    """``mf`` reads eval.drr_n_state / drr_ks / drr_ideal like every experiment (it used to hard-code them)."""
    cfg, data, trainer = make(inter, "data.split.heldout_visible=12")
    state, _ = trained_params(trainer, cfg)
    view = eval_view(inter, data.split, "val", 12)
    base, n_base = trainer.evaluate_drr(state, view, "val")
    for override, check in (("eval.drr_ks=3,7", lambda m, n: set(m) == {"precision@3", "precision@7", "ndcg@3", "ndcg@7"}),
                            ("eval.drr_n_state=5", lambda m, n: n == n_base and m != base),
                            ("eval.drr_ideal=k", lambda m, n: n == n_base and m["precision@10"] == base["precision@10"]
                             and m["ndcg@10"] != base["ndcg@10"])):
        cfg2 = C.apply_overrides(cfg, [override])
        trainer2 = mf_exp.make_trainer(cfg2, data)
        metrics, n_users = trainer2.evaluate_drr(state, view, "val")
        assert check(metrics, n_users), (override, metrics, base)


def test_epochs_must_match_steps(inter, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, "mf", mf_exp.EXPERIMENT)
    data_dir = write_prepared(inter, tmp_path / "syn")
    rc = main(["--exp=mf", "--quick", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"), "--set", "train.steps=5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: model.epochs:") and len(err.splitlines()) == 1


def test_mf_end_to_end_quick_and_resume(inter, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, "mf", mf_exp.EXPERIMENT)
    data_dir = write_prepared(inter, tmp_path / "syn")
    run_dir = tmp_path / "run"
    argv = ["--exp=mf", "--quick", "--data", str(data_dir), "--set", "train.ckpt_every=2", "train.eval_every=2"]
    assert main(argv + ["--run-dir", str(run_dir)]) == 0, capsys.readouterr().err
    final = json.loads((run_dir / "final.json").read_text())
    for part in ("val", "test"):
        assert set(final[part]) == {"full", "drr"}
        assert {"hr@10", "ndcg@10", "precision@5", "recall@20"} <= set(final[part]["full"])
        assert set(final[part]["drr"]) == {"precision@5", "precision@10", "ndcg@5", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for m in final[part].values() for v in m.values())
    assert final["split"] == "users" and final["updates"] > 0 and final["env_steps"] == 0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 3 and losses[-1] < losses[0]  # one logged loss per epoch, decreasing
    check_contract("run", run_dir)
    # The same command again is a no-op that keeps the result.
    assert main(argv + ["--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "final.json").read_text()) == final

    # Params, Adam state and key survive an orbax checkpoint: an interrupted run ends identically.
    real_train = mf_exp.MFTrainer.train

    def crash_after_two(self, state, n_steps):
        if int(state["epoch"]) >= 2:
            raise KeyboardInterrupt
        return real_train(self, state, n_steps)

    monkeypatch.setattr(mf_exp.MFTrainer, "train", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(argv + ["--run-dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(mf_exp.MFTrainer, "train", real_train)
    capsys.readouterr()
    assert main(argv + ["--run-dir", str(tmp_path / "resumed")]) == 0
    assert "resuming from step 2" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "resumed" / "final.json").read_text())
    assert {**resumed, "wall_s": 0} == {**final, "wall_s": 0}
