"""DDPG for DRR (Liu et al. 2018; Lillicrap et al. 2016), with the whole loop on the device.

One ``TrainingState`` pytree holds everything that changes: actor/critic parameters, their targets and
optimiser states, the replay buffer, a batch of simulator episodes (one per parallel user), the PRNG key
and counters; the hyper-parameters a sweep varies are in it too (``hyper``, ``DDPGConfig.TRACED``).
``make_train(cfg, ...)`` returns pure ``(init, train)`` where ``train(state, n)`` runs ``n`` steps in one
``lax.scan`` (the caller jits it, or vmaps it over seeds or grid points first): each step acts for every
parallel user, steps the simulator, stores the transitions, restarts finished episodes and makes one
batched update (the seed's one update per environment step; ``updates_per_step`` for more). Randomness
is ``fold_in(key, step)``, so any chunking of the steps (and resuming from a checkpoint) gives identical results.

Losses (the seed's, corrected where marked; ids are rows of docs/differences.md):
* critic: importance-weighted MSE to ``y = r + gamma (1 - terminal) Q'(s', mu'(s'))`` (DDPG eq. 4-5);
  ``twin`` uses two critics and the minimum of their targets (TD3's clipped double Q); ``faithful_target``
  reproduces the seed's ``min(Q(s', mu'(s')), Q'(s', mu'(s')))``.
* actor: ``-Q(s, mu(s))`` (deterministic policy gradient at the policy's action; the seed took the
  critic's gradient at the STORED action, drr-actor-grad).
* priorities: ``|delta| + eps`` from the TD error (the seed used the target, drr-per-priority).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Literal

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec.envs import simulator as sim_lib
from jaxrec.nets.drr import Actor, Critic, to_unit
from jaxrec.parallel import no_sharding
from jaxrec.rl import replay as replay_lib
from jaxrec.seeds import traced_values


@dataclasses.dataclass(frozen=True)
class DDPGConfig:
    TRACED: ClassVar[tuple[str, ...]] = ("actor_lr", "critic_lr", "gamma", "tau", "sigma", "epsilon", "epsilon_decay",
                                         "epsilon_min", "per_alpha", "per_beta", "per_beta_increment", "per_eps")
    """Fields read from the training state (``TrainingState.hyper``), not compiled in: configurations that
    differ only in them run as one vmapped program (``jaxrec.seeds``; ``ablate.py`` grids)."""

    dim: int = 100
    """Embedding size of users and items (the seed's ID-only setting)."""
    srm: Literal["ave", "p", "u", "fixed_ave"] = "ave"
    """State representation module: DRR-ave, DRR-p, DRR-u, or the seed's fixed-weight average."""
    n_state: int = 10
    """Items in the state (the seed's state_size)."""
    top_k: int = 10
    """Items recommended per step (rewards summed over them, as the seed's top-k training)."""
    hidden: int = 128
    """Hidden width of actor and critic."""
    actor_lr: float = 1e-4
    """Actor Adam learning rate (the seed's scripts)."""
    critic_lr: float = 1e-4
    """Critic Adam learning rate."""
    gamma: float = 0.9
    """Discount factor."""
    tau: float = 0.001
    """Soft target update rate: target <- tau * online + (1 - tau) * target, every update."""
    batch_size: int = 64
    """Replay minibatch size."""
    n_envs: int = 1
    """Parallel users (simulator episodes) per vectorised environment step; 1 = the seed's loop."""
    updates_per_step: int = 1
    """Gradient updates per vectorised environment step (1 = the seed's one update per step); with many
    parallel users, more updates per step keep the replay ratio (updates per stored transition) higher."""
    replay_capacity: int = 100_000
    """Replay buffer size in transitions."""
    prioritized: bool = True
    """Proportional prioritized replay (Schaul et al. 2016), as the seed."""
    per_alpha: float = 0.6
    """Priority exponent alpha."""
    per_beta: float = 0.4
    """Initial importance-sampling exponent beta."""
    per_beta_increment: float = 1e-5
    """beta += this per update, capped at 1 (the seed's schedule)."""
    per_eps: float = 1e-6
    """Added to |TD error| before the exponent."""
    epsilon: float = 1.0
    """Initial probability of adding exploration noise to an action (the seed's epsilon)."""
    epsilon_decay: float = 1.8e-6
    """epsilon decreases by this per environment step (the seed: 0.9 over 500,000 noisy steps)."""
    epsilon_min: float = 0.0
    """Floor of epsilon."""
    sigma: float = 1.5
    """Standard deviation of the Gaussian exploration noise (the seed; not clipped)."""
    action: Literal["tanh", "unit"] = "tanh"
    """Actor output: tanh (the seed) or unit length, where a noisy action is renormalised to unit length
    too (ranking uses the direction only; sigma is then an angle scale, e.g. 0.1)."""
    twin: bool = False
    """Clipped double Q (TD3): two critics, target = min of the two target critics."""
    faithful_target: bool = False
    """The seed's target min(Q(s', mu'(s')), Q'(s', mu'(s'))) with one critic."""
    unrated_reward: float = -0.5
    """Reward of recommending an item the user did not rate (the seed)."""
    mf_reward: bool = False
    """Reward unrated items with the MF-predicted rating instead (the paper's simulator)."""
    horizon: int = 3000
    """Maximum steps per episode: a time limit, so targets bootstrap through it (see horizon_terminal)."""
    horizon_terminal: bool = False
    """Treat reaching the horizon as a terminal state, no bootstrap (the seed, drr-horizon)."""
    done_at_positives: bool = True
    """End an episode once as many items as the user's positives were recommended (the seed)."""
    init_positives_only: bool = False
    """Initial state from the first positive items only (default: first items of any rating, seed)."""
    faithful_append: bool = False
    """Append every rated hit to the state when any reward is positive (seed) instead of positives only."""

    def validate(self):
        from jaxrec.errors import ConfigError

        if self.n_envs < 1 or self.batch_size < 1 or self.replay_capacity < self.batch_size:
            raise ConfigError("model", "need n_envs >= 1, batch_size >= 1 and replay_capacity >= batch_size")
        if self.updates_per_step < 1:
            raise ConfigError("model.agent.updates_per_step", f"{self.updates_per_step}, expected >= 1")
        if self.twin and self.faithful_target:
            raise ConfigError("model.faithful_target", "cannot be combined with model.twin")

    def sim_config(self, positive_threshold: float) -> sim_lib.SimConfig:
        return sim_lib.SimConfig(n_state=self.n_state, top_k=self.top_k, horizon=self.horizon,
                                 done_at_positives=self.done_at_positives, unrated_reward=self.unrated_reward,
                                 mf_reward=self.mf_reward, positive_threshold=positive_threshold,
                                 faithful_append=self.faithful_append)


@struct.dataclass
class Embeddings:
    """Frozen pretrained representations the agent reads (kept in the state so checkpoints are whole)."""

    user: jax.Array  # [U, d]
    item: jax.Array  # [I, d]: the pluggable item representation (ID embeddings, fused features, ...)


@struct.dataclass
class Transition:
    user: jax.Array  # int32 []
    items: jax.Array  # int32 [N]
    action: jax.Array  # float32 [d]
    reward: jax.Array  # float32 []
    next_items: jax.Array  # int32 [N]
    terminal: jax.Array  # bool []: the episode ended by the environment's rule (not by its time limit)


@struct.dataclass
class TrainingState:
    actor: Any
    critic: Any
    actor_target: Any
    critic_target: Any
    actor_opt: Any
    critic_opt: Any
    replay: Any
    env: sim_lib.EnvState  # batched over n_envs
    emb: Embeddings
    key: jax.Array  # raw uint32 key data (orbax checkpoints arrays, not typed keys)
    step: jax.Array
    updates: jax.Array
    env_steps: jax.Array
    hyper: dict[str, jax.Array]  # DDPGConfig.TRACED -> float32 scalar (per seed / grid point when vmapped)


def networks(cfg: DDPGConfig) -> tuple[Actor, Critic]:
    return (Actor(action_dim=cfg.dim, hidden=cfg.hidden, srm=cfg.srm, action=cfg.action),
            Critic(hidden=cfg.hidden, srm=cfg.srm))


def make_losses(cfg: DDPGConfig):
    """(critic_loss, actor_loss) as pure functions of parameters and a replay batch."""
    actor, critic = networks(cfg)
    q_apply = jax.vmap(critic.apply, in_axes=(0, None, None, None)) if cfg.twin else critic.apply

    def critic_loss(critic_params, critic_target, actor_target, emb: Embeddings, batch: Transition, weights, gamma):
        u = emb.user[batch.user]
        h, h_next = emb.item[batch.items], emb.item[batch.next_items]
        a_next = actor.apply(actor_target, u, h_next)
        q_next = q_apply(critic_target, u, h_next, a_next)
        if cfg.twin:
            q_next = jnp.min(q_next, axis=0)
        elif cfg.faithful_target:
            q_next = jnp.minimum(q_next, critic.apply(critic_params, u, h_next, a_next))
        y = jax.lax.stop_gradient(batch.reward + gamma * (1.0 - batch.terminal) * q_next)
        q = q_apply(critic_params, u, h, batch.action)
        td = y - q  # [B] or [2, B]
        loss = jnp.mean(weights * jnp.square(td)) * (2.0 if cfg.twin else 1.0)
        td_first = td[0] if cfg.twin else td
        return loss, (td_first, jnp.mean(q))

    def actor_loss(actor_params, critic_params, emb: Embeddings, batch: Transition):
        u, h = emb.user[batch.user], emb.item[batch.items]
        a = actor.apply(actor_params, u, h)
        first = jax.tree.map(lambda x: x[0], critic_params) if cfg.twin else critic_params
        return -jnp.mean(critic.apply(first, u, h, a))

    return critic_loss, actor_loss


def soft_update(target, online, tau: float):
    """target <- tau * online + (1 - tau) * target (Lillicrap et al. 2016, section 3)."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def make_optimizer() -> optax.GradientTransformation:
    """Adam without its learning rate (the seed's optimiser for actor and critic): ``update`` multiplies by
    the traced rate of the state, so runs with different rates share one program. ``optax.adam(lr)`` is this
    chain with ``scale(-lr)`` last; the state has the same structure and the update the same bits."""
    return optax.chain(optax.scale_by_adam(), optax.scale(-1.0))


def _step(tx: optax.GradientTransformation, grads, opt_state, params, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, jax.tree.map(lambda u: lr * u, updates)), opt_state


def make_update(cfg: DDPGConfig, shard: Callable = no_sharding):
    """One gradient update from replay: critic, then actor, then targets and priorities. ``shard``
    (``jaxrec.parallel.batch_sharder``) splits the minibatch over devices; the losses' means stay global."""
    critic_loss, actor_loss = make_losses(cfg)
    tx = make_optimizer()

    def update(state: TrainingState, key: jax.Array) -> tuple[TrainingState, dict]:
        hp = state.hyper
        beta = jnp.minimum(1.0, hp["per_beta"] + hp["per_beta_increment"] * state.updates.astype(jnp.float32))
        batch, idx, weights = replay_lib.sample(state.replay, key, cfg.batch_size, beta)
        batch, weights = shard((batch, weights))
        (c_loss, (td, q_mean)), c_grads = jax.value_and_grad(critic_loss, has_aux=True)(
            state.critic, state.critic_target, state.actor_target, state.emb, batch, weights, hp["gamma"])
        critic, critic_opt = _step(tx, c_grads, state.critic_opt, state.critic, hp["critic_lr"])
        a_loss, a_grads = jax.value_and_grad(actor_loss)(state.actor, critic, state.emb, batch)
        actor, actor_opt = _step(tx, a_grads, state.actor_opt, state.actor, hp["actor_lr"])
        replay = state.replay
        if cfg.prioritized:
            replay = replay_lib.update_priorities(replay, idx, td, hp["per_alpha"], hp["per_eps"])
        new = state.replace(
            actor=actor, critic=critic, actor_opt=actor_opt, critic_opt=critic_opt, replay=replay,
            actor_target=soft_update(state.actor_target, actor, hp["tau"]),
            critic_target=soft_update(state.critic_target, critic, hp["tau"]),
            updates=state.updates + 1,
        )
        return new, {"critic_loss": c_loss, "actor_loss": a_loss, "q": q_mean}

    return update


def make_train(cfg: DDPGConfig, sim: sim_lib.SimData, sim_cfg: sim_lib.SimConfig, shard: Callable = no_sharding):
    """``(init, train)``: pure, unjitted functions; callers jit them (one run) or vmap them (seeds).

    ``init(key, emb) -> TrainingState`` takes the frozen representations and keeps them in the state, so
    that a checkpoint alone can score users. ``train(state, n_steps) -> (state, metrics)`` runs ``n_steps``
    (a static int) steps in one ``lax.scan`` of ``make_step``'s step and returns the chunk's mean losses.
    ``sim`` (the logged ratings) is data, closed over. ``shard``: see ``make_step``.
    """
    init, train_step = make_step(cfg, sim, sim_cfg, shard)

    def train(state: TrainingState, n_steps: int):
        state, m = jax.lax.scan(train_step, state, None, length=n_steps)
        n_upd = jnp.maximum(jnp.sum(m["updated"]), 1.0)
        episodes = jnp.sum(m["episodes"])
        summary = {
            "critic_loss": jnp.sum(m["critic_loss"]) / n_upd, "actor_loss": jnp.sum(m["actor_loss"]) / n_upd,
            "q": jnp.sum(m["q"]) / n_upd, "reward": jnp.mean(m["reward"]), "episodes": episodes,
            "episode_return": jnp.where(episodes > 0, jnp.sum(m["episode_return_sum"]) / jnp.maximum(episodes, 1), jnp.nan),
        }
        return state, summary

    return init, train


def make_step(cfg: DDPGConfig, sim: sim_lib.SimData, sim_cfg: sim_lib.SimConfig, shard: Callable = no_sharding):
    """``(init, train_step)``: ``train_step(state, None) -> (state, metrics)`` is one environment step for
    every parallel user plus one update (the scan body of ``make_train``'s ``train``; tests step it alone).
    ``shard`` (``jaxrec.parallel.batch_sharder``) splits the parallel users and the replay minibatch over
    devices (data parallelism); the default keeps everything on one device."""
    actor, critic = networks(cfg)
    update = make_update(cfg, shard)
    tx = make_optimizer()
    n_state, d = cfg.n_state, cfg.dim
    # The simulator's settings are static (they fix shapes and branches): close over them, map the rest.
    v_reset = jax.vmap(lambda sim, users: sim_lib.reset(sim, sim_cfg, users), in_axes=(None, 0))
    v_step = jax.vmap(lambda sim, env, action, item_repr: sim_lib.step(sim, sim_cfg, env, action, item_repr),
                      in_axes=(None, 0, 0, None))
    v_sample_user = jax.vmap(sim_lib.sample_user, in_axes=(None, 0))

    def updates(state: TrainingState, key: jax.Array):
        """``updates_per_step`` updates in a row (their mean losses); one update uses ``key`` itself."""
        if cfg.updates_per_step == 1:
            return update(state, key)
        state, losses = jax.lax.scan(update, state, jax.random.split(key, cfg.updates_per_step))
        return state, jax.tree.map(jnp.mean, losses)

    def init(key: jax.Array, emb: Embeddings) -> TrainingState:
        chex.assert_shape(emb.item, (None, d))
        k_actor, k_critic, k_users, k_run = jax.random.split(key, 4)
        u0, h0, a0 = jnp.zeros(d), jnp.zeros((n_state, d)), jnp.zeros(d)
        actor_params = actor.init(k_actor, u0, h0)
        if cfg.twin:
            critic_params = jax.vmap(lambda k: critic.init(k, u0, h0, a0))(jax.random.split(k_critic, 2))
        else:
            critic_params = critic.init(k_critic, u0, h0, a0)
        example = Transition(user=jnp.int32(0), items=jnp.zeros(n_state, jnp.int32), action=a0,
                             reward=jnp.float32(0), next_items=jnp.zeros(n_state, jnp.int32), terminal=jnp.bool_(False))
        users = v_sample_user(sim, jax.random.split(k_users, cfg.n_envs))
        return TrainingState(
            actor=actor_params, critic=critic_params, actor_target=actor_params, critic_target=critic_params,
            actor_opt=tx.init(actor_params), critic_opt=tx.init(critic_params),
            replay=replay_lib.init(example, cfg.replay_capacity, cfg.prioritized),
            env=v_reset(sim, users), emb=emb, key=jax.random.key_data(k_run),
            step=jnp.int32(0), updates=jnp.int32(0), env_steps=jnp.int32(0), hyper=traced_values(cfg),
        )

    def train_step(state: TrainingState, _):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        k_explore, k_noise, k_users, k_update = jax.random.split(key, 4)
        env = shard(state.env)
        u, h = state.emb.user[env.user], state.emb.item[env.items]
        action = actor.apply(state.actor, u, h)
        # Decays per environment step (the seed: per noisy step of its single user), so n_envs parallel
        # users explore as much per transition as one user does.
        hp = state.hyper
        epsilon = jnp.maximum(hp["epsilon_min"], hp["epsilon"] - hp["epsilon_decay"] * state.env_steps.astype(jnp.float32))
        explore = jax.random.uniform(k_explore, (cfg.n_envs, 1)) < epsilon
        action = action + explore * hp["sigma"] * jax.random.normal(k_noise, action.shape)
        if cfg.action == "unit":
            action = to_unit(action)
        next_env, reward, done, info = v_step(sim, env, action, state.emb.item)
        # A user stopped by the horizon is stored as non-terminal: its target bootstraps from Q(s', mu'(s')).
        terminal = done if cfg.horizon_terminal else info["terminal"]
        replay = replay_lib.add(state.replay, Transition(user=env.user, items=env.items, action=action, reward=reward,
                                                         next_items=next_env.items, terminal=terminal))
        fresh = v_reset(sim, v_sample_user(sim, jax.random.split(k_users, cfg.n_envs)))
        env_after = jax.tree.map(lambda f, n: jnp.where(done.reshape(done.shape + (1,) * (n.ndim - 1)), f, n),
                                 fresh, next_env)
        state = state.replace(env=env_after, replay=replay, step=state.step + 1,
                              env_steps=state.env_steps + cfg.n_envs)
        ready = replay.size >= cfg.batch_size
        zero = {"critic_loss": jnp.float32(0), "actor_loss": jnp.float32(0), "q": jnp.float32(0)}
        state, losses = jax.lax.cond(ready, updates, lambda s, k: (s, zero), state, k_update)
        finished = jnp.sum(done)
        metrics = {**losses, "updated": ready.astype(jnp.float32), "reward": jnp.mean(reward),
                   "episodes": finished.astype(jnp.float32),
                   "episode_return_sum": jnp.sum(jnp.where(done, next_env.ep_return, 0.0))}
        return state, metrics

    return init, train_step


def act(cfg: DDPGConfig, actor_params, user_vecs: jax.Array, item_vecs: jax.Array) -> jax.Array:
    """The deterministic policy's action for [B, d] users and [B, N, d] state items (no noise)."""
    actor, _ = networks(cfg)
    return actor.apply(actor_params, user_vecs, item_vecs)
