"""Baseline for ``benchmarks/ddpg_throughput.py``: the DRR/DDPG training loop written the seed's way, in PyTorch eager.

  python benchmarks/baselines/ddpg_torch.py [--data DIR] [--steps N] [--seed S]

What it is
----------
A seed-style (https://github.com/MinwooPark96/ddpgRLRS; simulator and DDPG as in docs/differences.md)
PyTorch eager implementation of the SAME algorithm,
sizes and simulator rules as ``jaxrec.rl.ddpg`` at its ``DDPGConfig`` defaults, so that the benchmark
compares two implementations of one computation, not two algorithms:

* one Python iteration per environment step, one user at a time (the seed's ``DRRAgent.train`` loop):
  act, step the simulator, store the transition, and (once ``batch_size`` transitions are stored) one
  batch-64 update, then restart the episode if it ended;
* networks (``DDPGConfig`` defaults): DRR-ave state module with LEARNED position weights (initialised to
  1/N), ``s = [u, u*g, g]`` (3 x 100); actor 300 -> 128 ReLU -> 128 ReLU -> 100 tanh; critic
  s 300 -> 100 ReLU, concat [a, s] -> 128 ReLU -> 128 ReLU -> 1; actor and critic each own their state
  module; Flax's initialisation (LeCun truncated-normal kernels, zero biases); Adam 1e-4 / 1e-4;
* DDPG: ``y = r + 0.9 (1 - done) Q'(s', mu'(s'))``; critic loss = mean(w * (y - Q(s, a))^2); actor loss
  ``-mean Q(s, mu(s))`` through the just-updated critic; soft target updates with tau = 0.001 after every
  update;
* prioritized replay with a pure-Python sum tree (as the seed): alpha 0.6, beta = min(1, 0.4 + 1e-5 *
  updates), stratified sampling (one uniform draw per equal segment of the mass), weights
  ``(p_i / min_batch p)^-beta``, new transitions get the max priority, priorities ``(|TD error| + 1e-6)^0.6``;
  capacity 100,000;
* exploration: with probability epsilon = max(0, 1 - 1.8e-6 * step) add N(0, 1.5^2) noise to the action
  (unclipped; the noisy action is what is stored);
* simulator (numpy, per-user ``{item: rating}`` dicts as the seed's ``OfflineEnv``): reset to a random
  available user (> 10 positives and >= 10 rated items) with the first 10 items of the history (any
  rating) as state and as already recommended; step: score every item by ``<item_emb, a>``, skip the
  recommended ones, recommend the top 10 in descending score order; reward per item (rating - 3) / 2 if
  rated, else -0.5, summed; positively rewarded items are appended (oldest dropped); done after 3000
  steps, once #recommended (state items included) >= #positives, or when fewer than 10 candidates remain.

How it differs from the seed's code (deliberately, so that the algorithm is the one ``jaxrec`` runs)
------------------------------------------------------------------------------------------------
* The seed's bugs fixed as in jaxrec (rows of docs/differences.md): priorities from the TD error (not the
  target) and alpha applied once (drr-per-priority); per-sample IS weights (no B x B broadcast,
  drr-is-weights); actor gradient at mu(s), not at the stored action (drr-actor-grad); top-k in
  descending order (drr-topk-order); done uses the right user's count (drr-done-index).
* The state module is learned (jaxrec's default ``srm="ave"``) instead of the seed's fixed weights, so
  the replay stores (user, item ids, action, reward, next item ids, done) and the networks gather the
  embeddings and compute the state inside the update (as jaxrec does), instead of storing precomputed
  300-d states. Target: plain DDPG target critic (the seed used min(Q, Q')). Updates start once
  ``batch_size`` transitions are stored (the seed: once 2 are). epsilon decays per step (seed: per noisy step).
* ``style="lean"`` (default): no artificial slowness, and none of the seed's avoidable overheads: acting and scoring run under
  ``torch.no_grad``; the recommended set is a boolean mask and candidates are scored with one
  ``[I, d] @ [d]`` product, masked to -inf and ``torch.topk`` (the seed rebuilt ``set(range(n_items)) -
  recommended`` into an id array and argsorted every step); the sum tree is a Python list (faster than
  the seed's numpy-scalar indexing); the actor's backward pass computes only the actor's gradients
  (``backward(inputs=...)``); soft updates are one in-place multi-tensor ``lerp``; Adam is torch's fused
  CPU implementation (``fused=True``: same update rule, 3x faster here than the default per-parameter
  loop); no printing, logging, wandb or plotting inside the loop.
* ``style="seed"`` (``SeedStyleEnv``, ``NumpyTreeReplay``, ``SeedStyleAgent``) puts the seed's per-step code
  structure back, still computing the same numbers (tests check it against ``style="lean"``): candidates rebuilt
  every step as ``np.array(list(set(range(n_items)) - recommended_items))``, scored by ``item_emb[candidates] @ a``
  and fully argsorted (``recommender.py:171-191``); acting with autograd on; the sum tree a numpy array read and
  written one scalar at a time (``tree.py``); TD targets in a Python loop over the batch (``calculate_td_target``);
  priorities updated one sample at a time (``recommender.py:316-317``); the critic's action gradient by a
  separate forward/backward through the critic (``critic.py:dq_da``, which also fills the critic's parameter
  gradients) and the actor trained on ``-(mu(s) . dQ/da)`` by another actor forward (``actor.py:train``; here at
  mu(s) and summed over the action, so the gradient is the DPG one); torch's default Adam; soft updates as a
  Python loop of ``copy_(tau * p + (1 - tau) * t)`` per parameter (``update_target_network``). Not reproduced:
  its per-step ``print`` and its TensorFlow multimodal path. ``benchmarks/ddpg_throughput.py`` reports ours
  against this style (the issue's "seed-style" loop) and against the lean one.
* Threads: ``build(num_threads=2)`` calls ``torch.set_num_threads(2)`` by default (this CPU's 2 cores, as
  many as jax may use). On a machine shared with other jobs, 2 OpenMP threads can be 10-100x slower than 1
  for these small ops (a thread waits at every op for its descheduled partner), so
  ``benchmarks/ddpg_throughput.py`` times 1 and 2 threads and keeps the faster (``--torch-threads``).

Prints one line ``{"env_steps", "updates", "seconds", "env_steps_per_s"}`` when run as a script.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]

# The DDPGConfig defaults of jaxrec.rl.ddpg (checked against it by tests/test_ddpg_baseline.py).
DEFAULTS = dict(dim=100, n_state=10, top_k=10, hidden=128, actor_lr=1e-4, critic_lr=1e-4, gamma=0.9, tau=0.001,
                batch_size=64, replay_capacity=100_000, per_alpha=0.6, per_beta=0.4, per_beta_increment=1e-5,
                per_eps=1e-6, epsilon=1.0, epsilon_decay=1.8e-6, epsilon_min=0.0, sigma=1.5, unrated_reward=-0.5,
                horizon=3000)


# ----------------------------------------------------------------------------------------------------
# Simulator


class OfflineEnv:
    """The DRR offline simulator (seed ``src/envs.py``, rules of ``jaxrec.envs.simulator``), one user at a time.

    ``user_items[u]`` is the seed's ``{item: rating}`` dict of user ``u``'s logged ratings; ``init_items[u]`` the
    first ``n_state`` items of the history; ``n_pos[u]`` the number of ratings >= ``positive_threshold``.
    """

    def __init__(self, user, item, rating, n_users: int, n_items: int, item_emb: torch.Tensor, n_state=10, top_k=10,
                 horizon=3000, unrated_reward=-0.5, positive_threshold=4.0, seed=0):
        user, item, rating = np.asarray(user), np.asarray(item), np.asarray(rating, np.float64)
        self.n_items, self.n_state, self.top_k = n_items, n_state, top_k
        self.horizon, self.unrated_reward = horizon, unrated_reward
        self.item_emb = item_emb
        # Rows are sorted by (user, order): each user's rows are one contiguous, chronological run.
        starts = np.searchsorted(user, np.arange(n_users + 1))
        self.user_items, self.init_items = [], []
        for u in range(n_users):
            lo, hi = starts[u], starts[u + 1]
            self.user_items.append(dict(zip(item[lo:hi].tolist(), rating[lo:hi].tolist())))
            self.init_items.append(item[lo:min(hi, lo + n_state)].tolist())
        self.n_pos = np.bincount(user[rating >= positive_threshold], minlength=n_users)
        self.available = np.array([u for u in range(n_users)
                                   if len(self.init_items[u]) == n_state and self.n_pos[u] > n_state])
        self.rng = np.random.default_rng(seed)
        self.recommended = torch.zeros(n_items, dtype=torch.bool)  # the seed's recommended_items set, as a mask
        self.reset()

    def reset(self, user: int | None = None):
        self.user = int(self.rng.choice(self.available)) if user is None else int(user)
        self.user_ratings = self.user_items[self.user]
        self.items = list(self.init_items[self.user])
        self.recommended.zero_()
        self.recommended[self.items] = True
        self.n_recommended = self.n_state
        self.t = 0
        self.done = False
        return self.user, self.items, self.done

    @torch.no_grad()
    def recommend(self, action: torch.Tensor) -> list[int]:
        """The ``top_k`` best not-yet-recommended items for ``action`` [d], best first."""
        scores = torch.mv(self.item_emb, action).masked_fill_(self.recommended, -math.inf)
        return torch.topk(scores, self.top_k).indices.tolist()

    def step(self, action: torch.Tensor):
        """``(next_items, reward, done, recommended_items)`` for one top-k recommendation."""
        recs = self.recommend(action)
        reward, hits = 0.0, []
        for i in recs:
            r = self.user_ratings.get(i)
            if r is None:
                reward += self.unrated_reward
            else:
                reward += (r - 3.0) / 2.0
                if r > 3.0:
                    hits.append(i)
        if hits:
            self.items = (self.items + hits)[-self.n_state:]
        self.recommended[recs] = True
        self.n_recommended += self.top_k
        self.t += 1
        self.done = (self.t >= self.horizon or self.n_recommended >= self.n_pos[self.user]
                     or self.n_recommended + self.top_k > self.n_items)
        return self.items, reward, self.done, recs


# ----------------------------------------------------------------------------------------------------
# Prioritized replay


class PrioritizedReplay:
    """Proportional PER over a pure-Python sum tree (the seed's ``PriorityExperienceReplay`` + ``SumTree``)."""

    def __init__(self, capacity: int, n_state: int, dim: int, alpha=0.6, eps=1e-6, seed=0):
        self.capacity, self.alpha, self.eps = capacity, alpha, eps
        self.user = np.zeros(capacity, np.int64)
        self.items = np.zeros((capacity, n_state), np.int64)
        self.action = np.zeros((capacity, dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_items = np.zeros((capacity, n_state), np.int64)
        self.done = np.zeros(capacity, np.float32)
        self.leaf0 = 1 << (capacity - 1).bit_length()  # slot i is node leaf0 + i; node n has children 2n, 2n+1
        self.tree = [0.0] * (2 * self.leaf0)
        self.ptr = self.size = 0
        self.max_priority = 1.0  # in p ** alpha units
        self.random = random.Random(seed)

    def _set(self, slot: int, p: float):
        tree = self.tree
        node = self.leaf0 + slot
        tree[node] = p
        node >>= 1
        while node:
            tree[node] = tree[2 * node] + tree[2 * node + 1]
            node >>= 1

    def add(self, user, items, action, reward, next_items, done):
        i = self.ptr
        self.user[i], self.items[i], self.action[i] = user, items, action
        self.reward[i], self.next_items[i], self.done[i] = reward, next_items, done
        self._set(i, self.max_priority)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, beta: float):
        """(slots [B], IS weights [B]): one draw in each of ``batch_size`` equal segments of the mass."""
        tree, leaf0, uniform = self.tree, self.leaf0, self.random.random
        segment = tree[1] / batch_size
        slots = []
        for j in range(batch_size):
            u = (j + uniform()) * segment
            node = 1
            while node < leaf0:
                left = tree[2 * node]
                if u >= left and tree[2 * node + 1] > 0:  # never walk into an empty subtree (float edge)
                    u -= left
                    node = 2 * node + 1
                else:
                    node = 2 * node
            slots.append(min(node - leaf0, self.size - 1))
        p = np.array([tree[leaf0 + s] for s in slots])
        weights = (p / p.min()) ** -beta  # (N P(i))^-beta / max over the batch
        return np.array(slots), weights.astype(np.float32)

    def update_priorities(self, slots, td_errors):
        p = (np.abs(td_errors) + self.eps) ** self.alpha
        for s, v in zip(slots.tolist(), p.tolist()):
            self._set(s, v)
        self.max_priority = max(self.max_priority, float(p.max()))


# ----------------------------------------------------------------------------------------------------
# Networks (jaxrec.nets.drr, srm="ave")


def _flax_init_(layer: nn.Linear):
    """Flax Dense's default init: LeCun normal (truncated at 2 std, variance-corrected) kernel, zero bias."""
    std = math.sqrt(1.0 / layer.in_features) / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return layer


class StateRepr(nn.Module):
    """DRR-ave with learned position weights: g = sum_l w_l h_l, s = [u, u * g, g]."""

    def __init__(self, n_state: int):
        super().__init__()
        self.position_weights = nn.Parameter(torch.full((n_state,), 1.0 / n_state))

    def forward(self, user, items):  # [..., d], [..., N, d]
        g = torch.matmul(self.position_weights, items)
        return torch.cat([user, user * g, g], dim=-1)


class Actor(nn.Module):
    def __init__(self, dim: int, hidden: int, n_state: int):
        super().__init__()
        self.srm = StateRepr(n_state)
        self.fc = nn.Sequential(_flax_init_(nn.Linear(3 * dim, hidden)), nn.ReLU(),
                                _flax_init_(nn.Linear(hidden, hidden)), nn.ReLU(),
                                _flax_init_(nn.Linear(hidden, dim)), nn.Tanh())

    def forward(self, user, items):
        return self.fc(self.srm(user, items))


class Critic(nn.Module):
    def __init__(self, dim: int, hidden: int, n_state: int):
        super().__init__()
        self.srm = StateRepr(n_state)
        self.fc1 = _flax_init_(nn.Linear(3 * dim, dim))
        self.fc2 = _flax_init_(nn.Linear(2 * dim, hidden))
        self.fc3 = _flax_init_(nn.Linear(hidden, hidden))
        self.head = _flax_init_(nn.Linear(hidden, 1))

    def forward(self, user, items, action):
        s = torch.relu(self.fc1(self.srm(user, items)))
        x = torch.cat([action, s], dim=-1)
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.head(x)[..., 0]


# ----------------------------------------------------------------------------------------------------
# Agent and loop


class DDPGAgent:
    """The seed's ``DRRAgent`` (ID embeddings, top-k training), restricted to what one training step does."""

    replay_cls = PrioritizedReplay
    fused_adam: bool | None = True  # torch's fused CPU Adam: the same update rule, 3x faster here than the default loop

    def __init__(self, env: OfflineEnv, user_emb: torch.Tensor, item_emb: torch.Tensor, seed=0, **overrides):
        c = {**DEFAULTS, **overrides}
        self.c = c
        self.env, self.user_emb, self.item_emb = env, user_emb, item_emb
        torch.manual_seed(seed)
        self.actor = Actor(c["dim"], c["hidden"], c["n_state"])
        self.critic = Critic(c["dim"], c["hidden"], c["n_state"])
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for p in (*self.actor_target.parameters(), *self.critic_target.parameters()):
            p.requires_grad_(False)
        self.actor_params = list(self.actor.parameters())
        # Online/target parameter lists for the soft update (one multi-tensor lerp per step).
        self.online = [*self.actor_params, *self.critic.parameters()]
        self.targets = [*self.actor_target.parameters(), *self.critic_target.parameters()]
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=c["actor_lr"], fused=self.fused_adam)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c["critic_lr"], fused=self.fused_adam)
        self.buffer = self.replay_cls(c["replay_capacity"], c["n_state"], c["dim"], c["per_alpha"], c["per_eps"], seed)
        self.random = random.Random(seed + 1)
        self.noise = torch.Generator().manual_seed(seed + 2)
        self.steps = self.updates = self.episodes = 0

    @torch.no_grad()
    def act(self, user: int, items: list[int]) -> torch.Tensor:
        """The policy's action [d] for one user's state, without exploration."""
        return self.actor(self.user_emb[user], self.item_emb[items])

    def step(self):
        """One environment step: act (with exploration), simulate, store, update once, restart if done."""
        c, env = self.c, self.env
        user, items = env.user, env.items
        action = self.act(user, items)
        epsilon = max(c["epsilon_min"], c["epsilon"] - c["epsilon_decay"] * self.steps)
        if self.random.random() < epsilon:
            action = action + c["sigma"] * torch.randn(action.shape, generator=self.noise)
        next_items, reward, done, _ = env.step(action.detach())
        self.buffer.add(user, items, action.detach().numpy(), reward, next_items, done)
        if self.buffer.size >= c["batch_size"]:
            self.update()
        if done:
            env.reset()
            self.episodes += 1
        self.steps += 1
        return reward, done

    def update(self, slots=None, weights=None):
        """One batch update from replay (``slots``/``weights`` given: use them instead of sampling; for tests)."""
        c, buf = self.c, self.buffer
        if slots is None:
            beta = min(1.0, c["per_beta"] + c["per_beta_increment"] * self.updates)
            slots, weights = buf.sample(c["batch_size"], beta)
        user = self.user_emb[torch.from_numpy(buf.user[slots])]
        h = self.item_emb[torch.from_numpy(buf.items[slots])]
        h_next = self.item_emb[torch.from_numpy(buf.next_items[slots])]
        action = torch.from_numpy(buf.action[slots])
        reward, done = torch.from_numpy(buf.reward[slots]), torch.from_numpy(buf.done[slots])
        weights = torch.as_tensor(weights)
        with torch.no_grad():
            q_next = self.critic_target(user, h_next, self.actor_target(user, h_next))
            y = reward + c["gamma"] * (1.0 - done) * q_next
        td = y - self.critic(user, h, action)
        critic_loss = torch.mean(weights * td.square())
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(user, h, self.actor(user, h)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward(inputs=self.actor_params)  # the critic's parameter gradients are not needed
        self.actor_opt.step()
        buf.update_priorities(slots, td.detach().numpy())
        with torch.no_grad():  # target <- target + tau (online - target)
            torch._foreach_lerp_(self.targets, self.online, c["tau"])
        self.updates += 1
        return critic_loss.item(), actor_loss.item()

    def run(self, n_steps: int):
        for _ in range(n_steps):
            self.step()



# ----------------------------------------------------------------------------------------------------
# The seed's per-step code structure (style="seed"): same computation, the seed's idioms


class SeedStyleEnv(OfflineEnv):
    """``OfflineEnv`` recommending as the seed does: a Python set of recommended ids, the candidate id array
    rebuilt from it every step, every candidate scored and argsorted (``recommender.py:171-191``, in descending
    order: drr-topk-order fixed)."""

    def reset(self, user: int | None = None):
        out = super().reset(user)
        self.recommended_items = set(self.items)
        return out

    @torch.no_grad()
    def recommend(self, action: torch.Tensor) -> list[int]:
        items_ids = np.array(list(set(i for i in range(self.n_items)) - self.recommended_items))
        scores = torch.matmul(self.item_emb[torch.tensor(items_ids, dtype=torch.long)], action[:, None]).squeeze(1)
        best = torch.argsort(scores, descending=True, stable=True)[:self.top_k]
        return items_ids[best.numpy()].tolist()

    def step(self, action: torch.Tensor):
        out = super().step(action)
        self.recommended_items.update(out[3])
        return out


class NumpyTreeReplay(PrioritizedReplay):
    """The same replay with the seed's numpy sum tree (one numpy scalar read or write per node visit)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tree = np.zeros(2 * self.leaf0)

    def update_priority(self, slot: int, priority: float):
        """The seed's ``update_priority``: one sample at a time, the exponent applied per call."""
        p = priority ** self.alpha
        self._set(slot, p)
        self.max_priority = max(self.max_priority, p)


class SeedStyleAgent(DDPGAgent):
    """``DDPGAgent`` written with the seed's per-step idioms (see the module docstring, ``style="seed"``)."""

    replay_cls = NumpyTreeReplay
    fused_adam = None  # the seed's optim.Adam(params, lr): torch's default implementation

    def __init__(self, env: OfflineEnv, user_emb: torch.Tensor, item_emb: torch.Tensor, seed=0, **overrides):
        super().__init__(env, user_emb, item_emb, seed=seed, **overrides)
        self.user_embedding = torch.nn.Embedding.from_pretrained(user_emb)
        self.item_embedding = torch.nn.Embedding.from_pretrained(item_emb)

    def act(self, user: int, items: list[int]) -> torch.Tensor:
        """As the seed: embedding lookups through numpy, autograd on (``recommender.py`` train loop)."""
        user_eb = self.user_embedding(torch.tensor([user], dtype=torch.long)).detach().numpy()
        items_eb = self.item_embedding(torch.tensor(items, dtype=torch.long)).detach().numpy()
        return self.actor(torch.tensor(user_eb[0], dtype=torch.float32), torch.tensor(items_eb, dtype=torch.float32))

    def calculate_td_target(self, rewards, q_values, dones):
        y_t = np.copy(q_values)
        for i in range(q_values.shape[0]):
            y_t[i] = rewards[i] + (1 - dones[i]) * (self.c["gamma"] * q_values[i])
        return y_t

    def update(self, slots=None, weights=None):
        c, buf = self.c, self.buffer
        if slots is None:
            beta = min(1.0, c["per_beta"] + c["per_beta_increment"] * self.updates)
            slots, weights = buf.sample(c["batch_size"], beta)
        user = self.user_embedding(torch.from_numpy(buf.user[slots]))
        h = self.item_embedding(torch.from_numpy(buf.items[slots]))
        h_next = self.item_embedding(torch.from_numpy(buf.next_items[slots]))
        action = torch.from_numpy(buf.action[slots])
        q_next = self.critic_target(user, h_next, self.actor_target(user, h_next))
        y = torch.tensor(self.calculate_td_target(buf.reward[slots], q_next.detach().numpy(), buf.done[slots]))
        # Critic (critic.py:train): weighted squared TD error.
        self.critic_opt.zero_grad()
        q = self.critic(user, h, action)
        critic_loss = (torch.nn.functional.mse_loss(q, y, reduction="none") * torch.tensor(weights)).mean()
        critic_loss.backward()
        self.critic_opt.step()
        td = (y - q).detach().numpy()
        for s, t in zip(slots.tolist(), td.tolist()):
            buf.update_priority(s, abs(t) + buf.eps)
        # Actor (critic.py:dq_da, then actor.py:train), at mu(s).
        actions = self.actor(user, h).detach().requires_grad_(True)
        q_pi = self.critic(user, h, actions)
        q_pi.backward(torch.ones_like(q_pi))
        dq_das = actions.grad
        self.actor_opt.zero_grad()
        outputs = self.actor(user, h)
        (-(outputs * dq_das).sum(-1).mean()).backward()
        self.actor_opt.step()
        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for target_param, param in zip(target.parameters(), net.parameters()):
                target_param.data.copy_(c["tau"] * param.data + (1 - c["tau"]) * target_param.data)
        self.updates += 1
        return critic_loss.item(), -q_pi.mean().item()


STYLES = ("lean", "seed")


def build(user, item, rating, n_users, n_items, user_emb: np.ndarray, item_emb: np.ndarray, seed=0,
          positive_threshold=4.0, num_threads: int | None = 2, style: str = "lean", **overrides):
    """(agent, env) over training interactions and frozen embeddings [U, d], [I, d] (float32).

    ``style``: "lean" (``DDPGAgent``) or "seed" (``SeedStyleAgent``: the seed's per-step idioms)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if num_threads:
        torch.set_num_threads(num_threads)
    c = {**DEFAULTS, **overrides}
    u_emb, i_emb = torch.from_numpy(np.ascontiguousarray(user_emb, np.float32)), torch.from_numpy(
        np.ascontiguousarray(item_emb, np.float32))
    env = (SeedStyleEnv if style == "seed" else OfflineEnv)(
        user, item, rating, n_users, n_items, i_emb, n_state=c["n_state"], top_k=c["top_k"], horizon=c["horizon"],
        unrated_reward=c["unrated_reward"], positive_threshold=positive_threshold, seed=seed)
    agent_cls = SeedStyleAgent if style == "seed" else DDPGAgent
    return agent_cls(env, u_emb, i_emb, seed=seed, **overrides), env


def load_ml1m_train(data_dir):
    """Training interactions of the benchmark's split (users 80/10/10, seed 0), as numpy arrays."""
    sys.path.insert(0, str(REPO))
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.splits import train_view, user_split

    inter, _, _ = load_prepared(data_dir)
    train = train_view(inter, user_split(inter, (0.8, 0.1, 0.1), 0))
    return train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--style", default="lean", choices=STYLES, help="lean (default) or the seed's per-step idioms")
    args = p.parse_args(argv)
    train = load_ml1m_train(args.data)
    rng = np.random.default_rng(args.seed)
    agent, _ = build(train.user, train.item, train.rating, train.n_users, train.n_items,
                     0.1 * rng.standard_normal((train.n_users, 100), np.float32),
                     0.1 * rng.standard_normal((train.n_items, 100), np.float32), seed=args.seed,
                     num_threads=args.threads, style=args.style)
    agent.run(DEFAULTS["batch_size"])  # fill the replay so that every timed step updates
    t0 = time.perf_counter()
    agent.run(args.steps)
    dt = time.perf_counter() - t0
    print(json.dumps({"env_steps": args.steps, "updates": agent.updates, "seconds": round(dt, 3),
                      "env_steps_per_s": round(args.steps / dt, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
