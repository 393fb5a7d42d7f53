"""Offline user simulator of DRR (Liu et al. 2018, section 4.2), as pure functions over a state pytree.

The simulator replays logged ratings: recommending an item the user rated yields a reward from that
rating, anything else a fixed penalty (the seed) or the MF-predicted rating (the paper's simulator).
``reset`` and ``step`` act on ONE user; a batch of users is a ``jax.vmap`` at the call site that closes
over the static ``SimConfig`` and maps the ``EnvState``. The rules follow the seed (docs/differences.md, DRR table) with its bugs fixed:

* reset: the state is the first ``n_state`` items of the user's visible history (any rating, as the
  seed; ``positives`` only by option); those items count as already recommended.
* step: an action ``a`` scores every item by ``<item_repr_i, a>``; the best ``k`` items not yet
  recommended are recommended, in DESCENDING score order (the seed used ascending order, drr-topk-order).
* reward per item: (rating - 3) / 2 if the user rated it, else ``unrated_reward`` (-0.5, seed) or the
  MF-predicted rating mapped the same way; the step's reward is the sum over the k items (seed).
* state update: positively rewarded items are appended (most relevant first) and the same number of
  oldest items dropped. ``faithful`` appends every rated hit when any reward is positive (seed).
* terminal: once the user's number of positives has been recommended (seed: ``len(recommended) >=
  #positives``, with the off-by-one user index fixed, drr-done-index), or when fewer than ``k`` candidates
  remain. The episode also stops after ``horizon`` steps, but that is a truncation, not a terminal state
  (``info["terminal"]`` tells them apart; the seed treated both as terminal, drr-horizon).
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrec.data.interactions import Interactions


@struct.dataclass
class SimData:
    """Per-user logged data the simulator replays (device arrays, built by ``make_sim_data``)."""

    rating2: jax.Array  # [U, I] int8: 2 * rating (half stars fit), 0 = not rated
    init_items: jax.Array  # [U, N] int32: first N items of the visible history
    n_pos: jax.Array  # [U] int32: number of positives (rating >= threshold)
    available: jax.Array  # [U] bool: users an episode may start from
    mf_user: jax.Array  # [U, d'] user factors for MF-predicted rewards ([U, 0] when unused)
    mf_item: jax.Array  # [I, d'] item factors
    mf_bias: jax.Array  # [U + I + 1]: user biases, item biases, global mean (zeros when unused)
    blocked: jax.Array  # [I] bool: items that do not exist at training time (held-out cold-start items)


@struct.dataclass
class EnvState:
    """One user's episode."""

    user: jax.Array  # int32 []
    items: jax.Array  # int32 [N]: the state items, oldest first
    recommended: jax.Array  # bool [I]
    n_recommended: jax.Array  # int32 []
    t: jax.Array  # int32 []: steps taken
    done: jax.Array  # bool []
    ep_return: jax.Array  # float32 []: return so far (for logging)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Simulator settings. They fix shapes and branches, so jitted code closes over them (static)."""

    n_state: int = 10
    """Items in the state (the user's last N positively rated items)."""
    top_k: int = 10
    """Items recommended per step."""
    horizon: int = 3000
    """Steps before an episode is cut (a time limit: info["terminal"] stays false there)."""
    done_at_positives: bool = True
    """The seed's done rule: the episode ends once the user has been shown as many items as they rated
    positively (a terminal state)."""
    unrated_reward: float = -0.5
    """Reward of an item the user never rated (when ``mf_reward`` is off)."""
    mf_reward: bool = False
    """Reward unrated items by the pretrained MF's predicted rating instead of ``unrated_reward``."""
    positive_threshold: float = 4.0
    """Ratings at or above it are positives (they enter the state)."""
    faithful_append: bool = False
    """The seed's state update: append every rated hit of the step when any reward is positive (jaxrec
    appends the positively rewarded items only)."""


def make_sim_data(train: Interactions, cfg: SimConfig, init_positives_only: bool = False,
                  mf: tuple | None = None, blocked: np.ndarray | None = None) -> SimData:
    """Builds ``SimData`` from training interactions (vectorised numpy; no loop over users).

    ``mf`` = (user factors [U, d], item factors [I, d], biases [U + I + 1]) for MF-predicted rewards.
    ``blocked`` = item ids that can never be recommended in training (items held out for cold start:
    they do not exist yet, so recommending them must not even be penalised).
    """
    u, i, r = train.user, train.item, train.rating
    if train.n_users * train.n_items > 400_000_000:
        raise ValueError(f"dense rating table of {train.n_users} x {train.n_items} is too large for the simulator")
    rating2 = np.zeros((train.n_users, train.n_items), np.int8)
    rating2[u, i] = np.clip(np.round(2 * r), 1, 127).astype(np.int8)
    pos = r >= cfg.positive_threshold
    n_pos = np.bincount(u[pos], minlength=train.n_users).astype(np.int32)
    eligible = pos if init_positives_only else np.ones(len(u), bool)
    # Rank of each eligible row within its user (rows are sorted by (user, order)).
    uu = u[eligible]
    rank = np.arange(len(uu)) - np.searchsorted(uu, uu)
    first = rank < cfg.n_state
    init = np.zeros((train.n_users, cfg.n_state), np.int32)
    init[uu[first], rank[first]] = i[eligible][first]
    n_init = np.bincount(uu[first], minlength=train.n_users)
    # The seed's "available" users: more positives than state items, so an episode has something to find.
    available = (n_init == cfg.n_state) & (n_pos > cfg.n_state)
    if mf is None:
        mf = (np.zeros((train.n_users, 0), np.float32), np.zeros((train.n_items, 0), np.float32),
              np.zeros(train.n_users + train.n_items + 1, np.float32))
    block = np.zeros(train.n_items, bool)
    if blocked is not None:
        block[np.asarray(blocked, np.int64)] = True
    return SimData(rating2=jnp.asarray(rating2), init_items=jnp.asarray(init), n_pos=jnp.asarray(n_pos),
                   available=jnp.asarray(available), mf_user=jnp.asarray(mf[0]), mf_item=jnp.asarray(mf[1]),
                   mf_bias=jnp.asarray(mf[2]), blocked=jnp.asarray(block))


def sample_user(sim: SimData, key: jax.Array) -> jax.Array:
    """A uniformly random available user."""
    p = sim.available.astype(jnp.float32)
    return jax.random.choice(key, sim.available.shape[0], p=p / p.sum()).astype(jnp.int32)


def reset(sim: SimData, cfg: SimConfig, user: jax.Array) -> EnvState:
    items = sim.init_items[user]
    recommended = sim.blocked.at[items].set(True)
    return EnvState(user=jnp.asarray(user, jnp.int32), items=items, recommended=recommended,
                    n_recommended=jnp.int32(cfg.n_state), t=jnp.int32(0), done=jnp.bool_(False),
                    ep_return=jnp.float32(0.0))


def item_rewards(sim: SimData, cfg: SimConfig, user: jax.Array, items: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(reward [k], rated [k]) for recommending ``items`` to ``user`` (all assumed new)."""
    rating = sim.rating2[user, items].astype(jnp.float32) / 2.0
    rated = rating > 0
    if cfg.mf_reward:
        n_users = sim.mf_user.shape[0]
        pred = (sim.mf_item[items] @ sim.mf_user[user] + sim.mf_bias[user] + sim.mf_bias[n_users + items]
                + sim.mf_bias[-1])
        unrated = (jnp.clip(pred, 1.0, 5.0) - 3.0) / 2.0
    else:
        unrated = jnp.full(items.shape, cfg.unrated_reward, jnp.float32)
    return jnp.where(rated, (rating - 3.0) / 2.0, unrated), rated


def append_items(items: jax.Array, new: jax.Array, keep: jax.Array) -> jax.Array:
    """The last N entries of ``concat(items, new[keep])`` (order preserved), without dynamic shapes."""
    chex.assert_rank([items, new, keep], 1)
    n = items.shape[0]
    allv = jnp.concatenate([items, new])
    kept = jnp.concatenate([jnp.ones(n, bool), keep])
    pos = jnp.cumsum(kept) - 1  # position among kept entries
    target = pos - (jnp.sum(kept) - n)  # shift so the newest kept entry lands at n - 1
    target = jnp.where(kept & (target >= 0), target, n)  # n is out of range: dropped
    return jnp.zeros(n, items.dtype).at[target].set(allv, mode="drop")


def step(sim: SimData, cfg: SimConfig, state: EnvState, action: jax.Array, item_repr: jax.Array):
    """One recommendation. Returns ``(new_state, reward, done, info)``.

    ``done``: the episode is over (reset the user). ``info["terminal"]``: it ended by the environment's
    rule rather than the horizon; only then is the next state's value zero. ``info`` also has the k items
    and their rewards.
    """
    chex.assert_rank(action, 1)
    scores = item_repr @ action
    scores = jnp.where(state.recommended, -jnp.inf, scores)
    _, items = jax.lax.top_k(scores, cfg.top_k)  # descending score order
    rewards, rated = item_rewards(sim, cfg, state.user, items)
    positive = rewards > 0
    keep = (rated & jnp.any(positive)) if cfg.faithful_append else positive
    new_items = append_items(state.items, items, keep)
    recommended = state.recommended.at[items].set(True)
    n_rec = state.n_recommended + cfg.top_k
    t = state.t + 1
    # Terminal: the episode's own end (every positive recommended, the seed's rule; or no k candidates
    # left). The horizon is a time limit, a truncation: the episode stops but its value does not end
    # there, so learners bootstrap through it (Pardo et al. 2018, "Time Limits in RL").
    terminal = n_rec + cfg.top_k > sim.rating2.shape[1] - jnp.sum(sim.blocked)
    if cfg.done_at_positives:
        terminal |= n_rec >= sim.n_pos[state.user]
    done = terminal | (t >= cfg.horizon)
    reward = jnp.sum(rewards)
    new_state = EnvState(user=state.user, items=new_items, recommended=recommended, n_recommended=n_rec, t=t,
                         done=done, ep_return=state.ep_return + reward)
    return new_state, reward, done, {"items": items, "rewards": rewards, "terminal": terminal}
