"""Seed-style PyTorch eager baselines of M3S-RLRec training (docs/differences.md, M3S table), for the
benchmarks only.

Written from the seed's description (https://github.com/bingren84/M3S-RLRec @86a12a6, as summarised in
docs/differences.md); no code copied.
One Python iteration per batch, every network call a separate eager forward, as the seed does.

Two variants of the training step:

* ``published``: the seed as published. ``TransformerDQN``: item embedding + learned positional embedding,
  one ``nn.TransformerEncoderLayer(d=64, 1 head, dropout 0.1)`` with PyTorch's default feed-forward width
  2048 and WITHOUT ``batch_first`` (so attention runs across the batch, m3s-batch-first), a final LayerNorm, mean
  pooling, heads ``fc`` (logits) and ``fc2`` (Q). Per batch: a coin picks the main network; CE on the main
  network's logits; the seed's λ-return loop (for each of the n next states: target Q, main Q for the
  argmax, and, except for the last, the target's logits for its discarded self-supervised term), the
  seed's λ weights; 10 negatives per sample drawn by a Python rejection loop and never used; the seed's
  "negative" target (reward = 10, one step from s_{t+1}) regressed by the positive Q; loss =
  0.8 CE + 0.2 (MSE + neg); 20 encoder passes per sample. ``seed_windows`` builds the seed's training
  windows the seed's way (a pandas filter per user, ``iloc`` per window).
* ``fixed``: the same model, losses and n-step targets as ``jaxrec``'s ``m3s_tdlambda`` (batch_first,
  causal attention, recency positional embedding, last-position pooling, feed-forward width as ours;
  CE + future-state self-supervision with gradient + double-Q TD(λ) over n steps (textbook weights) with
  two Q heads cross-bootstrapping from a Polyak target copy + sampled negatives bootstrapped from the
  unchanged state), written the seed's way: every shifted window is re-encoded by its own forward call,
  per network (20 passes per sample); negatives are drawn with ``torch.randint`` (not the seed's Python
  loop, which would only slow the baseline down further).

Batches come from numpy arrays in the layout of ``jaxrec.data.sequences.sequence_chunks(chunk=1)``
(state, action, n rewards/valid/terminal flags, n next states), sampled uniformly with replacement.

Memory mode (used by ``benchmarks/sqn_memory.py``):
  python benchmarks/baselines/m3s_torch.py --data DIR [--users N] [--steps S] [--threads T]
builds the seed's windows from the training users of the seeded 80/10/10 user split, wraps them as the
seed's per-sample tensor dataset, runs ``S`` published training steps on them and prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]

SEED_DEFAULTS = {"d": 64, "heads": 1, "layers": 1, "dropout": 0.1, "gamma": 0.5, "lam": 0.8, "weight": 0.8,
                 "neg": 10, "lr": 1e-3, "state": 10, "n_steps": 6, "batch_size": 2048}


# ----------------------------------------------------------------------------------------------------
# The seed's data pipeline


def seed_windows(user: np.ndarray, item: np.ndarray, rating: np.ndarray, order: np.ndarray, users, state_dim: int,
                 n_steps: int) -> list:
    """The seed's experiences (m3s-windows): per user a pandas filter + time sort, per window ``iloc`` slices.

    Only full windows with a full n-step lookahead exist (i = 0..len - L - n); ``dones`` are all True
    for a user's last window, else all False. Returns the seed's list of tuples.
    """
    import pandas as pd

    df = pd.DataFrame({"UserID": user, "MovieID": item, "Rating": rating, "Timestamp": order}).sort_values(
        by="Timestamp", kind="stable")
    experiences = []
    for u in users:
        user_data = df[df["UserID"] == u].sort_values(by="Timestamp", kind="stable")
        n = len(user_data)
        for i in range(n - state_dim - n_steps + 1):
            state = user_data.iloc[i:i + state_dim]["MovieID"].tolist()
            action = user_data.iloc[i + state_dim]["MovieID"]
            rewards = user_data.iloc[i + state_dim:i + state_dim + n_steps]["Rating"].tolist()
            next_states = [user_data.iloc[i + s:i + s + state_dim]["MovieID"].tolist() for s in range(1, n_steps + 1)]
            last = i + state_dim + n_steps == n
            experiences.append((int(u), state, action, rewards, next_states, [last] * n_steps))
    return experiences


class SeedDataset(torch.utils.data.Dataset):
    """The seed's dataset: one dict of small tensors per experience, built on every ``__getitem__``."""

    def __init__(self, experiences):
        self.experiences = experiences

    def __len__(self):
        return len(self.experiences)

    def __getitem__(self, idx):
        u, state, action, rewards, next_states, dones = self.experiences[idx]
        return {"user": torch.tensor(u, dtype=torch.long), "state": torch.tensor(state, dtype=torch.long),
                "action": torch.tensor(action, dtype=torch.long), "rewards": torch.tensor(rewards, dtype=torch.float),
                "next_states": torch.tensor(next_states, dtype=torch.long), "dones": torch.tensor(dones, dtype=torch.bool)}


# ----------------------------------------------------------------------------------------------------
# Models


class SeedTransformerDQN(nn.Module):
    """The seed's model as published (m3s-encoder): no batch_first, FF 2048, mean pooling, no mask."""

    def __init__(self, n_tokens: int, state_dim: int, n_actions: int, d: int = 64, heads: int = 1, layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d)
        self.positional = nn.Embedding(state_dim, d)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=heads, dropout=dropout)  # dim_feedforward=2048
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.fc = nn.Linear(d, n_actions)
        self.fc2 = nn.Linear(d, n_actions)

    def encode(self, x):
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand_as(x)
        # [B, L, d] read as (sequence, batch, feature): attention spans the batch (the seed's bug m3s-batch-first).
        return self.encoder(self.embedding(x) + self.positional(positions)).mean(dim=1)

    def logits_and_state(self, x):
        h = self.encode(x)
        return self.fc(h), h

    def q(self, x):
        return self.fc2(self.encode(x))


class FixedDQN(nn.Module):
    """The same network as ``jaxrec.nets.sequence.SequenceNetwork`` (transformer, causal, last pooling)."""

    def __init__(self, n_items: int, window: int, d: int = 64, heads: int = 1, layers: int = 1, ff_dim: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.pad = n_items
        self.embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.positional = nn.Parameter(torch.randn(window, d) * 0.02)  # indexed by recency (0 = newest)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=ff_dim, dropout=dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.register_buffer("causal", torch.triu(torch.ones(window, window, dtype=torch.bool), diagonal=1))
        self.sup = nn.Linear(d, n_items)
        self.qh = nn.ModuleList([nn.Linear(d, n_items) for _ in range(2)])

    def encode(self, x):
        h = self.embedding(x) + self.positional.flip(0)
        h = self.encoder(h, mask=self.causal, src_key_padding_mask=x == self.pad)
        return h[:, -1]


# ----------------------------------------------------------------------------------------------------
# Training steps


def published_lambda_return(rewards, next_states, dones, main, target, gamma, lam, max_n):
    """The seed's λ-return (m3s-lambda-return), its weights and bootstrap powers included; also runs (and discards) the
    seed's self-supervised forward passes."""
    with torch.no_grad():
        n_step = torch.zeros_like(rewards)
        superloss = 0.0
        for n in range(max_n):
            disc = gamma ** torch.arange(n + 1, dtype=torch.float32)
            discounted = (disc * rewards[:, :n + 1]).sum(dim=-1)
            ns = next_states[n]
            q_t = target.q(ns)
            a_star = main.q(ns).argmax(dim=1)
            v = q_t.gather(1, a_star.unsqueeze(1)).squeeze(1)
            if n + 1 != max_n:
                logits, _ = target.logits_and_state(ns)
                superloss = superloss + nn.functional.cross_entropy(logits, next_states[n + 1][:, 0])
            n_step[:, n] = discounted + (1 - dones[:, n].float()) * gamma ** n * v
        weights = lam ** torch.arange(1, max_n, dtype=torch.float32)
        out = (1 - lam) * (weights * n_step[:, :max_n - 1]).sum(dim=1) + lam ** max_n * n_step[:, -1]
    return out, superloss


class PublishedStep:
    """One training iteration of the seed as published (``train_offline.py``)."""

    def __init__(self, n_items: int, cfg=SEED_DEFAULTS, seed: int = 0):
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.cfg, self.n_items = cfg, n_items
        self.nets = [SeedTransformerDQN(n_items + 1, cfg["state"], n_items, cfg["d"], cfg["heads"], cfg["layers"],
                                        cfg["dropout"]) for _ in range(2)]
        self.nets[1].load_state_dict(self.nets[0].state_dict())
        self.opts = [torch.optim.Adam(n.parameters(), lr=cfg["lr"]) for n in self.nets]
        for n in self.nets:
            n.train()

    def __call__(self, batch) -> float:
        cfg = self.cfg
        coin = int(self.rng.integers(2))
        main, target, opt = self.nets[coin], self.nets[1 - coin], self.opts[coin]
        states, actions, rewards = batch["state"], batch["action"], batch["rewards"]
        next_states, dones = batch["next_states"], batch["dones"]
        logits, h = main.logits_and_state(states)
        loss1 = nn.functional.cross_entropy(logits, actions)
        q_value = main.fc2(h).gather(1, actions.unsqueeze(1)).squeeze(1)
        ns = next_states.permute(1, 0, 2)
        returns, _ = published_lambda_return(rewards, ns, dones, main, target, cfg["gamma"], cfg["lam"], ns.shape[0])
        acts = actions.tolist()
        negatives = []
        for index in range(states.shape[0]):  # drawn and never used (m3s-negatives)
            chosen = []
            for _ in range(cfg["neg"]):
                a = int(self.rng.integers(self.n_items))
                while a == acts[index] or a in chosen:
                    a = int(self.rng.integers(self.n_items))
                chosen.append(a)
            negatives.append(chosen)
        neg_reward = torch.full((states.shape[0], 1), float(cfg["neg"]))
        neg_done = torch.zeros((states.shape[0], 1), dtype=torch.int32)
        neg_returns, superloss = published_lambda_return(neg_reward, next_states[:, 0, :].unsqueeze(0), neg_done, main,
                                                         target, cfg["gamma"], cfg["lam"], 1)
        loss2 = torch.mean((q_value - returns) ** 2) + torch.mean((q_value - neg_returns) ** 2) + superloss
        loss = cfg["weight"] * loss1 + (1 - cfg["weight"]) * loss2
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())


class FixedStep:
    """One iteration of ``m3s_tdlambda``'s objective, seed-style (every shifted window re-encoded)."""

    def __init__(self, n_items: int, window: int = 10, n_steps: int = 6, d: int = 64, ff_dim: int = 256,
                 dropout: float = 0.1, gamma: float = 0.5, lam: float = 0.8, sup_weight: float = 0.8,
                 q_weight: float = 0.2, ssl_weight: float = 0.2, negatives: int = 10, tau: float = 0.01,
                 lr: float = 1e-3, seed: int = 0):
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.n_items, self.n_steps = n_items, n_steps
        self.gamma, self.lam, self.tau, self.negatives = gamma, lam, tau, negatives
        self.w_sup, self.w_q, self.w_ssl = sup_weight, q_weight, ssl_weight
        self.net = FixedDQN(n_items, window, d, 1, 1, ff_dim, dropout)
        self.target = FixedDQN(n_items, window, d, 1, 1, ff_dim, dropout)
        self.target.load_state_dict(self.net.state_dict())
        self.target.eval()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def bootstrap(self, states):
        """[2, B]: Q'_other(s, argmax_a Q_head(s, a)) for head 0 and head 1 (the two heads cross-bootstrap);
        the states re-encoded once by each network per call (the seed calls the networks per use)."""
        h, ht = self.net.encode(states), self.target.encode(states)
        out = []
        for head, other in ((0, 1), (1, 0)):
            a_star = self.net.qh[head](h).argmax(dim=1)
            out.append(self.target.qh[other](ht).gather(1, a_star.unsqueeze(1)).squeeze(1))
        return torch.stack(out)

    def __call__(self, batch) -> float:
        net = self.net
        net.train()
        states, actions, rewards = batch["state"], batch["actions"], batch["rewards"]
        valid, terminal, next_states = batch["valid"], batch["terminal"], batch["next_states"]
        B, n = actions.shape
        a0 = actions[:, 0]
        h = net.encode(states)
        loss_sup = nn.functional.cross_entropy(net.sup(h), a0)
        ssl_terms = []
        for j in range(1, n):
            hj = net.encode(next_states[:, j - 1])
            ce = nn.functional.cross_entropy(net.sup(hj), actions[:, j].clamp(max=self.n_items - 1), reduction="none")
            ssl_terms.append(ce * valid[:, j])
        ok = valid[:, 1:].float()
        loss_ssl = (torch.stack(ssl_terms, 1).sum(1) / ok.sum(1).clamp(min=1.0)).mean()
        neg = torch.randint(self.n_items - 1, (B, self.negatives), generator=self.gen)
        neg = neg + (neg >= a0.unsqueeze(1)).long()
        with torch.no_grad():
            v = torch.stack([self.bootstrap(next_states[:, j]) for j in range(n)], 2)  # [2, B, n]
            discount = self.gamma * valid.float() * (1 - terminal.float())
            g = v[:, :, -1]
            for j in reversed(range(n)):  # λ-return, textbook weights (Sutton & Barto eq. 12.18)
                g = rewards[:, j] + discount[:, j] * ((1 - self.lam) * v[:, :, j] + self.lam * g)
            v_now = self.bootstrap(states)
        loss_q = 0.0
        for head in (0, 1):
            q_all = net.qh[head](h)
            q_sa = q_all.gather(1, a0.unsqueeze(1)).squeeze(1)
            q_neg = q_all.gather(1, neg)
            loss_q = loss_q + 0.5 * (torch.mean((q_sa - g[head]) ** 2)
                                     + torch.mean((q_neg - self.gamma * v_now[head].unsqueeze(1)) ** 2))
        loss = self.w_sup * loss_sup + self.w_ssl * loss_ssl + self.w_q * loss_q
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for p, t in zip(net.parameters(), self.target.parameters()):
                t.mul_(1 - self.tau).add_(p, alpha=self.tau)
        return float(loss.detach())


# ----------------------------------------------------------------------------------------------------
# Batches from the chunk=1 layout


def transition_arrays(chunks) -> dict[str, np.ndarray]:
    """Per-transition arrays from ``sequence_chunks(..., chunk=1)`` (numpy)."""
    N, n = chunks.window, chunks.n_actions
    states = chunks.states()  # [K, n + 1, N]
    return {"state": states[:, 0], "actions": chunks.actions(), "rewards": chunks.reward, "valid": chunks.valid,
            "terminal": chunks.terminal, "next_states": states[:, 1:n + 1], "pad": chunks.pad, "window": N}


def fixed_batch(arrays, idx) -> dict[str, torch.Tensor]:
    return {"state": torch.from_numpy(arrays["state"][idx]).long(), "actions": torch.from_numpy(arrays["actions"][idx]).long(),
            "rewards": torch.from_numpy(arrays["rewards"][idx]), "valid": torch.from_numpy(arrays["valid"][idx]).float(),
            "terminal": torch.from_numpy(arrays["terminal"][idx]), "next_states": torch.from_numpy(arrays["next_states"][idx]).long()}


def full_window_rows(arrays) -> np.ndarray:
    """Transitions the seed has: a full state window and a full n-step lookahead (m3s-windows)."""
    return np.flatnonzero((arrays["state"] != arrays["pad"]).all(1) & arrays["valid"].all(1))


def published_batch(arrays, idx) -> dict[str, torch.Tensor]:
    """The seed's batch fields for transitions ``idx`` (full windows; dones all True on a user's last)."""
    last = arrays["terminal"][idx][:, -1]
    return {"state": torch.from_numpy(arrays["state"][idx]).long(), "action": torch.from_numpy(arrays["actions"][idx, 0]).long(),
            "rewards": torch.from_numpy(arrays["rewards"][idx]), "next_states": torch.from_numpy(arrays["next_states"][idx]).long(),
            "dones": torch.from_numpy(np.repeat(last[:, None], arrays["actions"].shape[1], 1))}


# ----------------------------------------------------------------------------------------------------
# Memory mode


def memory_main(argv=None):
    p = argparse.ArgumentParser(description="The seed's pipeline on a prepared data dir; one JSON line of timings.")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--users", type=int, default=0, help="only the first N training users (0: all)")
    p.add_argument("--steps", type=int, default=2, help="published training steps on the seed's dataset")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.splits import user_split

    torch.set_num_threads(args.threads)
    inter, _, _ = load_prepared(args.data)
    split = user_split(inter, (0.8, 0.1, 0.1), seed=0)
    users = np.unique(inter.user[split.train])
    if args.users:
        users = users[:args.users]
    cfg = SEED_DEFAULTS
    t0 = time.perf_counter()
    exps = seed_windows(inter.user, inter.item, inter.rating, inter.order, users, cfg["state"], cfg["n_steps"])
    build_s = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(SeedDataset(exps), batch_size=cfg["batch_size"], shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    step = PublishedStep(inter.n_items, cfg)
    t0, done = time.perf_counter(), 0
    for batch in loader:
        if done >= args.steps:
            break
        step(batch)
        done += 1
    print(json.dumps({"windows": len(exps), "users": int(len(users)), "build_s": round(build_s, 2),
                      "steps": done, "train_s": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    memory_main()
