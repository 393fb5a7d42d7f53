"""``mf``: the pretrained matrix factorisation (``jaxrec.embed.mf``) used directly as a recommender.

The same embeddings DRR starts from, scored by eq. (1) of ``jaxrec.embed.mf`` in the same harness,
split and metric code as ``popularity`` and the RL agents: the floor an agent built on these embeddings
has to beat. Fitting sees the training part only (``train_view``). One harness step is one epoch, so
``metrics.jsonl`` holds the loss curve, checkpoints land between epochs and validation picks the epoch.

Users the fit never saw (scheme ``users``, or bce users without a training positive) are folded in from
their visible history (``EvalView.context``) with the item side frozen; ``drr`` folds every user in from
its ``eval.drr_n_state`` state items only, since that protocol gives the agent nothing else. Like every
experiment, ``drr`` follows ``eval.drr_n_state``, ``eval.drr_ks`` and ``eval.drr_ideal``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.trainer import Evaluator, Experiment, StandardEvaluation
from jaxrec import config as C
from jaxrec import parallel
from jaxrec import seeds as seeds_lib
from jaxrec.data.splits import EvalView, guard_model_input, guard_training_input, train_view
from jaxrec.embed import mf
from jaxrec.embed.mf import MFConfig
from jaxrec.errors import ConfigError
from jaxrec.eval.protocols import drr_protocol, state_rows

class MFTrainer(StandardEvaluation):
    def __init__(self, cfg: C.Config, data):
        if cfg.model.epochs != cfg.train.steps:
            raise ConfigError("model.epochs", f"the {cfg.exp} experiment trains one epoch per step: model.epochs "
                                              f"({cfg.model.epochs}) and train.steps ({cfg.train.steps}) must be equal")
        self.cfg = cfg
        self.seed_mesh = parallel.make_mesh(cfg.train.seed_devices, "train.seed_devices")
        threshold = cfg.model.positive_threshold
        threshold = data.relevant_threshold if threshold is None else threshold
        self.model = self.resolve_model(dataclasses.replace(cfg.model, positive_threshold=threshold))
        self.inter, self.split, self.relevant_threshold = data.inter, data.split, data.relevant_threshold
        train = guard_training_input(data.split, train_view(data.inter, data.split), "MF fitting")
        self.data = mf.prepare_data(train.user, train.item, train.rating, data.inter.n_users, data.inter.n_items,
                                    self.model, data.item_pool())
        self.trained = np.asarray(self.data.trained)
        self._train_many = seeds_lib.vmap_train(self._train_one, n_shared=len(self.epoch_inputs()),
                                                static_steps=False, mesh=self.seed_mesh)

    def resolve_model(self, model) -> MFConfig:
        """The ``MFConfig`` of the fitted parameters (data preparation and fold-in read it)."""
        return model

    def init(self, key):
        k_init, k_train = jax.random.split(key)
        params = mf.init_params(k_init, self.data, self.inter.n_users, self.model)
        return {"params": params, "opt": mf.make_optimizer(self.model).init(params),
                "key": jax.random.key_data(k_train), "epoch": jnp.int32(0)}

    def epoch_inputs(self) -> tuple:
        """The arrays ``epochs`` trains on (arguments of the compiled program, not constants baked into it)."""
        return (self.data,)

    def epochs(self, params, opt, key, first_epoch, n_epochs, data):
        """``(params, opt, mean loss)`` after epochs ``first_epoch ..`` (the model's own ``train_epochs``)."""
        return mf.train_epochs(params, opt, key, first_epoch, n_epochs, data, self.model)

    def train(self, state, n_steps):
        params, opt, loss = self.epochs(state["params"], state["opt"], jax.random.wrap_key_data(state["key"]),
                                        state["epoch"], n_steps, *self.epoch_inputs())
        return {**state, "params": params, "opt": opt, "epoch": state["epoch"] + n_steps}, {"loss": float(loss)}

    def can_train_seeds(self) -> bool:
        return True

    def _train_one(self, state, *args):
        """One seed's ``train`` as a pure function of its state, the ``epoch_inputs`` and the epoch count (what
        ``train_seeds`` vmaps; the inputs are arguments, shared by the seeds, not constants baked into it)."""
        *inputs, n_epochs = args
        params, opt, loss = self.epochs(state["params"], state["opt"], jax.random.wrap_key_data(state["key"]),
                                        state["epoch"], n_epochs, *inputs)
        return {**state, "params": params, "opt": opt, "epoch": state["epoch"] + n_epochs}, {"loss": loss}

    def train_seeds(self, states, n_steps):
        """``train`` of stacked seed states as one vmapped program (``jaxrec.seeds``); metrics are [S]."""
        return self._train_many(states, *self.epoch_inputs(), jnp.int32(n_steps))

    def folded_params(self, params: mf.MFParams, users: np.ndarray, rows: np.ndarray, refit_all: bool) -> mf.MFParams:
        """``params`` with the rows of ``users`` replaced by their fold-in from ``rows`` (visible rows only).

        ``refit_all`` False keeps fitted users' own vectors and folds in only users the fit never saw.
        """
        users = np.asarray(users)
        if not refit_all:
            users = users[~self.trained[users]]
        if len(users) == 0:
            return params
        items, mask, ratings = mf.pad_histories(self.inter.user[rows], self.inter.item[rows], self.inter.rating[rows], users)
        # User batches padded to a multiple of 128 and histories to a power-of-two width (padding = empty
        # histories, masked slots): views and protocols share a few compilations at little extra work.
        size = min(self.cfg.eval.batch_users, -(-len(users) // 128) * 128)
        pad = ((0, -len(users) % size), (0, _pow2(items.shape[1]) - items.shape[1]))
        items, mask, ratings = np.pad(items, pad), np.pad(mask, pad), np.pad(ratings, pad)
        vecs, biases = [], []
        for start in range(0, len(items), size):
            v, b = mf.fold_in_users(params, items[start:start + size], mask[start:start + size],
                                    ratings[start:start + size], self.model)
            vecs.append(v)
            biases.append(b)
        vecs = jnp.concatenate(vecs)[:len(users)]
        biases = jnp.concatenate(biases)[:len(users)]
        return params.replace(user=params.user.at[users].set(vecs), user_bias=params.user_bias.at[users].set(biases))

    def score_fn(self, state, view: EvalView):
        rows = guard_model_input(view, view.context, "fold-in")
        params = self.folded_params(state["params"], view.users, rows, refit_all=False)
        return lambda users, context: mf.score(params, users)

    def evaluators(self) -> dict[str, Evaluator]:
        return {"drr": self.evaluate_drr}

    def evaluate_drr(self, state, view: EvalView, part: str, on_batch=None):
        """``drr`` with each user folded in from their state items only (what the protocol shows the model)."""
        del part
        heldout, ev = self.split.heldout_users, self.cfg.eval
        sv = state_rows(self.inter, view, ev.drr_n_state, heldout)
        rows = guard_model_input(view, sv.context, "fold-in")
        params = self.folded_params(state["params"], sv.users, rows, refit_all=True)
        return drr_protocol(lambda users, context: mf.score(params, users), self.inter, view, self.relevant_threshold,
                            ev.drr_n_state, heldout, ev.drr_ks, ev.drr_ideal, ev.batch_users, on_batch)

    def counters(self, state):
        return {"env_steps": 0, "updates": int(state["epoch"]) * self.data.steps_per_epoch}


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def make_config() -> C.Config:
    model = MFConfig()
    return C.Config(
        exp="mf",
        data=C.drr_family_data(),
        train=C.TrainConfig(steps=model.epochs, eval_every=2, ckpt_every=2, log_every=1),
        eval=C.EvalConfig(protocols=("full", "drr"), ks=(5, 10, 20)),
        model=model,
    )


def make_trainer(cfg, data):
    return MFTrainer(cfg, data)


EXPERIMENT = Experiment(
    name="mf",
    description="pretrained matrix factorisation (bce = DRR seed embeddings, or mse) as a recommender; "
                "held-out users folded in; full and drr protocols",
    make_config=make_config,
    make_trainer=make_trainer,
    quick=("model.dim=16", "model.epochs=3", "train.steps=3", "train.eval_every=1", "train.ckpt_every=1",
           "model.batch=256", "eval.batch_users=256"),
    protocols=("full", "drr", "cold_start"),
)
