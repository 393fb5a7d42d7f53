"""Default and ``--quick`` configurations of the sequential experiments (their training budgets and the
hyperparameters the README's tuning tables chose)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxrec import config as C
from jaxrec.rl.sqn import SQNConfig


@dataclasses.dataclass(frozen=True)
class PopularitySeqConfig:
    window: int = 10
    """Items of history shown per query (unused by the scores; keeps the queries identical)."""
    exclude_seen: bool = True
    """Never rank items the user interacted with before the target."""
    positives_only: bool = False
    """Count only training interactions whose rating/reward reaches the relevance threshold."""
    purchase_events: tuple[str, ...] = ("transaction",)
    """Events sources: event types counted as purchases (the rest are clicks)."""
    eval_events: Literal["all", "click", "purchase"] = "all"
    """Targets the next_item protocol scores: all, click or purchase (events sources)."""
    eval_targets: Literal["all", "relevant"] = "all"
    """Every held-out interaction is a next-item query, or only those reaching data.relevant_threshold."""


def _base(exp: str, model, steps: int, eval_every: int) -> C.Config:
    """Shared settings: the seed's seeded user-level 80/10/10 split (``data.split.scheme=leave_last`` for
    the temporal leave-last-out one), cut-offs 5/10/20/40, selection on validation NDCG@10.

    Training budgets are about 10 minutes per seed on a 2-core CPU for ML-1M (2048 samples per step;
    the ML-1M training part of the user split holds 783k transitions, 382 steps per pass).
    """
    return C.Config(
        exp=exp, model=model, data=C.DataConfig(split=C.SplitConfig(scheme="users")),
        train=C.TrainConfig(steps=steps, eval_every=eval_every, ckpt_every=eval_every, log_every=100),
        eval=C.EvalConfig(protocols=("next_item",), ks=(5, 10, 20, 40), select="ndcg@10", batch_users=512),
    )


def m3s_config() -> C.Config:
    """The seed's method, corrected: n = 6 steps, λ = 0.8, γ = 0.5, SSL, negatives, double Q."""
    return _base("m3s_tdlambda", SQNConfig(), steps=3500, eval_every=500)


def sqn_config() -> C.Config:
    """One-step SQN (Xin et al. 2020): CE + double Q-learning on one-step targets, same weights as m3s."""
    return _base("sqn", SQNConfig(n_steps=1, ssl="none", negatives=0), steps=3500, eval_every=500)


def sasrec_config() -> C.Config:
    """The same transformer encoder trained by cross-entropy only.

    Learning rate and dropout are the best of lr 1e-3 / 3e-3 x dropout 0 / 0.1 / 0.3 on ML-1M validation
    NDCG@10 (README, "Tuning of the supervised baselines")."""
    return _base("sasrec", SQNConfig(sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0, lr=3e-3, dropout=0.1),
                 steps=6000, eval_every=750)


def gru4rec_config() -> C.Config:
    """A GRU over the last items trained by cross-entropy only (GRU4Rec-style).

    Learning rate and dropout are the best of lr 1e-3 / 3e-3 x dropout 0.1 / 0.3, then dropout 0.5 and lr 1e-2
    around the best, on ML-1M validation NDCG@10 (README, "Tuning of the supervised baselines")."""
    return _base("gru4rec", SQNConfig(backbone="gru", sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0,
                                      lr=3e-3, dropout=0.3),
                 steps=6000, eval_every=750)


def popularity_seq_config() -> C.Config:
    return dataclasses.replace(_base("popularity_seq", PopularitySeqConfig(), steps=0, eval_every=1),
                               train=C.TrainConfig(steps=0))


QUICK = ("train.steps=12", "train.eval_every=6", "train.ckpt_every=6", "train.log_every=3", "model.dim=16",
         "model.ff_dim=32", "model.batch_size=64", "model.chunk=4", "eval.batch_users=256")
