"""``popularity``: recommend the items with the most training interactions to everyone.

The non-personalised floor every learned recommender must beat, computed on the training part only
and evaluated by exactly the same metric code as the RL agents. Its defaults are the DRR family's
(``jaxrec.config.drr_family_data``, protocols drr and full); ``popularity_seq`` is the sequential floor.
"""
from __future__ import annotations

import dataclasses


from experiments.trainer import StandardEvaluation
from jaxrec import config as C
from jaxrec.baselines import broadcast_scores, popularity_scores
from jaxrec.data.splits import guard_training_input, train_view


@dataclasses.dataclass(frozen=True)
class PopularityConfig:
    positives_only: bool = False
    """Count only training interactions whose rating/reward reaches the relevance threshold."""


class PopularityTrainer(StandardEvaluation):
    def __init__(self, cfg: C.Config, data):
        self.train_inter = guard_training_input(data.split, train_view(data.inter, data.split), "popularity counts")
        self.min_rating = data.relevant_threshold if cfg.model.positives_only else None

    def init(self, key):
        del key  # deterministic: nothing is sampled
        return {"item_scores": popularity_scores(self.train_inter, self.min_rating)}

    def train(self, state, n_steps):
        return state, {}

    def score_fn(self, state, view):
        item_scores = state["item_scores"]
        return lambda users, context: broadcast_scores(item_scores, context)

    def counters(self, state):
        return {"env_steps": 0, "updates": 0}


def make_config() -> C.Config:
    # A floor baseline follows the split, relevance and protocols of the family it is the floor of (the DRR
    # family here; ``popularity_seq`` is the sequential one), so its row and theirs compare by default.
    return C.Config(exp="popularity", data=C.drr_family_data(), train=C.TrainConfig(steps=0),
                    eval=C.EvalConfig(protocols=("drr", "full"), ks=(5, 10, 20)), model=PopularityConfig())


def make_trainer(cfg, data):
    return PopularityTrainer(cfg, data)
