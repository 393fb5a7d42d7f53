"""``ddpg_id``: DRR (Liu et al. 2018) trained by DDPG over the offline simulator, ID embeddings.

Pipeline, all on the training part only (``train_view``):
  1. MF pretraining of user/item embeddings (``jaxrec.embed.mf``, the seed's bce recipe, dim 100), a stage
     of its own: fitted once and saved in the run directory (``embeddings/``, experiments/embed_stage.py),
     then loaded by a resume (whose checkpoint template needs an initial state), by recommend.py and by
     any seed fitting with the same key. The key is ``split(key)[0]`` of the training seed's key, so each
     seed has its own embeddings, unless ``model.embed.seed`` = S: then every seed uses seed S's fit;
  2. a simulator replaying the training users' ratings (``jaxrec.envs.simulator``);
  3. DDPG with prioritized replay (``jaxrec.rl.ddpg``); the loop runs in jitted ``lax.scan`` chunks.
Evaluation: protocol ``drr`` (the seed's one-step top-10 from each held-out user's first 10 items) and
``full`` (rank every item outside the visible history). A user the MF fit never saw (held-out users)
gets its vector by fold-in from the items the protocol shows (the state items for ``drr``, the visible
history for ``full``); its targets are never seen.

The harness state is ``{"agent": ddpg.TrainingState, "mf": MFParams}``: one pytree, so checkpoints hold
everything needed to recommend (``experiments/recommend.py``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import embed_stage
from experiments.progress import Bars
from experiments.trainer import Experiment, StandardEvaluation
from jaxrec import config as C
from jaxrec import parallel
from jaxrec import seeds as seeds_lib
from jaxrec.data.splits import EvalView, guard_model_input, guard_training_input, train_view
from jaxrec.embed import mf
from jaxrec.embed.mf import MFConfig
from jaxrec.envs import simulator as sim_lib
from jaxrec.rl import ddpg
from jaxrec.rl.ddpg import DDPGConfig


@dataclasses.dataclass(frozen=True)
class EmbedSeed:
    """The ``seed`` of a DRR trainer's embedding config (mixed into its ``MFConfig`` or ``MMConfig``)."""

    seed: int | None = None
    """PRNG seed of the embedding pretraining: none = every training seed fits its own embeddings (key
    split(key(seed))[0]); an int S = one fit shared by every seed of the run, the one training seed S
    fits (the paper's fixed pretrained embeddings)."""


@dataclasses.dataclass(frozen=True)
class DRREmbedConfig(EmbedSeed, MFConfig):
    """``MFConfig`` plus ``seed`` (model.embed.* of ddpg_id)."""


@dataclasses.dataclass(frozen=True)
class DRRConfig:
    agent: DDPGConfig = dataclasses.field(default_factory=DDPGConfig)
    """DDPG agent, simulator and replay settings (model.agent.*)."""
    embed: DRREmbedConfig = dataclasses.field(default_factory=DRREmbedConfig)
    """Embedding pretraining (model.embed.*); its dim must equal model.agent.dim."""
    def validate(self):
        from jaxrec.errors import ConfigError

        if self.embed.dim != self.agent.dim:
            raise ConfigError("model.embed.dim", f"{self.embed.dim} != model.agent.dim {self.agent.dim}")


class DRRTrainer(StandardEvaluation):
    def __init__(self, cfg: C.Config, data):
        self.cfg, self.data = cfg, data
        self.agent_cfg = cfg.model.agent
        if cfg.eval.drr_n_state != self.agent_cfg.n_state:
            from jaxrec.errors import ConfigError

            raise ConfigError("eval.drr_n_state", f"{cfg.eval.drr_n_state} must equal model.agent.n_state "
                                                  f"{self.agent_cfg.n_state}: the drr state is the agent's state")
        threshold = cfg.model.embed.positive_threshold
        self.embed_cfg = self.mf_config(dataclasses.replace(
            cfg.model.embed, positive_threshold=data.relevant_threshold if threshold is None else threshold))
        train = guard_training_input(data.split, train_view(data.inter, data.split), "MF fitting")
        self.train_inter = train
        self.mf_data = mf.prepare_data(train.user, train.item, train.rating, data.inter.n_users,
                                       data.inter.n_items, self.embed_cfg, data.item_pool())
        self.fitted = np.asarray(self.mf_data.trained)
        self.sim_cfg = self.agent_cfg.sim_config(data.relevant_threshold)
        self.heldout = data.split.heldout_users
        # Data parallelism: the parallel users and the replay minibatch split over the devices.
        self.mesh = parallel.make_mesh(cfg.devices)
        self.seed_mesh = parallel.make_mesh(cfg.train.seed_devices, "train.seed_devices")
        parallel.check_divisible("model.agent.n_envs", self.agent_cfg.n_envs, self.mesh)
        parallel.check_divisible("model.agent.batch_size", self.agent_cfg.batch_size, self.mesh)
        self._init = self._train = self._train_many = None
        self.bars = Bars(quiet=True)
        """Progress bars for embedding pretraining (the harness sets its own)."""
        self.stage_dir: Path | None = None
        """Run root whose ``embeddings/`` holds the fitted embeddings (experiments/embed_stage.py; the
        harness sets it); None fits them without saving."""

    def _build(self, params: mf.MFParams):
        """The simulator and the jitted training functions. They depend on the fitted embeddings only through
        MF-predicted rewards (``mf_reward``); otherwise they are built once and shared by every seed."""
        # The simulator's logged ratings are all the agent (and so its replay) ever sees of users: checked on
        # every call, also when the built functions are reused.
        train = guard_training_input(self.data.split, self.train_inter, "simulator")
        if self._train is not None and not self.agent_cfg.mf_reward:
            return
        mf_arrays = None
        if self.agent_cfg.mf_reward:
            if self.embed_cfg.objective != "mse":
                from jaxrec.errors import ConfigError

                raise ConfigError("model.agent.mf_reward", "needs model.embed.objective=mse (a rating model)")
            mf_arrays = (np.asarray(params.user), np.asarray(params.item),
                         np.concatenate([np.asarray(params.user_bias), np.asarray(params.item_bias),
                                         [float(params.offset)]]).astype(np.float32))
        sim = sim_lib.make_sim_data(train, self.sim_cfg, self.agent_cfg.init_positives_only, mf_arrays,
                                    blocked=self.data.split.cold_items)
        init, train_fn = ddpg.make_train(self.agent_cfg, sim, self.sim_cfg, parallel.batch_sharder(self.mesh))
        pinned = parallel.replicated(self.mesh)
        self._init = jax.jit(init)
        self._train = jax.jit(train_fn, static_argnums=1, donate_argnums=0, out_shardings=pinned)
        self._train_many = seeds_lib.vmap_train(train_fn, out_shardings=pinned, mesh=self.seed_mesh)

    embed_fitter = "jaxrec.embed.mf.fit_mf"
    """The function ``fit_embeddings`` calls (part of the stage's deps: another model is another fit)."""

    def mf_config(self, embed) -> MFConfig:
        """The ``MFConfig`` of the fitted embeddings (fold-in and data preparation read it)."""
        return MFConfig(**{f.name: getattr(embed, f.name) for f in dataclasses.fields(MFConfig)})

    def embed_settings(self) -> dict:
        """The resolved embedding config the fit reads (``seed`` aside: the key stands for it)."""
        return dataclasses.asdict(self.embed_cfg)

    def embedding_deps(self, key) -> dict:
        """Everything the fitted embeddings depend on, as JSON (the stage's entry identity)."""
        train, inter = self.train_inter, self.data.inter
        pool = self.data.item_pool()
        return {
            "format": embed_stage.FORMAT, "fit": self.embed_fitter, "embed": self.embed_settings(),
            "split": dataclasses.asdict(self.cfg.data.split),
            "data": {"name": self.data.meta.get("name"), "n_users": inter.n_users, "n_items": inter.n_items,
                     "train_rows": len(train.user),
                     "train_sha256": embed_stage.digest(train.user, train.item, train.rating,
                                                        np.arange(inter.n_items) if pool is None else pool)},
            "key": {"impl": str(jax.random.key_impl(key)), "data": np.asarray(jax.random.key_data(key)).tolist()},
        }

    def embedding_key(self, key) -> jax.Array:
        """The key of the embedding fit: the training seed's own (split(key)[0], as before the stage existed),
        or, with ``model.embed.seed`` = S, the one training seed S uses (one fit for all seeds)."""
        seed = self.cfg.model.embed.seed
        return jax.random.split(key if seed is None else jax.random.key(seed))[0]

    def embeddings(self, key) -> mf.MFParams:
        """The embeddings fitted with ``key``: the run's saved stage when it holds them, else fitted now and
        saved there (bit-identical either way, so a run's numbers do not depend on which happened)."""
        if self.stage_dir is None:
            return self.fit_embeddings(key)
        template = jax.eval_shape(lambda k: mf.init_params(k, self.mf_data, self.data.inter.n_users, self.embed_cfg), key)
        return embed_stage.load_or_fit(Path(self.stage_dir) / embed_stage.STAGE, self.embedding_deps(key), template,
                                       lambda: self.fit_embeddings(key))

    def fit_embeddings(self, key) -> mf.MFParams:
        """User and item embeddings pretrained on the training part (the item tower DRR acts on)."""
        train = guard_training_input(self.data.split, self.train_inter, "MF fitting")
        with self.bars.bar(self.embed_cfg.epochs, "pretrain embeddings", unit="epoch") as bar:
            return mf.fit_mf(key, train.user, train.item, train.rating, self.data.inter.n_users,
                             self.data.inter.n_items, self.embed_cfg, self.data.item_pool(),
                             on_epoch=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))

    def init(self, key):
        _, k_agent = jax.random.split(key)
        params = self.embeddings(self.embedding_key(key))
        self._build(params)
        emb = ddpg.Embeddings(user=params.user, item=params.item)
        return parallel.replicate({"agent": self._init(k_agent, emb), "mf": params}, self.mesh)

    def train(self, state, n_steps):
        agent, metrics = self._train(state["agent"], n_steps)
        return {"agent": agent, "mf": state["mf"]}, {k: float(v) for k, v in metrics.items()}

    def can_train_seeds(self) -> bool:
        """Seeds share one simulator unless each seed's own MF predicts its simulator's rewards."""
        return not (self.agent_cfg.mf_reward and self.cfg.model.embed.seed is None)

    def with_hyper(self, state, cfg: C.Config):
        """``state`` holding the traced hyper-parameters of ``cfg`` (``DDPGConfig.TRACED``): a run whose config
        differs from this trainer's only in those shares its compiled program (``C.program_key``)."""
        return {**state, "agent": state["agent"].replace(hyper=parallel.replicate(seeds_lib.traced_values(cfg.model.agent), self.mesh))}

    def train_seeds(self, states, n_steps):
        """``train`` of stacked seed states as one vmapped program (``jaxrec.seeds``); metrics are [S]."""
        agent, metrics = self._train_many(states["agent"], n_steps)
        return {"agent": agent, "mf": states["mf"]}, metrics

    def counters(self, state):
        return {"env_steps": int(state["agent"].env_steps), "updates": int(state["agent"].updates)}

    # ------------------------------------------------------------------------------------------------
    # Evaluation

    def _actions(self, state, view: EvalView) -> tuple[np.ndarray, jax.Array]:
        """(users, actions [len(users), d]) from each user's state items in ``view.context``.

        The state is the last ``n_state`` visible items (held-out users' ``view`` already holds just
        their first ones for ``drr``); a shorter history is left-padded with its earliest item.
        """
        inter, n = self.data.inter, self.agent_cfg.n_state
        ctx, users = guard_model_input(view, view.context, "state and fold-in"), view.users
        cu = inter.user[ctx]
        first = np.searchsorted(cu, cu)
        count = np.bincount(cu, minlength=inter.n_users)
        from_end = count[cu] - 1 - (np.arange(len(ctx)) - first)
        slot = np.searchsorted(users, cu)
        table = np.zeros((len(users), n), np.int32)
        has = count[users] > 0
        earliest = np.zeros(inter.n_users, np.int32)
        ctx_users, first_row = np.unique(cu, return_index=True)
        earliest[ctx_users] = inter.item[ctx][first_row]
        table[:] = earliest[users][:, None]
        keep = (from_end < n) & np.isin(cu, users)
        table[slot[keep], n - 1 - from_end[keep]] = inter.item[ctx][keep]
        params: mf.MFParams = state["mf"]
        user_vecs = np.asarray(params.user)[users].copy()
        refit = ~self.fitted[users] & has
        if refit.any():
            items, mask, ratings = mf.pad_histories(cu, inter.item[ctx], inter.rating[ctx], users[refit])
            vecs, _ = mf.fold_in_users(params, items, mask, ratings, self.embed_cfg)
            user_vecs[refit] = np.asarray(vecs)
        agent = state["agent"]
        actions = ddpg.act(self.agent_cfg, agent.actor, jnp.asarray(user_vecs), agent.emb.item[jnp.asarray(table)])
        return users, actions

    def score_fn(self, state, view: EvalView):
        users, actions = self._actions(state, view)
        item = state["agent"].emb.item

        def score(batch_users, context):
            return _scores(actions[jnp.asarray(np.searchsorted(users, batch_users))], item)

        return score

@jax.jit
def _scores(actions, item):
    """Scores of every item for each user's action: <item_repr_i, a> (the simulator's ranking rule)."""
    return actions @ item.T


def make_config() -> C.Config:
    return C.Config(
        exp="ddpg_id",
        data=C.drr_family_data(),
        train=C.TrainConfig(steps=100_000, eval_every=10_000, ckpt_every=10_000, log_every=1_000),
        eval=C.EvalConfig(protocols=("drr", "full"), ks=(5, 10, 20), select="ndcg@10"),
        model=DRRConfig(),
    )


def make_trainer(cfg, data):
    return DRRTrainer(cfg, data)


EXPERIMENT = Experiment(
    name="ddpg_id",
    description="DRR: DDPG over the offline simulator with pretrained ID embeddings (the seed's ML-1M setting)",
    make_config=make_config,
    make_trainer=make_trainer,
    quick=("train.steps=300", "train.eval_every=150", "train.ckpt_every=150", "train.log_every=50",
           "model.embed.epochs=2", "model.embed.batch=256", "model.agent.replay_capacity=2000", "model.agent.dim=16", "model.embed.dim=16",
           "model.agent.hidden=32"),
    protocols=("drr", "full", "cold_start"),
    data_parallel=True,
)
