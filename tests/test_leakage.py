"""The leakage guards can fire: a held-out interaction planted at each place where data reaches a model
(MF fitting, the simulator and so its replay, sequence windows, popularity counts, fold-in histories and
states at evaluation) is refused there, by name, while the real pipeline passes the same guards."""
import dataclasses

import jax
import numpy as np
import pytest

from experiments import ddpg as ddpg_exp
from experiments import mf as mf_exp
from experiments import popularity as pop_exp
from experiments.dataset import Dataset
from experiments.sequential import configs as seq_configs
from experiments.sequential import trainer as seq_trainer
from jaxrec import config as C
from jaxrec.data.splits import EvalView, eval_view, guard_model_input, guard_training_input, train_view, user_split
from jaxrec.errors import LeakageError
from tests.helpers import synthetic_interactions


@pytest.fixture(scope="module")
def data():
    inter = synthetic_interactions(n_users=60, n_items=40, per_user=(14, 30), seed=3)
    return Dataset("", inter, {}, None, user_split(inter, (0.8, 0.1, 0.1), 0), 4.0)


def leaky_train_view(inter, split):
    """What a bug would hand to training: the training rows plus three test rows."""
    return inter.take(np.union1d(split.train, split.test[:3]))


def leaky_view(view: EvalView) -> EvalView:
    """An evaluation view whose visible history also holds two of the rows it is scored on."""
    return dataclasses.replace(view, context=np.union1d(view.context, view.target[:2]))


def test_guards_pass_the_real_pipeline_and_refuse_the_whole_data_set(data):
    train = train_view(data.inter, data.split)
    assert guard_training_input(data.split, train, "x") is train
    np.testing.assert_array_equal(train.sources(), data.split.train)  # provenance survives take()
    np.testing.assert_array_equal(train.take(np.array([0, 2])).sources(), data.split.train[[0, 2]])
    with pytest.raises(LeakageError, match="x: .* val interactions"):
        guard_training_input(data.split, data.inter, "x")  # the whole set holds every held-out row
    view = eval_view(data.inter, data.split, "test", 10)
    guard_model_input(view, view.context, "x")
    with pytest.raises(LeakageError, match="x: 2 evaluation targets"):
        guard_model_input(view, leaky_view(view).context, "x")


def _quick(make_config, quick, *extra):
    return C.apply_overrides(make_config(), list(quick) + list(extra))


@pytest.mark.parametrize("module,make,consumer", [
    (mf_exp, lambda d: mf_exp.make_trainer(_quick(mf_exp.make_config, mf_exp.EXPERIMENT.quick), d), "MF fitting"),
    (ddpg_exp, lambda d: ddpg_exp.make_trainer(_quick(ddpg_exp.make_config, ddpg_exp.EXPERIMENT.quick), d), "MF fitting"),
    (seq_trainer, lambda d: seq_trainer.SequentialTrainer(_quick(seq_configs.m3s_config, seq_configs.QUICK), d), "sequence windows"),
    (pop_exp, lambda d: pop_exp.make_trainer(pop_exp.make_config(), d), "popularity counts"),
])
def test_a_test_row_planted_in_training_data_is_refused(data, monkeypatch, module, make, consumer):
    make(data)  # the real pipeline passes
    monkeypatch.setattr(module, "train_view", leaky_train_view)
    with pytest.raises(LeakageError, match=f"^{consumer}: 3 test interactions"):
        make(data)


@pytest.fixture(scope="module")
def drr(data):
    trainer = ddpg_exp.make_trainer(_quick(ddpg_exp.make_config, ddpg_exp.EXPERIMENT.quick), data)
    return trainer, trainer.init(jax.random.key(0))


def test_drr_simulator_and_pretraining_refuse_planted_rows(data, drr):
    trainer, state = drr
    good = trainer.train_inter
    try:
        trainer.train_inter = leaky_train_view(data.inter, data.split)
        with pytest.raises(LeakageError, match="^simulator: 3 test interactions"):
            trainer._build(state["mf"])
        with pytest.raises(LeakageError, match="^MF fitting: 3 test interactions"):
            trainer.fit_embeddings(jax.random.key(1))
    finally:
        trainer.train_inter = good


def test_evaluation_inputs_refuse_planted_targets(data, drr):
    view = eval_view(data.inter, data.split, "val", 10)
    trainer, state = drr
    trainer.score_fn(state, view)
    with pytest.raises(LeakageError, match="^state and fold-in: 2 evaluation targets"):
        trainer.score_fn(state, leaky_view(view))

    mf_trainer = mf_exp.make_trainer(_quick(mf_exp.make_config, mf_exp.EXPERIMENT.quick), data)
    mf_state = mf_trainer.init(jax.random.key(0))
    mf_trainer.score_fn(mf_state, view)
    with pytest.raises(LeakageError, match="^fold-in: 2 evaluation targets"):
        mf_trainer.score_fn(mf_state, leaky_view(view))
    # drr folds in from the first drr_n_state visible items: with 12 of them, the two planted targets (each
    # user's items 11 and 12) would be in the first user's state.
    drr_trainer = mf_exp.make_trainer(_quick(mf_exp.make_config, mf_exp.EXPERIMENT.quick, "eval.drr_n_state=12"), data)
    drr_trainer.evaluate_drr(mf_state, view, "val")
    with pytest.raises(LeakageError, match="^fold-in: 2 evaluation targets"):
        drr_trainer.evaluate_drr(mf_state, leaky_view(view), "val")

    seq = seq_trainer.SequentialTrainer(_quick(seq_configs.m3s_config, seq_configs.QUICK), data)
    seq_state = seq.init(jax.random.key(0))
    seq.score_fn(seq_state, view)
    with pytest.raises(LeakageError, match="^state windows: 2 evaluation targets"):
        seq.score_fn(seq_state, leaky_view(view))
