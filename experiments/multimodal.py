"""``mf_multimodal`` and ``ddpg_multimodal``: DRR over multimodal item embeddings (the seed's main job).

The embedding model is ``jaxrec.embed.multimodal`` (eq. (6): user = [ID ; multimodal], item = [ID ;
fused features], 64 + 64 as the seed), fitted on the training part only with the same objective, leak
guard and held-out-user fold-in as ``mf``. Item features come from a features directory written by
``data_prep/extract_features.py`` (``--features DIR``; ``jaxrec.features`` refuses one made for other
data); modalities, fusion and pooling are ``model[.embed].modalities|fusion|pool``.

* ``mf_multimodal``: the fitted embedding model used directly as a recommender: the reference row that
  tells whether the RL policy adds anything on top of its features.
* ``ddpg_multimodal``: ``ddpg_id`` with this item tower instead of ID embeddings. The fusion runs once,
  after pretraining; the simulator, state module, actor and critic are unchanged, so the two experiments
  differ only in the item tower (and the embedding width, 128 as the seed's multimodal scripts).

Held-out cold-start items (``data.split.cold_items``) keep their features, so these models can rank them
(protocol ``cold_start``), where ID-only models cannot do better than chance.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from experiments import ddpg as ddpg_exp
from experiments import embed_stage
from experiments import mf as mf_exp
from experiments.trainer import Experiment
from jaxrec import config as C
from jaxrec.embed import mf
from jaxrec.embed import multimodal as mm
from jaxrec.embed.multimodal import MMConfig
from jaxrec.errors import ConfigError
from jaxrec.features import load_features
from jaxrec.rl.ddpg import DDPGConfig


def load_item_features(cfg: C.Config, mm_cfg: MMConfig) -> mm.ItemFeatures:
    """The configured modalities of ``data.features`` as device arrays (checked against ``data.path``)."""
    if not cfg.data.features:
        raise ConfigError("--features", "this experiment needs item features: run data_prep/extract_features.py "
                                        "--data DATA --modality text --model tfidf-svd:64 --out FEATURES, then pass "
                                        "--features FEATURES")
    feats = load_features(cfg.data.features, cfg.data.path, list(mm_cfg.modalities) or None)
    mm.check_dims(mm_cfg, len(feats.names))
    return mm.make_item_features([feats.arrays[n] for n in feats.names], [feats.masks[n] for n in feats.names],
                                 mm_cfg.normalize)


class MMTrainer(mf_exp.MFTrainer):
    """``mf`` with the multimodal embedding model: one harness step is one epoch of eq. (6)."""

    def resolve_model(self, model: MMConfig) -> mf.MFConfig:
        self.mm = model
        self.features = load_item_features(self.cfg, model)
        return model.mf_view()

    def init(self, key):
        k_init, k_train = jax.random.split(key)
        params = mm.init_params(k_init, self.data, self.features, self.inter.n_users, self.mm)
        return {"params": params, "opt": mm.make_optimizer(self.mm).init(params),
                "key": jax.random.key_data(k_train), "epoch": jnp.int32(0)}

    def epoch_inputs(self) -> tuple:
        return (self.data, self.features)

    def epochs(self, params, opt, key, first_epoch, n_epochs, data, features):
        return mm.train_epochs(params, opt, key, first_epoch, n_epochs, data, features, self.mm)

    def fitted(self, state) -> dict:
        """The state as ``mf`` scores it: ``{"params": MFParams}`` with the catalogue fused once."""
        return {"params": mm.to_mf_params(state["params"], self.features, self.data, self.mm)}

    def score_fn(self, state, view):
        return super().score_fn(self.fitted(state), view)

    def evaluate_drr(self, state, view, part, on_batch=None):
        return super().evaluate_drr(self.fitted(state), view, part, on_batch)


@dataclasses.dataclass(frozen=True)
class MMDRREmbedConfig(ddpg_exp.EmbedSeed, MMConfig):
    """``MMConfig`` plus ``seed`` (model.embed.* of ddpg_multimodal)."""


@dataclasses.dataclass(frozen=True)
class MMDRRConfig:
    agent: DDPGConfig = dataclasses.field(default_factory=lambda: DDPGConfig(dim=128))
    """DDPG agent, simulator and replay settings (model.agent.*); dim = the embedding width (seed: 128)."""
    embed: MMDRREmbedConfig = dataclasses.field(default_factory=MMDRREmbedConfig)
    """Multimodal embedding pretraining (model.embed.*); dim + mm_dim must equal model.agent.dim."""

    def validate(self):
        if self.embed.total_dim != self.agent.dim:
            raise ConfigError("model.agent.dim", f"{self.agent.dim} != model.embed.dim + model.embed.mm_dim "
                                                 f"({self.embed.total_dim}): the agent acts in the embedding space")


class MMDRRTrainer(ddpg_exp.DRRTrainer):
    """``ddpg_id`` whose embeddings come from eq. (6) instead of ID-only MF."""

    def mf_config(self, embed: MMConfig) -> mf.MFConfig:
        self.mm = embed
        self.features = load_item_features(self.cfg, embed)
        return embed.mf_view()

    embed_fitter = "jaxrec.embed.multimodal.fit"

    def embed_settings(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self.mm).items() if k != "seed"}

    def embedding_deps(self, key) -> dict:
        """``ddpg_id``'s deps plus the identity of the item features the fusion reads."""
        return {**super().embedding_deps(key),
                "features_sha256": embed_stage.digest(*self.features.feats, self.features.present)}

    def fit_embeddings(self, key) -> mf.MFParams:
        with self.bars.bar(self.mm.epochs, "pretrain embeddings", unit="epoch") as bar:
            return mm.fit(key, self.mf_data, self.features, self.data.inter.n_users, self.mm,
                          on_epoch=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))


def mf_multimodal_config() -> C.Config:
    cfg = mf_exp.make_config()
    model = MMConfig()
    return dataclasses.replace(cfg, exp="mf_multimodal", model=model,
                               train=C.TrainConfig(steps=model.epochs, eval_every=2, ckpt_every=2, log_every=1))


def ddpg_multimodal_config() -> C.Config:
    return dataclasses.replace(ddpg_exp.make_config(), exp="ddpg_multimodal", model=MMDRRConfig())


EXPERIMENTS = (
    Experiment(
        name="mf_multimodal",
        description="the multimodal embedding model ([ID ; fused item features], 64 + 64) as a recommender; "
                    "the reference row for ddpg_multimodal (needs --features)",
        make_config=mf_multimodal_config,
        make_trainer=MMTrainer,
        quick=("model.dim=8", "model.mm_dim=8", "model.epochs=3", "train.steps=3", "train.eval_every=1",
               "train.ckpt_every=1", "model.batch=256", "eval.batch_users=256"),
        protocols=("full", "drr", "cold_start"),
    ),
    Experiment(
        name="ddpg_multimodal",
        description="multimodal DRR: DDPG over the offline simulator with items = [ID ; fused ViT/AST/BERT or "
                    "weight-free features] (the seed's main job; needs --features)",
        make_config=ddpg_multimodal_config,
        make_trainer=MMDRRTrainer,
        quick=("train.steps=300", "train.eval_every=150", "train.ckpt_every=150", "train.log_every=50",
               "model.embed.epochs=2", "model.agent.replay_capacity=2000", "model.agent.dim=16", "model.embed.dim=8",
               "model.embed.mm_dim=8", "model.agent.hidden=32"),
        protocols=("drr", "full", "cold_start"),
        data_parallel=True,
    ),
)
