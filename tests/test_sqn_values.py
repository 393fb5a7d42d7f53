"""SQN / M3S losses recomputed by hand on a tiny log, and what each training option actually does.

The loss tests use ``OneHotStates``: the real ``SequenceNetwork`` (its heads, its ``chunk_states`` window
slicing) whose encoder is replaced by ``state = one_hot(newest item of the window)``. Every head output
is then one row of an explicit table (``logits(s) = SUP_W[last(s)] + SUP_B``, ``Q_k(s, a) = Q_W[k][last(s), a]
+ Q_B[k][a]``), so each loss term can be written out from the equations in plain numpy.
"""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxrec.data.sequences import sequence_chunks
from jaxrec.nets.sequence import SequenceNetwork
from jaxrec.rl.sqn import (SQNConfig, TrainingState, make_losses, make_optimizer, make_scorer, make_update,
                           param_layout)
from jaxrec.seeds import traced_values
from tests.helpers import make_interactions, synthetic_interactions, write_prepared

I = 4  # items 0..3
P = I  # PAD id
N, C, n = 2, 2, 3  # window, chunk, n_steps: A = C + n - 1 = 4 actions per chunk, L = N + A = 6 items


class OneHotStates(SequenceNetwork):
    """The state of a window is the one-hot vector of its newest item (PAD -> the last coordinate)."""

    @property
    def shares_windows(self):  # chunk_states then slices the windows and calls window_state on each
        return False

    def window_state(self, window, deterministic=True):
        return jax.nn.one_hot(window[-1], self.dim)


# user 0 logs items 0 1 2 3 1 0, user 1 logs 3 2 0 1 2 (ratings are the rewards)
ROWS = [(0, 0, 5, 0), (0, 1, 4, 1), (0, 2, 3, 2), (0, 3, 2, 3), (0, 1, 1, 4), (0, 0, 2, 5),
        (1, 3, 1, 0), (1, 2, 2, 1), (1, 0, 3, 2), (1, 1, 4, 3), (1, 2, 5, 4)]
# The 4 chunks of samples p >= 2 (min_history=2), as sequence_chunks lays them out (tests/test_sequences.py):
# items[k] = x_{p0-2} .. x_{p0+3}; state i = items[k, i:i+2] (its newest item items[k, i+1]); action i = items[k, 2+i].
ITEMS = [[0, 1, 2, 3, 1, 0],  # user 0, p0 = 2: actions 2 3 1 0, the last one ends the user's log
         [2, 3, 1, 0, P, P],  # user 0, p0 = 4: actions 1 0, then past the end
         [3, 2, 0, 1, 2, P],  # user 1, p0 = 2: actions 0 1 2
         [0, 1, 2, P, P, P]]  # user 1, p0 = 4: action 2 only; the chunk's second sample is empty
REWARD = [[3, 2, 1, 2], [1, 2, 0, 0], [3, 4, 5, 0], [5, 0, 0, 0]]
VALID = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]
TERMINAL = [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
SAMPLE = [[1, 1], [1, 1], [1, 1], [1, 0]]
SAMPLES = [(k, t) for k in range(4) for t in range(C) if SAMPLE[k][t]]  # 7 training samples


def hand_batch():
    chunks = sequence_chunks(make_interactions(ROWS, n_items=I), window=N, n_steps=n, chunk=C, min_history=2)
    arrays = chunks.arrays()
    for name, want in (("items", ITEMS), ("reward", REWARD), ("valid", VALID), ("terminal", TERMINAL),
                       ("sample", SAMPLE)):
        np.testing.assert_array_equal(arrays[name], want)
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def last(k, i):
    """Newest item of state i of chunk k (what OneHotStates encodes)."""
    return ITEMS[k][i + N - 1]


def action(k, i):
    return ITEMS[k][N + i]


# Explicit head tables, one row per newest item (rows 0..3) and PAD (row 4).
rng = np.random.default_rng(14)  # a seed whose online rows have no tie
SUP_W = np.round(rng.normal(size=(I + 1, I)), 2)
SUP_B = np.array([0.1, -0.2, 0.3, 0.0])
Q_W = [np.round(rng.normal(size=(I + 1, I)), 2) for _ in range(2)]  # online heads 0, 1
Q_B = [np.array([0.05, 0.0, -0.1, 0.2]), np.array([0.0, 0.1, 0.0, -0.05])]
T_W = [np.round(rng.normal(size=(I + 1, I)), 2) for _ in range(2)]  # target heads 0, 1
T_B = [np.array([0.0, 0.2, 0.0, 0.1]), np.array([-0.1, 0.0, 0.3, 0.0])]


def stub(cfg):
    """(network, online params, target params) with the explicit tables above as heads."""
    net = OneHotStates(n_items=I, window=N, dim=I + 1, ff_dim=4, dropout=0.0, q_heads=cfg.q_heads)
    params = net.init(jax.random.key(0), jnp.full((N,), P))

    def with_tables(ws, bs):
        p = jax.tree.map(lambda x: x, params)
        p["params"]["sup_w"], p["params"]["sup_b"] = jnp.asarray(SUP_W, jnp.float32), jnp.asarray(SUP_B, jnp.float32)
        for k in range(cfg.q_heads):
            name = "q" if k == 0 else f"q{k}"
            p["params"][f"{name}_w"], p["params"][f"{name}_b"] = (jnp.asarray(ws[k], jnp.float32),
                                                                  jnp.asarray(bs[k], jnp.float32))
        return p

    return net, with_tables(Q_W, Q_B), with_tables(T_W, T_B)


def cfg_of(**kw):
    base = dict(window=N, dim=I + 1, ff_dim=4, chunk=C, batch_size=4 * C, micro_batches=1, dropout=0.0, n_steps=n,
                ssl="none", negatives=0, gamma=0.5, lam=0.8, bootstrap_at_end=False)
    base.update(kw)
    cfg = SQNConfig(**base)
    cfg.validate()
    return cfg


_LOSSES = {}


def run_loss(cfg, main, target, batch, seed=0):
    if repr(cfg) not in _LOSSES:  # compiled once per config
        _LOSSES[repr(cfg)] = jax.jit(make_losses(cfg, stub(cfg)[0]))
    keys = jax.random.split(jax.random.key(seed), batch["items"].shape[0])
    loss, metrics = _LOSSES[repr(cfg)](main, target, batch, keys)
    return float(loss), {k: float(v) for k, v in metrics.items()}, keys


# Hand versions of the heads (float64).
def logsumexp(x):
    m = max(x)
    return m + math.log(sum(math.exp(v - m) for v in x))


def logits(s):
    return SUP_W[s] + SUP_B


def ce(s, a):
    """Cross-entropy of the supervised head at a state whose newest item is s, on label a (SQN eq. 1)."""
    return logsumexp(logits(s)) - logits(s)[a]


def q(head, s, a):
    return Q_W[head][s, a] + Q_B[head][a]


def v_double(select_head, value_head, s):
    """Double-Q bootstrap value (van Hasselt 2010): the online head picks a* = argmax_a Q(s, a), the
    target head values it: Q'(s, a*)."""
    online = Q_W[select_head][s] + Q_B[select_head]
    assert len(set(np.round(online, 6))) == I  # no tie: the argmax is unambiguous
    a_star = int(np.argmax(online))
    return T_W[value_head][s, a_star] + T_B[value_head][a_star]


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


# ------------------------------------------------------------------------------------------------------
# Supervised and self-supervised cross-entropies

# (newest item of s_t, a_t) of each sample, in SAMPLES order
SUP_PAIRS = [(1, 2), (2, 3), (3, 1), (1, 0), (2, 0), (0, 1), (1, 2)]
# future_states: (newest item of s_{t+j}, a_{t+j}) for j = 1..n-1 with a_{t+j} logged; e.g. the first sample
# (chunk 0, t = 0) reads state 1 = [1, 2] with its action 3 and state 2 = [2, 3] with its action 1. Past a
# user's end there is nothing to predict (chunk 1's second sample, chunk 3), so the sample's term is 0.
FUTURE_PAIRS = [[(2, 3), (3, 1)], [(3, 1), (1, 0)], [(1, 0)], [], [(0, 1), (1, 2)], [(1, 2)], []]
# ahead: the current state s_t predicts each of the next logged items a_{t+j}
AHEAD_PAIRS = [[(1, 3), (1, 1)], [(2, 1), (2, 0)], [(3, 0)], [], [(2, 1), (2, 2)], [(0, 2)], []]


@pytest.mark.parametrize("ssl", ["future_states", "ahead"])
def test_supervised_and_multi_step_self_supervised_losses_by_hand(ssl):
    assert SUP_PAIRS == [(last(k, t), action(k, t)) for k, t in SAMPLES]
    cfg = cfg_of(ssl=ssl, q_weight=0.0, sup_weight=0.7, ssl_weight=0.3)
    _, main, _ = stub(cfg)
    loss, m, _ = run_loss(cfg, main, main, hand_batch())
    # L_sup = mean over the 7 samples of CE(logits(s_t), a_t)
    sup = mean([ce(s, a) for s, a in SUP_PAIRS])
    # L_ssl = mean over samples of mean_{j: a_{t+j} logged} CE(...) (docstring of jaxrec.rl.sqn)
    pairs = FUTURE_PAIRS if ssl == "future_states" else AHEAD_PAIRS
    ssl_loss = sum(mean([ce(s, a) for s, a in p]) for p in pairs) / len(SAMPLES)
    assert m["loss_sup"] == pytest.approx(sup, rel=1e-6)
    assert m["loss_ssl"] == pytest.approx(ssl_loss, rel=1e-6)
    assert loss == pytest.approx(0.7 * sup + 0.3 * ssl_loss, rel=1e-6)
    assert m["samples"] == 7


# ------------------------------------------------------------------------------------------------------
# TD(λ) targets: the n-step horizon each sample reads, the episode end, double-Q selection


def per_sample(cfg, main, target, batch, metric):
    """``metric`` of each training sample alone (the batch's sample mask reduced to that one sample)."""
    out = []
    for k, t in SAMPLES:
        alone = dict(batch, sample=jnp.zeros_like(batch["sample"]).at[k, t].set(True))
        out.append(run_loss(cfg, main, target, alone)[1][metric])
    return out


@pytest.mark.parametrize("bootstrap_at_end", [False, True])
def test_future_index_map_read_back_through_the_rewards(bootstrap_at_end):
    """γ = λ = 1 and a constant target value c: G_t = r_t + r_{t+1} + r_{t+2} (+ c unless the log ends
    inside the horizon). Rewards 1, 10, 100, 1000 at actions 0..3 of every chunk show which steps each
    sample's target reads."""
    cfg = cfg_of(gamma=1.0, lam=1.0, double_q="none", bootstrap_at_end=bootstrap_at_end)
    _, main, target = stub(cfg)
    c = 0.5
    target["params"]["q_w"] = jnp.zeros((I + 1, I))
    target["params"]["q_b"] = jnp.full((I,), c)
    batch = hand_batch()
    rewards = jnp.asarray(np.array(VALID) * np.array([1.0, 10.0, 100.0, 1000.0]), jnp.float32)

    if not bootstrap_at_end:
        # chunk 0: t=0 reads actions 0,1,2 and bootstraps from s_3; t=1 reads 1,2,3 and action 3 ends the log.
        # chunk 1: the log ends at action 1; chunk 2: at action 2; chunk 3: at action 0.
        want = [111 + c, 1110, 11, 10, 111, 110, 1]
    else:
        # The end of the log is a cut: bootstrap from the state after the last action, G += γ * c there.
        want = [111 + c, 1110 + c, 11 + c, 10 + c, 111 + c, 110 + c, 1 + c]
    np.testing.assert_allclose(per_sample(cfg, main, target, dict(batch, reward=rewards), "mean_target"), want,
                               rtol=1e-6)


def lambda_return(k, t, cfg, value):
    """Forward view of the truncated λ-return over the n logged steps t..t+n-1 (Sutton & Barto eq. 12.18,
    per-step λ): G = sum_{m=1}^{n} w_m G^{(m)}, with the m-step return
    G^{(m)} = sum_{i<m} (prod_{j<i} d_{t+j}) r_{t+i} + (prod_{j<m} d_{t+j}) V(s_{t+m}),
    w_m = (prod_{i<m-1} λ_{t+i}) (1 - λ_{t+m-1}) for m < n and w_n = prod_{i<n-1} λ_{t+i}.
    d_i = γ for a logged action, 0 past the log and at its end (an episode end) unless
    ``bootstrap_at_end``, where the last action keeps d = γ and λ = 0 (bootstrap there, nothing after)."""
    d, lam = [], []
    for i in range(C + n - 1):
        end = TERMINAL[k][i] and not cfg.bootstrap_at_end
        d.append(cfg.gamma if VALID[k][i] and not end else 0.0)
        lam.append(0.0 if (cfg.bootstrap_at_end and TERMINAL[k][i]) else cfg.lam)
    g = 0.0
    for m in range(1, n + 1):
        w = np.prod([lam[t + i] for i in range(m - 1)]) * ((1 - lam[t + m - 1]) if m < n else 1.0)
        rewards = sum(np.prod(d[t:t + i]) * REWARD[k][t + i] for i in range(m))
        ret = rewards + np.prod(d[t:t + m]) * value(last(k, t + m))
        g += w * ret
    return g


@pytest.mark.parametrize("double_q, bootstrap_at_end, lam", [("heads", False, 0.8), ("heads", True, 0.8),
                                                              ("none", False, 0.5)])
def test_td_lambda_loss_with_double_q_by_hand(double_q, bootstrap_at_end, lam):
    cfg = cfg_of(double_q=double_q, bootstrap_at_end=bootstrap_at_end, lam=lam, gamma=0.5, q_weight=0.3,
                 sup_weight=0.6)
    _, main, target = stub(cfg)
    loss, m, _ = run_loss(cfg, main, target, hand_batch())
    # (trained head, head whose target copy values its choice): with two heads each bootstraps from the other.
    pairs = [(0, 1), (1, 0)] if double_q == "heads" else [(0, 0)]
    td, g_mean = 0.0, 0.0
    for head, other in pairs:
        G = [lambda_return(k, t, cfg, lambda s: v_double(head, other, s)) for k, t in SAMPLES]
        Q = [q(head, last(k, t), action(k, t)) for k, t in SAMPLES]
        td += mean([(qq - g) ** 2 for qq, g in zip(Q, G)]) / len(pairs)  # (Q(s_t, a_t) - G^λ_t)^2
        g_mean += mean(G) / len(pairs)
    sup = mean([ce(s, a) for s, a in SUP_PAIRS])
    assert m["loss_td"] == pytest.approx(td, rel=1e-6)
    assert m["mean_target"] == pytest.approx(g_mean, rel=1e-6)
    assert loss == pytest.approx(0.6 * sup + 0.3 * td, rel=1e-6)


def test_double_q_selects_with_the_online_head_and_values_with_the_other_target_head():
    """One-step targets r + γ d v(s_{t+1}), v(s) = Q'_other(s, argmax_a Q_head(s, a)): the tables make the
    choice matter, valuing with the trained head's own target copy, or the plain max of the target head
    (no double Q), would give other targets."""
    cfg = cfg_of(double_q="heads", gamma=0.5, lam=0.0, n_steps=1)  # one-step targets r + γ d v(s_{t+1})
    _, main, target = stub(cfg)
    batch = hand_batch_n1()
    got = per_sample(cfg, main, target, batch, "mean_target")
    for (k, t), g in zip(SAMPLES, got):
        d = 0.0 if TERMINAL[k][t] else 0.5
        s_next = last(k, t + 1)
        want = REWARD[k][t] + d * (v_double(0, 1, s_next) + v_double(1, 0, s_next)) / 2  # mean over the 2 heads
        own = REWARD[k][t] + d * (v_double(0, 0, s_next) + v_double(1, 1, s_next)) / 2
        plain_max = REWARD[k][t] + d * (max(T_W[1][s_next] + T_B[1]) + max(T_W[0][s_next] + T_B[0])) / 2
        assert g == pytest.approx(want, rel=1e-6)
        if d:
            assert g != pytest.approx(own, rel=1e-3) and g != pytest.approx(plain_max, rel=1e-3)


def hand_batch_n1():
    """The same log with n_steps = 1 (one action per sample: A = C)."""
    chunks = sequence_chunks(make_interactions(ROWS, n_items=I), window=N, n_steps=1, chunk=C, min_history=2)
    arrays = chunks.arrays()
    np.testing.assert_array_equal(arrays["items"], np.array(ITEMS)[:, :N + C])
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def test_bootstrap_at_end_changes_only_the_last_transition_by_gamma_v_next():
    """One-step targets (SQN): r_t + γ v(s_{t+1}) for every sample; at a user's last action the target is
    r_T (episode end), or with bootstrap_at_end r_T + γ v(s_{T+1}): exactly γ v(s_{T+1}) more, nowhere else."""
    batch = hand_batch_n1()
    got = {}
    for at_end in (False, True):
        cfg = cfg_of(double_q="none", gamma=0.5, n_steps=1, bootstrap_at_end=at_end)
        _, main, target = stub(cfg)
        got[at_end] = np.array(per_sample(cfg, main, target, batch, "mean_target"))
    diff = got[True] - got[False]
    for (k, t), dv in zip(SAMPLES, diff):
        if TERMINAL[k][t]:  # chunk 1 t=1, chunk 3 t=0
            assert dv == pytest.approx(0.5 * v_double(0, 0, last(k, t + 1)), rel=1e-6)
            assert dv != 0
        else:
            assert dv == 0.0
    assert sum(TERMINAL[k][t] for k, t in SAMPLES) == 2


# ------------------------------------------------------------------------------------------------------
# Negative samples (SNQN)


@pytest.mark.parametrize("neg_next", ["same", "next"])
def test_negative_sample_loss_by_hand(neg_next):
    """K items drawn uniformly per chunk (shared by its samples); a draw equal to a sample's own action is
    not a negative for it. Target of a negative: neg_reward + γ v(s), s = s_t (the state does not change
    when a recommendation is ignored) or s_{t+1} with neg_next="next"; loss = mean over the sample's
    negatives of (Q(s_t, neg) - target)^2, averaged over samples and over the two heads."""
    K = 3
    cfg = cfg_of(double_q="heads", negatives=K, neg_reward=-0.25, neg_next=neg_next, gamma=0.5, q_weight=0.4)
    _, main, target = stub(cfg)
    loss, m, keys = run_loss(cfg, main, target, hand_batch(), seed=3)
    # Read back the draws: chunk b's negatives come from the second half of split(keys[b]).
    neg = [list(np.asarray(jax.random.randint(jax.random.split(keys[b])[1], (K,), 0, I))) for b in range(4)]
    assert any(action(k, t) in neg[k] for k, t in SAMPLES)  # a draw hits a sample's own action: exclusion exercised
    total = 0.0
    for head, other in ((0, 1), (1, 0)):
        per = []
        for k, t in SAMPLES:
            s_boot = last(k, t) if neg_next == "same" else last(k, t + 1)
            y = -0.25 + 0.5 * v_double(head, other, s_boot)
            negs = [x for x in neg[k] if x != action(k, t)]  # duplicates count twice
            per.append(mean([(q(head, last(k, t), x) - y) ** 2 for x in negs]))
        total += mean(per) / 2
    assert m["loss_neg"] == pytest.approx(total, rel=1e-6)
    assert loss == pytest.approx(cfg.sup_weight * m["loss_sup"] + 0.4 * (m["loss_td"] + total), rel=1e-6)


def test_neg_next_changes_only_the_negatives_bootstrap_state():
    """Same key, same draws: neg_next changes the negative term (values by hand above) and nothing else."""
    out = {}
    for neg_next in ("same", "next"):
        cfg = cfg_of(double_q="none", negatives=3, neg_next=neg_next)
        _, main, target = stub(cfg)
        out[neg_next] = run_loss(cfg, main, target, hand_batch(), seed=3)[1]
    for name in ("loss_sup", "loss_td", "mean_q", "mean_target"):
        assert out["same"][name] == out["next"][name]
    assert out["same"]["loss_neg"] != pytest.approx(out["next"]["loss_neg"], rel=1e-3)


# ------------------------------------------------------------------------------------------------------
# Options of the trainer: rank_by, weight_decay, grad_clip


def random_params(net, scale, seed=0):
    """Parameters of ``net`` drawn from N(0, scale^2), every one of them (no init: its compile is slow)."""
    r = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.full((net.window,), net.n_items))
    return jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape) * scale, x.dtype), shapes)


@pytest.mark.parametrize("double_q", ["heads", "networks"])
def test_rank_by_q_scores_with_the_q_heads(double_q):
    """rank_by=q: evaluation scores are the Q head's output (the mean of the two heads with double_q=heads,
    network 0's head with double_q=networks); rank_by=sup: the supervised logits."""
    # A GRU encoder (the cheapest to compile): the heads, not the encoder, are under test.
    cfg = SQNConfig(backbone="gru", window=3, dim=8, dropout=0.0, double_q=double_q, rank_by="q", bootstrap_at_end=False)
    cfg.validate()
    net = cfg.network(I)
    params = random_params(net, scale=0.5)  # biases too
    flat = ravel_pytree(params)[0]
    assert flat.size == param_layout(net)[0]
    stacked = jnp.stack([flat] * cfg.n_nets)
    if cfg.n_nets == 2:
        stacked = stacked.at[1].set(0.0)  # network 1 must not matter: evaluation uses network 0
    windows = jnp.array([[P, 1, 2], [3, 0, 1], [P, P, 2]])
    h = np.asarray(jax.jit(jax.vmap(lambda w: net.apply(params, w, method=SequenceNetwork.window_state)))(windows),
                   np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in params["params"].items() if k[0] in "qs"}  # the heads
    q_heads = [h @ p["q_w"] + p["q_b"]] + ([h @ p["q1_w"] + p["q1_b"]] if cfg.q_heads == 2 else [])
    want = sum(q_heads) / len(q_heads)  # the mean of the Q heads (one head with two networks)
    got = np.asarray(make_scorer(cfg, net)(stacked, windows))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    sup = np.asarray(make_scorer(dataclasses.replace(cfg, rank_by="sup"), net)(stacked, windows))
    np.testing.assert_allclose(sup, h @ p["sup_w"] + p["sup_b"], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(np.argsort(-got, axis=1), np.argsort(-sup, axis=1))


def adam_by_hand(p0, grads, lr, clip=0.0, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """Parameters after Adam(W) steps on a sequence of gradients (Kingma & Ba 2015, Alg. 1; decoupled
    decay, Loshchilov & Hutter 2019): g <- g * min(1, clip / ||g||) first when clip > 0."""
    p = np.array(p0, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = np.asarray(g, np.float64)
        if clip:
            g = g * min(1.0, clip / np.linalg.norm(g))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
    return p


@pytest.mark.parametrize("clip, wd", [(1.0, 0.0), (0.0, 0.1), (1.0, 0.1), (0.0, 0.0)])
def test_optimizer_clips_the_global_norm_and_decays_by_hand(clip, wd):
    p0 = np.array([0.5, -1.0, 2.0, 1.5])
    grads = [[6.0, -8.0, 0.0, 0.0], [0.3, 0.0, -0.4, 0.0], [0.0, 3.0, 4.0, 0.0]]  # norms 10, 0.5 and 5
    cfg = SQNConfig(lr=0.01, grad_clip=clip, weight_decay=wd, bootstrap_at_end=False)
    opt = make_optimizer(cfg)
    p, state = jnp.asarray(p0, jnp.float32), opt.init(jnp.asarray(p0, jnp.float32))
    for g in grads:
        updates, state = opt.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, cfg.lr * updates)  # the rate is the state's (traced), as in make_update
    np.testing.assert_allclose(p, adam_by_hand(p0, grads, 0.01, clip, wd), rtol=1e-6, atol=1e-7)
    # Not vacuous: the reference without this config's clip / decay ends elsewhere.
    if clip:
        assert not np.allclose(p, adam_by_hand(p0, grads, 0.01, 0.0, wd), rtol=1e-4, atol=1e-6)
    if wd:
        assert not np.allclose(p, adam_by_hand(p0, grads, 0.01, clip, 0.0), rtol=1e-4, atol=1e-6)
    # The last coordinate never has a gradient: only the decay moves it, by a factor 1 - lr wd per step.
    assert float(p[3]) == pytest.approx(1.5 * (1 - 0.01 * wd) ** 3, rel=1e-6)


def test_grad_clip_and_weight_decay_in_a_training_update():
    """One update of a tiny real network (supervised loss: the options act on any gradient) with both
    options on; Adam's moments after one step are mu = (1 - b1) g' and nu = (1 - b2) g'^2 of the
    gradient g' it was given, so they show what the clip did."""
    clip, wd, lr = 0.05, 0.5, 0.01
    cfg = SQNConfig(window=3, dim=8, ff_dim=16, batch_size=8, chunk=2, micro_batches=1, dropout=0.0, q_weight=0.0,
                    bootstrap_at_end=False,
                    ssl="none", negatives=0, sup_weight=1.0, lr=lr, grad_clip=clip, weight_decay=wd)
    cfg.validate()
    net = cfg.network(23)
    inter = synthetic_interactions(n_users=6, n_items=23, per_user=(5, 9), seed=3)
    c = sequence_chunks(inter, cfg.window, cfg.lookahead, cfg.chunk, cfg.min_history)
    batch = {k: jnp.asarray(v[:4]) for k, v in c.arrays().items()}
    params = ravel_pytree(random_params(net, scale=0.1))[0][None]
    optimizer = make_optimizer(cfg)
    s0 = TrainingState(params=params, target_params=jnp.zeros((1,)), opt_state=jax.vmap(optimizer.init)(params),
                       key=jax.random.key_data(jax.random.key(0)), step=jnp.int32(0),
                       samples=jnp.zeros((2,), jnp.int32), hyper=traced_values(cfg))
    s1, metrics = jax.jit(make_update(cfg, net, optimizer))(s0, batch, jax.random.key(1))
    mu = np.asarray(optax.tree_utils.tree_get(s1.opt_state, "mu"), np.float64)[0]
    nu = np.asarray(optax.tree_utils.tree_get(s1.opt_state, "nu"), np.float64)[0]
    # grad_clip: the logged norm is the raw gradient's, above the bound, and Adam saw global norm exactly clip.
    assert float(metrics["grad_norm"]) > 2 * clip
    assert np.linalg.norm(mu / 0.1) == pytest.approx(clip, rel=1e-5)
    assert np.sqrt(np.sum(nu / 0.001)) == pytest.approx(clip, rel=1e-5)
    # weight_decay, AdamW's first step: p1 = p0 - lr (m_hat / (sqrt(v_hat) + eps) + wd p0) on every parameter,
    # with m_hat = mu / (1 - b1) and v_hat = nu / (1 - b2).
    p0, p1 = np.asarray(s0.params[0], np.float64), np.asarray(s1.params[0], np.float64)
    step = (mu / 0.1) / (np.sqrt(nu / 0.001) + 1e-8)
    np.testing.assert_allclose(p1, p0 - lr * (step + wd * p0), rtol=1e-5, atol=1e-7)
    # A parameter with no gradient (the PAD embedding row, masked to zero) shrinks by exactly 1 - lr wd.
    unravel = param_layout(net)[1]
    pad0 = np.asarray(unravel(s0.params[0])["params"]["item_embedding"][23])
    pad1 = np.asarray(unravel(s1.params[0])["params"]["item_embedding"][23])
    assert np.abs(pad0).min() > 0
    np.testing.assert_allclose(pad1, (1 - lr * wd) * pad0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------
# One end-to-end run per option

USERS = ["--set", "data.split.scheme=users", "data.split.heldout_visible=5"]
# The quick config made smaller still: the options' code paths, not the learning, are under test here.
SMALL = ["train.steps=2", "train.eval_every=2", "train.ckpt_every=2", "train.log_every=1", "model.window=3",
         "model.dim=8", "model.ff_dim=8", "model.n_steps=2", "model.batch_size=8", "model.chunk=2",
         "model.micro_batches=1", "model.negatives=2", "eval.ks=5", "eval.select=ndcg@5"]
OPTIONS = {"neg_next": "next", "bootstrap_at_end": True, "rank_by": "q", "weight_decay": 0.01, "grad_clip": 1.0}


def test_quick_run_with_every_option(tmp_path):
    """One m3s_tdlambda --quick run through experiments/run.py with all five options set (one run, not
    five: each run costs one compile of the training step, ~10-25 s on the shared 2-core CPU)."""
    from experiments.run import main

    data = write_prepared(synthetic_interactions(n_users=20, n_items=12, per_user=(8, 12), seed=7), tmp_path / "syn",
                          positive_threshold=1.0)
    run_dir = tmp_path / "run"
    settings = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in OPTIONS.items()]
    assert main(["--exp=m3s_tdlambda", "--quick", "--data", str(data), "--run-dir", str(run_dir), *USERS, *SMALL,
                 *settings]) == 0
    model = json.loads((run_dir / "config.json").read_text())["model"]
    assert {k: model[k] for k in OPTIONS} == OPTIONS
    f = json.loads((run_dir / "final.json").read_text())
    assert f["updates"] == 2 and f["samples"] > 0
    assert all(0.0 <= v <= 1.0 for v in f["test"]["next_item"].values())
