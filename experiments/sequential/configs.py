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

    @property
    def state_len(self) -> int:
        """Items of history per query (``SQNConfig.state_len``'s counterpart)."""
        return self.window


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

    Learning rate and dropout were the best of lr 1e-3 / 3e-3 x dropout 0 / 0.1 / 0.3 on ML-1M validation
    NDCG@10 of the earlier user split; on the current one lr 1e-3 is .002 ahead, within single-seed noise
    (README, "Tuning of the supervised baselines")."""
    return _base("sasrec", SQNConfig(sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0, lr=3e-3, dropout=0.1),
                 steps=6000, eval_every=750)


def gru4rec_config() -> C.Config:
    """A GRU over the last items trained by cross-entropy only (GRU4Rec-style).

    Learning rate and dropout were the best of lr 1e-3 / 3e-3 x dropout 0.1 / 0.3, then dropout 0.5 and lr 1e-2
    around the best, on ML-1M validation NDCG@10 of the earlier user split; on the current one lr 1e-2 is .001
    ahead, within single-seed noise (README, "Tuning of the supervised baselines")."""
    return _base("gru4rec", SQNConfig(backbone="gru", sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0,
                                      lr=3e-3, dropout=0.3),
                 steps=6000, eval_every=750)


def popularity_seq_config() -> C.Config:
    return dataclasses.replace(_base("popularity_seq", PopularitySeqConfig(), steps=0, eval_every=1),
                               train=C.TrainConfig(steps=0))


# ----------------------------------------------------------------------------------------------------
# The "plus" family: whole-sequence training at the field's standard protocol (leave-last, full ranking).

SASREC_PLUS = SQNConfig(mode="sequence", max_len=200, layers=2, heads=1, dim=64, ff_dim=64, dropout=0.1,
                        norm="sasrec", embed_scale=True, input_dropout=0.1, block_init_std=0.02, tied_head=True,
                        position_origin="first", lr=1e-3, batch_size=128, micro_batches=1, length_strata=8,
                        sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0)
"""SASRec+ (Klenitskiy & Vasilev, RecSys 2023; their repository antklen/sasrec-bert4rec-recsys23, configs/SASRec.yaml
and run_final.sh for ML-1M): full softmax cross-entropy over all items at every position, the last 200 items
per user (max_length 200), 2 blocks, 1 head, hidden 64, dropout 0.1, Adam lr 1e-3, 128 users per batch.
Feed-forward width 64, SASRec's block (``norm="sasrec"``) with a final LayerNorm, input item embeddings times
sqrt(64) with dropout on the summed input, block kernels N(0, 0.02) and the output layer tied to the item
embeddings are SASRec's (Kang & McAuley 2018, whose point-wise feed-forward keeps the hidden size; K's code,
docs/differences.md#seqplus-head, #seqplus-embedding, #seqplus-block). On ML-1M the input scale and the block
matter: validation NDCG@10 after 235 steps (5 passes, seed 0) was .048 with pre-norm blocks and unscaled
inputs, .087 with the scale, .105 with the scale and SASRec's block, .109 with the N(0, 0.02) kernels too.
Positions count from each row's first item (``position_origin="first"``, K's right-padded rows): a training
position then sees the positions an evaluation state of the same items has; counted from the row's end they
tell every position how many items follow it. Validation NDCG@10 at steps 470/705/940/1,175 (seed 0) .136/.146/
.152/.154 against .128/.137/.144/.146 (mean of 3 seeds, spread <= .004) counted from the end: about 1.5x fewer
steps to the same value (docs/differences.md#seqplus-positions).
``length_strata=8``: each step draws 16 users from each eighth of the users sorted by history length, every
eighth padded only to its longest row (ML-1M widths
32/48/64/96/136/200/200/200 instead of 200: 1.6x fewer slots; the same chance per user as uniform draws,
docs/differences.md#seqplus-sampling); each stratum is one gradient slice, so at most [16 x 199 x 3,706] logits
(47 MB) live at once, well within the 2 GB budget."""


def _plus_base(exp: str, model: SQNConfig, steps: int, eval_every: int) -> C.Config:
    """The standard protocol: per-user leave-last-out (each user's last item is the test target, the one before
    it validation; ``data.split.scheme=leave_last``, n_val = n_test = 1), full ranking over every item with the
    user's seen items excluded, cut-offs 5/10/20/40, selection on validation NDCG@10. A step is one batch of
    user sequences (6,040 ML-1M users: 47 steps per pass at 128)."""
    return C.Config(
        exp=exp, model=model, data=C.DataConfig(split=C.SplitConfig(scheme="leave_last", n_val=1, n_test=1)),
        train=C.TrainConfig(steps=steps, eval_every=eval_every, ckpt_every=eval_every, log_every=50),
        eval=C.EvalConfig(protocols=("next_item",), ks=(5, 10, 20, 40), select="ndcg@10", batch_users=256),
    )


def sasrec_plus_config() -> C.Config:
    """SASRec+ (see ``SASREC_PLUS``); 4,700 steps = the paper's budget of at most 100 passes over the users."""
    return _plus_base("sasrec_plus", SASREC_PLUS, steps=4700, eval_every=235)


def gru4rec_plus_config() -> C.Config:
    """A GRU over the same whole sequences with the same full cross-entropy (the paper's RNN config: one GRU
    layer, input and hidden 64, lr 1e-3, batch 128, max_length 200, output tied to the unscaled item table: no
    ``embed_scale``). K's ``dropout: 0.1`` is PyTorch's between-layer GRU dropout, a no-op with one layer; ours
    drops 0.1 of the input embeddings and of the states. Untuned."""
    model = dataclasses.replace(SASREC_PLUS, backbone="gru", embed_scale=False)
    return _plus_base("gru4rec_plus", model, steps=4700, eval_every=235)


def sqn_plus_config() -> C.Config:
    """SQN's one-step double Q-learning on the SASRec+ backbone: Q heads at every position, the repository's SQN
    weights (0.8 CE + 0.2 TD, γ 0.5, two Q heads, Polyak 0.01)."""
    model = dataclasses.replace(SASREC_PLUS, sup_weight=0.8, q_weight=0.2, n_steps=1)
    return _plus_base("sqn_plus", model, steps=4700, eval_every=235)


def m3s_plus_config() -> C.Config:
    """M3S on the SASRec+ backbone: λ-returns over n = 6 steps along the sequence (λ 0.8, γ 0.5), the multi-step
    self-supervision (future states), 10 negatives per position, double Q with two heads; m3s_tdlambda's weights."""
    model = dataclasses.replace(SASREC_PLUS, sup_weight=0.8, q_weight=0.2, n_steps=6, lam=0.8, ssl="future_states",
                                ssl_weight=0.2, negatives=10)
    return _plus_base("m3s_plus", model, steps=4700, eval_every=235)


QUICK_PLUS = ("train.steps=12", "train.eval_every=6", "train.ckpt_every=6", "train.log_every=3", "model.dim=16",
              "model.ff_dim=16", "model.max_len=20", "model.batch_size=16",
              "eval.batch_users=256")


QUICK = ("train.steps=12", "train.eval_every=6", "train.ckpt_every=6", "train.log_every=3", "model.dim=16",
         "model.ff_dim=32", "model.batch_size=64", "model.chunk=4", "eval.batch_users=256")
