"""Whole-sequence training (``SQNConfig.mode="sequence"``, SASRec's): the layout, the causal one-pass
encoder, every loss recomputed by hand at every position, and the ``*_plus`` experiments end to end.

The loss tests reuse ``tests/test_sqn_values.py``'s explicit head tables: ``OneHotSequence`` is the real
``SequenceNetwork`` (heads, losses) whose encoder is replaced by ``state after slot t = one_hot(item in
slot t)``, so every head output is one table row and each loss can be written out in plain Python.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.run import main
from experiments.sequential.configs import sasrec_plus_config
from jaxrec import config as C
from jaxrec.data.sequences import user_sequences
from jaxrec.errors import ConfigError
from jaxrec.nets.sequence import SequenceNetwork
from jaxrec.rl.sqn import (SQNConfig, epoch_rows, make_losses, make_scorer, make_train, make_update,
                           network_params, samples_count)
from tests.helpers import make_interactions, synthetic_interactions, write_prepared
from tests.planted import planted_chains
from tests.test_sqn_values import (I, P, Q_B, Q_W, ROWS, SUP_B, SUP_W, T_B, T_W, ce, logsumexp, mean, q,  # noqa: F401
                                   v_double)

L = 6  # max_len: user 0 (6 items) fills the row, user 1 (5 items) is left-padded once
# user 0 logs 0 1 2 3 1 0 (ratings 5 4 3 2 1 2), user 1 logs 3 2 0 1 2 (ratings 1 2 3 4 5)
SEQ = [[0, 1, 2, 3, 1, 0], [P, 3, 2, 0, 1, 2]]
REWARD = [[4, 3, 2, 1, 2], [1, 2, 3, 4, 5]]  # reward of the action of state t = rating of slot t + 1
VALID = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
SAMPLE = [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]  # user 1's state 0 is empty (PAD): no sample (min_history = 1)
TERMINAL = [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
SAMPLES = [(u, t) for u in range(2) for t in range(L - 1) if SAMPLE[u][t]]  # 9 samples


def hand_batch(max_len=L, rows=ROWS):
    seqs = user_sequences(make_interactions(rows, n_items=I), max_len=max_len)
    return {k: jnp.asarray(v) for k, v in seqs.arrays().items()}


def test_user_sequences_layout_by_hand():
    seqs = user_sequences(make_interactions(ROWS, n_items=I), max_len=L)
    for name, want in (("items", SEQ), ("reward", REWARD), ("valid", VALID), ("terminal", TERMINAL),
                       ("sample", SAMPLE)):
        np.testing.assert_array_equal(getattr(seqs, name), want)
    # A shorter max_len keeps the LAST items (SASRec's training rows); min_history moves the first sample.
    short = user_sequences(make_interactions(ROWS, n_items=I), max_len=3, min_history=3)
    np.testing.assert_array_equal(short.items, [[3, 1, 0], [0, 1, 2]])
    np.testing.assert_array_equal(short.sample, [[1, 1], [1, 1]])  # actions at history positions 4, 5 / 3, 4
    np.testing.assert_array_equal(user_sequences(make_interactions(ROWS, n_items=I), max_len=3,
                                                 min_history=4).sample, [[1, 1], [0, 1]])


# ------------------------------------------------------------------------------------------------------
# The encoder

def encoders(**kw):
    net = SequenceNetwork(n_items=I + 20, window=9, dim=8, ff_dim=16, dropout=0.0, **kw)
    params = net.init(jax.random.key(1), jnp.full((9,), net.n_items))
    seq_fn = jax.jit(lambda s: net.apply(params, s, method=SequenceNetwork.sequence_states))
    win_fn = jax.jit(lambda s: net.apply(params, s, method=SequenceNetwork.window_state))
    return net, seq_fn, win_fn


@pytest.mark.parametrize("kw", [{"layers": 2, "norm": "pre", "heads": 2}, {"layers": 2}, {"layers": 2, "norm": "sasrec"},
                                {"layers": 2, "norm": "sasrec", "position_origin": "first"}, {"backbone": "gru"}])
def test_causal_and_the_last_state_is_the_evaluation_state(kw):
    net, seq_fn, win_fn = encoders(**kw)
    pad = net.n_items
    seq = jnp.array([pad, pad, 3, 4, 5, 6, 7, 8, 9])
    states = seq_fn(seq)
    assert states.shape == (9, 8) and bool(jnp.isfinite(states).all())
    # The evaluation state of these items (window_state, what the scorer ranks from) is the last position's.
    np.testing.assert_allclose(states[-1], win_fn(seq), atol=2e-6)
    for t in (2, 5):
        changed = seq.at[t + 1:].set(jnp.arange(10, 10 + 8 - t))
        again = seq_fn(changed)
        np.testing.assert_array_equal(states[:t + 1], again[:t + 1])  # outputs at <= t never see slots > t
        assert not np.allclose(states[t + 1:], again[t + 1:])


def test_prefix_states_are_evaluation_states_with_positions_from_the_first_item():
    """``position_origin="first"`` (SASRec+'s): the training state after slot t of a row is exactly the
    evaluation state of the items up to t (left-padded to a window), so every training position sees the
    positions evaluation will. Counted from the last item it is not: slot t of a row is told how many items
    follow it, which an evaluation state never is."""
    for origin, same in (("first", True), ("last", False)):
        net, seq_fn, win_fn = encoders(layers=2, norm="sasrec", position_origin=origin)
        pad = net.n_items
        seq = jnp.array([pad, pad, 3, 4, 5, 6, 7, 8, 9])
        states = seq_fn(seq)
        for t in (2, 4, 7):
            prefix = jnp.concatenate([jnp.full((8 - t,), pad), seq[:t + 1]])
            assert np.allclose(states[t], win_fn(prefix), atol=2e-6) is same, (origin, t)


@pytest.mark.parametrize("origin", ["last", "first"])
def test_padding_never_changes_a_state_or_a_loss(origin):
    """Positions are counted from either end of the items, so more left padding (a longer max_len) leaves every
    real state and every loss term unchanged (the padded slots are masked out of attention and of the losses)."""
    rows = [(0, 0, 5, 0), (0, 1, 4, 1), (0, 2, 3, 2), (0, 3, 2, 3), (1, 3, 1, 0), (1, 2, 2, 1), (1, 0, 3, 2)]
    out = {}
    for max_len in (7, 4):
        cfg = SQNConfig(mode="sequence", max_len=max_len, layers=2, dim=8, ff_dim=16, dropout=0.0, batch_size=2,
                        micro_batches=1, n_steps=3, negatives=0, bootstrap_at_end=True, position_origin=origin)
        cfg.validate()
        net = cfg.network(I)
        params = net.init(jax.random.key(0), jnp.full((7,), I)) if max_len == 7 else None
        if max_len == 7:
            out["params"] = params
        else:
            params = jax.tree.map(lambda x: x, out["params"])
            params["params"]["position_embedding"] = params["params"]["position_embedding"][:4]  # positions 0..3
        loss = jax.jit(make_losses(cfg, net))
        _, m = loss(params, params, hand_batch(max_len, rows), jax.random.split(jax.random.key(0), 2))
        out[max_len] = {k: float(v) for k, v in m.items()}
    assert out[4]["samples"] == 5 and set(out[4]) >= {"loss_sup", "loss_ssl", "loss_td"}
    for k in out[4]:
        assert out[4][k] == pytest.approx(out[7][k], rel=1e-5, abs=1e-6), k


def test_tied_head_ranks_with_the_input_item_embeddings():
    """SASRec's output layer (``tied_head``): logits = h . E[item] + b over the real items (never the PAD row),
    and the cross-entropy's gradient reaches the item table through the head."""
    net = SequenceNetwork(n_items=5, window=3, dim=4, ff_dim=4, tied_head=True)
    params = net.init(jax.random.key(0), jnp.full((3,), 5))
    assert "sup_w" not in params["params"]
    params["params"]["sup_b"] = jnp.arange(5.0) / 10
    emb = np.asarray(params["params"]["item_embedding"])
    h = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4)), jnp.float32)
    np.testing.assert_allclose(net.apply(params, h, method=SequenceNetwork.logits), h @ emb[:5].T + np.arange(5) / 10,
                               rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda p: net.apply(p, h, method=SequenceNetwork.logits)[:, 2].sum())(params)
    g = np.asarray(grad["params"]["item_embedding"])
    np.testing.assert_allclose(g[2], np.asarray(h).sum(0), rtol=1e-6)  # d(sum_b h_b . E_2)/dE_2 = sum_b h_b
    assert not g[[0, 1, 3, 4, 5]].any()


def test_sasrec_block_by_hand():
    """``norm="sasrec"`` is Kang & McAuley's block, written out here for one layer and one head: y = LN1(x),
    x = LN2(y + Attn(query y, keys and values x)), x = x + FFN(x), state = LN_final(x)."""
    net = SequenceNetwork(n_items=I, window=5, dim=4, ff_dim=6, norm="sasrec", dropout=0.0)
    params = net.init(jax.random.key(2), jnp.full((5,), I))
    p = jax.tree.map(np.asarray, params["params"])
    seq = np.array([P, P, 2, 0, 3])

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * p[name]["scale"] + p[name]["bias"]

    def dense(x, name):
        return x @ p[name]["kernel"] + p[name]["bias"]

    valid = seq != I
    x = np.where(valid[:, None], p["item_embedding"][np.minimum(seq, I)], 0.0) + p["position_embedding"][::-1]
    y = ln(x, "ln1_0")
    q, k, v = (a @ p[f"w{n}_0"][:, 0] + p[f"b{n}_0"][0] for a, n in ((y, "q"), (x, "k"), (x, "v")))
    logits = np.where(np.tril(np.ones((5, 5), bool)) & valid[None], q @ k.T / 2.0, -np.inf)
    rows = valid  # PAD queries see no valid key: zero attention (their states are never used)
    w = np.zeros((5, 5))
    w[rows] = np.exp(logits[rows] - logits[rows].max(1, keepdims=True))
    w[rows] /= w[rows].sum(1, keepdims=True)
    x = ln(y + dense(w @ v, "out_0"), "ln2_0")
    x = x + dense(np.maximum(dense(x, "ff1_0"), 0.0), "ff2_0")
    want = ln(x, "final_norm")
    got = net.apply(params, jnp.asarray(seq), method=SequenceNetwork.sequence_states)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attn_out_dropout", [True, False])
def test_sasrec_plus_code_options_by_hand(attn_out_dropout):
    """The options that match SASRec+'s code (docs/differences.md#seqplus-embedding): with every dropout at rate
    1 in training, attention weights and the feed-forward branch are all zero, so the attention sublayer
    outputs its output bias b; ``attn_out_dropout=False`` keeps that branch (y + b), the default drops it (y).
    ``ln_eps`` is every LayerNorm's epsilon, ``head_bias=False`` leaves logits = h . E, ``qkv_init="torch"`` is
    PyTorch's joint in-projection Xavier (std sqrt(2 / (64 + 192)) = 0.088 at d = 64)."""
    eps = 1e-8
    net = SequenceNetwork(n_items=I, window=5, dim=4, ff_dim=6, norm="sasrec", dropout=1.0, tied_head=True,
                          attn_out_dropout=attn_out_dropout, head_bias=False, ln_eps=eps)
    params = net.init(jax.random.key(2), jnp.full((5,), I))
    assert "sup_b" not in params["params"]
    params["params"]["out_0"]["bias"] = jnp.array([0.5, -1.0, 2.0, 0.25])
    p = jax.tree.map(np.asarray, params["params"])
    seq = np.array([P, P, 2, 0, 3])

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * p[name]["scale"] + p[name]["bias"]

    valid = seq != I
    x = np.where(valid[:, None], p["item_embedding"][np.minimum(seq, I)], 0.0) + p["position_embedding"][::-1]
    y = ln(x, "ln1_0")
    want = ln(ln(y + (0.0 if attn_out_dropout else p["out_0"]["bias"]), "ln2_0"), "final_norm")
    got = net.apply(params, jnp.asarray(seq), False, method=SequenceNetwork.sequence_states,
                    rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-5)
    bound = net.bind(params)
    assert bound.final_norm.epsilon == bound.ln1[0].epsilon == bound.ln2[0].epsilon == eps
    np.testing.assert_allclose(net.apply(params, got, method=SequenceNetwork.logits),
                               np.asarray(got) @ p["item_embedding"][:I].T, rtol=1e-5, atol=1e-6)
    wide = SequenceNetwork(n_items=I, window=6, dim=64, ff_dim=8, layers=2, qkv_init="torch")
    torch_init = wide.init(jax.random.key(1), jnp.full((6,), I))["params"]
    for name in ("wq_0", "wk_1", "wv_0"):
        assert float(jnp.std(torch_init[name])) == pytest.approx(0.0884, rel=0.05)
    built = SQNConfig(mode="sequence", attn_out_dropout=False, head_bias=False, ln_eps=eps, qkv_init="torch").network(I)
    assert (built.attn_out_dropout, built.head_bias, built.ln_eps, built.qkv_init) == (False, False, eps, "torch")


def test_sasrec_input_options_scale_the_item_table_and_drop_the_summed_input():
    """SASRec's initialisation and input. ``embed_scale``: the input reads the item table times sqrt(d) (the same states as an unscaled network
    given the scaled table), while the tied output layer reads the table unscaled. ``input_dropout``: only in
    training, on the summed input embeddings (nothing else drops here)."""
    kw = dict(n_items=I, window=6, dim=16, ff_dim=8, layers=2, norm="pre", dropout=0.0, tied_head=True)
    scaled, plain = SequenceNetwork(embed_scale=True, **kw), SequenceNetwork(**kw)
    params = scaled.init(jax.random.key(0), jnp.full((6,), I))
    bigger = jax.tree.map(lambda x: x, params)
    bigger["params"]["item_embedding"] = params["params"]["item_embedding"] * 4.0  # sqrt(16)
    seq = jnp.array([P, 0, 3, 1, 2, 4])
    h = scaled.apply(params, seq, method=SequenceNetwork.sequence_states)
    np.testing.assert_allclose(h, plain.apply(bigger, seq, method=SequenceNetwork.sequence_states), rtol=1e-5, atol=1e-5)
    assert not np.allclose(h, plain.apply(params, seq, method=SequenceNetwork.sequence_states), atol=1e-3)
    np.testing.assert_allclose(scaled.apply(params, h, method=SequenceNetwork.logits),
                               plain.apply(params, h, method=SequenceNetwork.logits), rtol=1e-6)
    dropped = SequenceNetwork(input_dropout=0.5, **kw)
    rng = {"dropout": jax.random.key(3)}
    train = dropped.apply(params, seq, False, method=SequenceNetwork.sequence_states, rngs=rng)
    assert not np.allclose(train, plain.apply(params, seq, False, method=SequenceNetwork.sequence_states, rngs=rng), atol=1e-3)
    np.testing.assert_array_equal(dropped.apply(params, seq, method=SequenceNetwork.sequence_states),
                                  plain.apply(params, seq, method=SequenceNetwork.sequence_states))
    # block_init_std: the blocks' dense kernels start N(0, std); the default keeps flax's LeCun normal.
    wide = dict(kw, dim=64, ff_dim=64)
    small = SequenceNetwork(block_init_std=0.02, **wide).init(jax.random.key(1), jnp.full((6,), I))["params"]
    lecun = SequenceNetwork(**wide).init(jax.random.key(1), jnp.full((6,), I))["params"]
    for name in ("out_0", "ff1_1", "ff2_0"):
        assert float(jnp.std(small[name]["kernel"])) == pytest.approx(0.02, rel=0.1)
        assert float(jnp.std(lecun[name]["kernel"])) == pytest.approx(1 / 8, rel=0.1)  # 1 / sqrt(fan_in = 64)
    np.testing.assert_array_equal(small["wq_0"], lecun["wq_0"])
    # qkv_init: Xavier over fan-in d = 64 and fan-out heads x d_head = 64 (std sqrt(2 / 128) = 0.125), against
    # flax's xavier_uniform on the 3-D kernel (fans 64 and 64 x 64: std sqrt(2 / 4160) = 0.022).
    xavier = SequenceNetwork(qkv_init="xavier", **wide).init(jax.random.key(1), jnp.full((6,), I))["params"]
    for name in ("wq_0", "wk_1", "wv_0"):
        assert float(jnp.std(xavier[name])) == pytest.approx(0.125, rel=0.05)
        assert float(jnp.std(lecun[name])) == pytest.approx(0.0219, rel=0.05)


# ------------------------------------------------------------------------------------------------------
# The losses by hand

class OneHotSequence(SequenceNetwork):
    """State after slot t = one_hot(item in slot t) (PAD -> the last coordinate)."""

    def sequence_states(self, seq, deterministic=True):
        return jax.nn.one_hot(seq, self.dim)

    def window_state(self, window, deterministic=True):
        return jax.nn.one_hot(window[-1], self.dim)


def cfg_of(**kw):
    base = dict(mode="sequence", max_len=L, dim=I + 1, ff_dim=4, batch_size=2, micro_batches=1, dropout=0.0,
                n_steps=3, ssl="none", negatives=0, gamma=0.5, lam=0.8, bootstrap_at_end=False)
    base.update(kw)
    cfg = SQNConfig(**base)
    cfg.validate()
    return cfg


def stub(cfg):
    net = OneHotSequence(n_items=I, window=L, dim=I + 1, ff_dim=4, dropout=0.0, q_heads=cfg.q_heads)
    params = net.init(jax.random.key(0), jnp.full((L,), P))

    def with_tables(ws, bs):
        p = jax.tree.map(lambda x: x, params)
        p["params"]["sup_w"], p["params"]["sup_b"] = jnp.asarray(SUP_W, jnp.float32), jnp.asarray(SUP_B, jnp.float32)
        for k in range(cfg.q_heads):
            name = "q" if k == 0 else f"q{k}"
            p["params"][f"{name}_w"], p["params"][f"{name}_b"] = jnp.asarray(ws[k], jnp.float32), jnp.asarray(bs[k], jnp.float32)
        return p

    return net, with_tables(Q_W, Q_B), with_tables(T_W, T_B)


def run_loss(cfg, seed=0):
    net, main_p, target_p = stub(cfg)
    keys = jax.random.split(jax.random.key(seed), 2)
    loss, m = jax.jit(make_losses(cfg, net))(main_p, target_p, hand_batch(), keys)
    return float(loss), {k: float(v) for k, v in m.items()}, keys


def item(u, t):
    """Item in slot t of user u's row (the newest item of state t; OneHotSequence encodes it)."""
    return SEQ[u][t]


def action(u, t):
    return SEQ[u][t + 1]


@pytest.mark.parametrize("ssl", ["none", "future_states", "ahead"])
def test_per_position_cross_entropy_and_self_supervision_by_hand(ssl):
    cfg = cfg_of(ssl=ssl, ssl_weight=0.3, sup_weight=0.7, q_weight=0.0)
    loss, m, _ = run_loss(cfg)
    # Every position t predicts the item of slot t + 1 from state t (SASRec's training; SQN eq. 1).
    sup = mean([ce(item(u, t), action(u, t)) for u, t in SAMPLES])
    assert m["loss_sup"] == pytest.approx(sup, rel=1e-6)
    if ssl == "none":
        assert loss == pytest.approx(0.7 * sup, rel=1e-6)
        return
    per = []
    for u, t in SAMPLES:  # j = 1..n-1 steps ahead, only where that action exists in the row
        js = [j for j in range(1, cfg.n_steps) if t + j < L - 1]
        if ssl == "future_states":  # the future state s_{t+j} predicts its own next item
            per.append(mean([ce(item(u, t + j), action(u, t + j)) for j in js]))
        else:  # the current state predicts each of the next items
            per.append(mean([ce(item(u, t), action(u, t + j)) for j in js]))
    assert m["loss_ssl"] == pytest.approx(mean(per), rel=1e-6)
    assert loss == pytest.approx(0.7 * sup + 0.3 * mean(per), rel=1e-6)


def lambda_return(u, t, cfg, value):
    """Forward view of the truncated λ-return over the n steps t..t+n-1 of the row (Sutton & Barto eq. 12.18),
    as tests/test_sqn_values.py: past the row there is nothing (d = 0); the user's last action is an
    episode end (d = 0), or with ``bootstrap_at_end`` a cut (d = γ, λ = 0: bootstrap from the last state)."""
    n = cfg.n_steps
    d, lam = [], []
    for i in range(L - 1 + n):
        inside = i < L - 1
        end = inside and TERMINAL[u][i] and not cfg.bootstrap_at_end
        d.append(cfg.gamma if inside and not end else 0.0)
        lam.append(0.0 if (not inside or (cfg.bootstrap_at_end and TERMINAL[u][i])) else cfg.lam)
    g = 0.0
    for m_ in range(1, n + 1):
        w = np.prod([lam[t + i] for i in range(m_ - 1)]) * ((1 - lam[t + m_ - 1]) if m_ < n else 1.0)
        rewards = sum(np.prod(d[t:t + i]) * (REWARD[u][t + i] if t + i < L - 1 else 0.0) for i in range(m_))
        nxt = t + m_  # state after the m-th step (the row has states 0..L-1)
        ret = rewards + np.prod(d[t:t + m_]) * (value(item(u, nxt)) if nxt < L else 0.0)
        g += w * ret
    return g


@pytest.mark.parametrize("double_q, bootstrap_at_end, lam", [("heads", False, 0.8), ("heads", True, 0.8),
                                                              ("none", True, 0.5)])
def test_td_lambda_along_the_sequence_with_double_q_by_hand(double_q, bootstrap_at_end, lam):
    cfg = cfg_of(double_q=double_q, bootstrap_at_end=bootstrap_at_end, lam=lam, q_weight=0.3, sup_weight=0.6)
    loss, m, _ = run_loss(cfg)
    pairs = [(0, 1), (1, 0)] if double_q == "heads" else [(0, 0)]
    td, g_mean = 0.0, 0.0
    for head, other in pairs:
        G = [lambda_return(u, t, cfg, lambda s: v_double(head, other, s)) for u, t in SAMPLES]
        Q = [q(head, item(u, t), action(u, t)) for u, t in SAMPLES]
        td += mean([(qq - g) ** 2 for qq, g in zip(Q, G)]) / len(pairs)
        g_mean += mean(G) / len(pairs)
    sup = mean([ce(item(u, t), action(u, t)) for u, t in SAMPLES])
    assert m["loss_td"] == pytest.approx(td, rel=1e-6)
    assert m["mean_target"] == pytest.approx(g_mean, rel=1e-6)
    assert loss == pytest.approx(0.6 * sup + 0.3 * td, rel=1e-6)


def test_rewards_read_along_the_sequence():
    """γ = λ = 1, n = 3 and a constant target value c: G_t = r_t + r_{t+1} + r_{t+2} + c, cut at the row's end
    (bootstrap there); the rewards 1, 10, 100, ... of the actions show which steps each target reads."""
    cfg = cfg_of(gamma=1.0, lam=1.0, double_q="none", bootstrap_at_end=True, q_weight=1.0)
    net, main_p, target_p = stub(cfg)
    c = 0.5
    target_p["params"]["q_w"] = jnp.zeros((I + 1, I))
    target_p["params"]["q_b"] = jnp.full((I,), c)
    batch = dict(hand_batch(), reward=jnp.asarray(np.tile(10.0 ** np.arange(L - 1), (2, 1)), jnp.float32))
    loss_fn = jax.jit(make_losses(cfg, net))
    per_sample = []
    for u, t in SAMPLES:  # read each sample's target alone through the mean over a one-sample mask
        sample = np.zeros((2, L - 1), bool)
        sample[u, t] = True
        _, m = loss_fn(main_p, target_p, dict(batch, sample=jnp.asarray(sample)), jax.random.split(jax.random.key(0), 2))
        per_sample.append(float(m["mean_target"]))
    want = [111 + c, 1110 + c, 11100 + c, 11000 + c, 10000 + c,  # user 0: the last two read past the end
            1110 + c, 11100 + c, 11000 + c, 10000 + c]
    np.testing.assert_allclose(per_sample, want, rtol=1e-6)


def test_negatives_per_position_by_hand():
    """Sequence mode draws K negatives per position (SNQN samples per transition), a draw equal to the
    position's own action is dropped; target neg_reward + γ v(s_t)."""
    K = 3
    cfg = cfg_of(double_q="heads", negatives=K, neg_reward=-0.25, q_weight=0.4)
    loss, m, keys = run_loss(cfg, seed=3)
    neg = [np.asarray(jax.random.randint(jax.random.split(keys[u])[1], (L - 1, K), 0, I)) for u in range(2)]
    assert any(action(u, t) in neg[u][t] for u, t in SAMPLES)  # the exclusion is exercised
    assert not all((neg[u][0] == neg[u][t]).all() for u in range(2) for t in range(L - 1))  # per position
    total = 0.0
    for head, other in ((0, 1), (1, 0)):
        per = []
        for u, t in SAMPLES:
            y = -0.25 + 0.5 * v_double(head, other, item(u, t))
            negs = [x for x in neg[u][t] if x != action(u, t)]
            per.append(mean([(q(head, item(u, t), x) - y) ** 2 for x in negs]))
        total += mean(per) / 2
    assert m["loss_neg"] == pytest.approx(total, rel=1e-6)
    assert loss == pytest.approx(cfg.sup_weight * m["loss_sup"] + 0.4 * (m["loss_td"] + total), rel=1e-6)


# ------------------------------------------------------------------------------------------------------
# Training, scoring, configuration

def test_training_is_seeded_and_the_scorer_ranks_from_the_last_state():
    inter = synthetic_interactions(n_users=12, n_items=15, per_user=(3, 12), seed=2)
    cfg = SQNConfig(mode="sequence", max_len=8, dim=8, ff_dim=8, batch_size=4, micro_batches=2, n_steps=2,
                    ssl="none", negatives=2, bootstrap_at_end=True)
    cfg.validate()
    net = cfg.network(inter.n_items)
    data = {k: jnp.asarray(v) for k, v in user_sequences(inter, 8).arrays().items()}
    init, train = make_train(cfg, net)
    init, train = jax.jit(init), jax.jit(train)
    a, metrics = train(init(jax.random.key(0)), data, 3)
    b, _ = train(init(jax.random.key(0)), data, 3)
    c, _ = train(init(jax.random.key(1)), data, 3)
    assert int(a.step) == 3 and all(np.isfinite(float(v)) for v in metrics.values())
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.allclose(a.params, c.params)
    # The scorer's state of a user's last max_len items is the training encoder's last position.
    score = make_scorer(cfg, net)
    p0 = network_params(net, a)
    h = jax.vmap(lambda s: net.apply(p0, s, method=SequenceNetwork.sequence_states))(data["items"][:3])[:, -1]
    np.testing.assert_allclose(score(a.params, data["items"][:3]), net.apply(p0, h, method=SequenceNetwork.logits),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------
# Length strata (SQNConfig.length_strata): rows cut to their stratum's width, the same rows from every stratum

def strata_interactions(lengths, n_items=9):
    """User u logs ``lengths[u]`` items (u + j) % n_items, j = 0..len-1, ratings 1..5 in turn."""
    return make_interactions([(u, (u + j) % n_items, 1 + j % 5, j) for u, n in enumerate(lengths) for j in range(n)],
                             n_items=n_items)


def test_length_strata_layout_by_hand():
    seqs = user_sequences(strata_interactions([12, 3, 7, 5, 2, 9]), max_len=10)  # kept: 10 3 7 5 2 9
    parts = seqs.strata(3, multiple=4)
    # Users sorted by kept length (2 3 | 5 7 | 9 10), each stratum cut to its longest row rounded up to 4 slots.
    assert [p["items"].shape for p in parts] == [(2, 4), (2, 8), (2, 10)]
    rows = [4, 1, 3, 2, 5, 0]
    full = seqs.arrays()
    for i, part in enumerate(parts):
        w = part["items"].shape[1]
        for name, x in part.items():
            assert x.shape[1] == (w if name == "items" else w - 1)
            # Only PAD columns go: each cut row is the right end of the user's full row.
            np.testing.assert_array_equal(x, full[name][rows[2 * i:2 * i + 2]][:, full[name].shape[1] - x.shape[1]:])
        assert (full["items"][rows[2 * i:2 * i + 2], :10 - w] == seqs.n_items).all()
    assert sum(int(p["sample"].sum()) for p in parts) == seqs.n_samples
    assert seqs.strata(1)[0]["items"].shape == (6, 10)
    with pytest.raises(ValueError, match="strata"):
        seqs.strata(7)


def pad_left(part, width, pad):
    """A stratum's rows left-padded back to ``width`` items (PAD items, zero/False action columns)."""
    out = {}
    for name, x in part.items():
        w = width if name == "items" else width - 1
        fill = pad if name == "items" else 0
        out[name] = jnp.pad(x, [(0, 0), (w - x.shape[1], 0)], constant_values=fill)
    return out


@pytest.mark.parametrize("backbone,origin", [("transformer", "last"), ("transformer", "first"), ("gru", "last")])
def test_a_stratified_update_equals_the_full_width_update(backbone, origin):
    """Cut rows change nothing but the compute: one update on the strata's rows (each at its width) has the
    gradient and losses of one update on the same rows left-padded to max_len (dropout 0, no negatives: the
    per-row keys then do not enter), with the TD(λ), double Q and self-supervision terms that read along the
    rows. The update's optimiser is the identity, so the parameter step is lr x the gradient itself (Adam's
    first step, about lr x sign(g), would magnify float noise on near-zero gradients)."""
    inter = strata_interactions([12, 3, 7, 5, 2, 9, 4, 11], n_items=9)
    seqs = user_sequences(inter, max_len=10)
    base = dict(mode="sequence", max_len=10, backbone=backbone, norm="pre", dim=8, ff_dim=8, dropout=0.0,
                batch_size=8, n_steps=3, ssl="future_states", negatives=0, bootstrap_at_end=True,
                position_origin=origin)
    strat = SQNConfig(length_strata=4, micro_batches=1, **base)
    full = SQNConfig(length_strata=1, micro_batches=4, **base)  # the same four slices of two rows, all at width 10
    strat.validate(), full.validate()
    net = strat.network(inter.n_items)
    parts = tuple(jax.tree.map(jnp.asarray, p) for p in seqs.strata(4, multiple=2))
    assert len({p["items"].shape[1] for p in parts}) > 2
    wide = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[pad_left(p, 10, inter.n_items) for p in parts])
    init, _ = make_train(full, net)
    state = jax.jit(init)(jax.random.key(0))
    after = {}
    for name, cfg, batch in (("strata", strat, parts), ("full", full, wide)):
        update = jax.jit(make_update(cfg, net, optax.identity()))
        after[name] = update(state, batch, jax.random.key(1))
    grads = {k: (np.asarray(v[0].params) - np.asarray(state.params)) / strat.lr for k, v in after.items()}
    assert np.abs(grads["full"]).max() > 1e-2
    np.testing.assert_allclose(grads["strata"], grads["full"], rtol=1e-3, atol=1e-5)
    for k, v in after["full"][1].items():
        assert float(after["strata"][1][k]) == pytest.approx(float(v), rel=1e-5, abs=1e-6), k
    assert float(after["full"][1]["loss_td"]) > 0 and float(after["full"][1]["loss_ssl"]) > 0


def test_each_update_draws_the_same_rows_from_every_stratum():
    """Users of 4 items (3 samples each) and of 8 items (7 each): a batch of 2 + 2 rows always holds 20 samples,
    where uniform draws of 4 rows would hold 12 to 28; the run is seeded and a different seed differs."""
    inter = strata_interactions([4, 8] * 6, n_items=9)
    cfg = SQNConfig(mode="sequence", max_len=8, dim=8, ff_dim=8, batch_size=4, micro_batches=1, length_strata=2,
                    q_weight=0.0, ssl="none", negatives=0, bootstrap_at_end=True)
    cfg.validate()
    net = cfg.network(inter.n_items)
    data = tuple(jax.tree.map(jnp.asarray, p) for p in user_sequences(inter, 8).strata(2))
    assert [p["items"].shape[1] for p in data] == [8, 8]  # one width: both strata share one compiled part
    init, train = make_train(cfg, net)
    init, train = jax.jit(init), jax.jit(train)
    a, _ = train(init(jax.random.key(0)), data, 5)
    b, _ = train(init(jax.random.key(0)), data, 5)
    c, _ = train(init(jax.random.key(1)), data, 5)
    assert samples_count(a) == 5 * 20
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.allclose(a.params, c.params)


@pytest.mark.parametrize("n_rows, n_total", [(2, 5), (5, 5), (7, 3)])
def test_epoch_rows_read_one_permutation_per_pass_by_hand(n_rows, n_total):
    """Batch s is positions s*n .. (s+1)*n - 1 of the stream perm_0 perm_1 ..., perm_e = permutation(fold_in(key, e)):
    written out with numpy for 6 batches, jitted with a traced step; every pass holds each row once."""
    key = jax.random.key(3)
    stream = np.concatenate([np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n_total))
                             for e in range(6 * n_rows // n_total + 2)])
    jitted = jax.jit(epoch_rows, static_argnums=(2, 3))
    for s in range(6):
        expected = stream[s * n_rows:(s + 1) * n_rows]
        np.testing.assert_array_equal(epoch_rows(key, jnp.int32(s), n_rows, n_total), expected)
        np.testing.assert_array_equal(jitted(key, jnp.int32(s), n_rows, n_total), expected)
    for e in range(3):
        assert sorted(stream[e * n_total:(e + 1) * n_total]) == list(range(n_total))
    assert len({tuple(stream[e * n_total:(e + 1) * n_total]) for e in range(3)}) > 1  # each pass reshuffled


@pytest.mark.parametrize("strata", [1, 2])
def test_epoch_sampling_uses_every_row_once_per_pass(strata):
    """Users of 3..8 items (2..7 samples, 27 in all), 2 rows per update: after 3 updates (one pass) epoch-wise
    sampling has used each user once, 27 samples exactly, and after 6 updates 54; draws with replacement miss
    that for some seed. Splitting the steps over calls (a resume) gives the same state; another seed differs."""
    inter = strata_interactions([3, 4, 5, 6, 7, 8])
    base = SQNConfig(mode="sequence", max_len=8, dim=8, ff_dim=8, batch_size=2, micro_batches=1, length_strata=strata,
                     q_weight=0.0, ssl="none", negatives=0, bootstrap_at_end=True)
    seqs = user_sequences(inter, 8)
    data = (tuple(jax.tree.map(jnp.asarray, p) for p in seqs.strata(strata)) if strata > 1
            else jax.tree.map(jnp.asarray, seqs.arrays()))
    assert seqs.n_samples == 27

    compiled = {}

    def run(sampling, seed, splits):
        if sampling not in compiled:  # one compilation per mode (the step count is traced)
            cfg = dataclasses.replace(base, sampling=sampling)
            cfg.validate()
            compiled[sampling] = tuple(map(jax.jit, make_train(cfg, cfg.network(inter.n_items))))
        init, train = compiled[sampling]
        state = init(jax.random.key(seed))
        counts = []
        for n in splits:
            state, _ = train(state, data, n)
            counts.append(samples_count(state))
        return state, counts

    a, counts = run("epochs", 0, [3, 3])
    assert counts == [27, 54]
    b, _ = run("epochs", 0, [1, 2, 2, 1])
    np.testing.assert_array_equal(a.params, b.params)
    c, _ = run("epochs", 1, [6])
    assert not np.allclose(a.params, c.params)
    assert any(run("replacement", seed, [3])[1] != [27] for seed in range(4))


def test_an_unknown_sampling_is_refused_naming_the_key():
    """The config's generic Literal check (``jaxrec.config.validate``) names the key and the allowed values."""
    cfg = sasrec_plus_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, sampling="shuffle"))
    with pytest.raises(ConfigError, match=r"model\.sampling: 'shuffle' is not one of \('replacement', 'epochs'\)"):
        C.validate(cfg)


@pytest.mark.parametrize("kw, key", [({"causal": False}, "model.causal"), ({"pooling": "mean"}, "model.pooling"),
                                     ({"max_len": 1}, "model.max_len"), ({"min_history": 0}, "model.min_history"),
                                     ({"batch_size": 6, "micro_batches": 4}, "model.micro_batches"),
                                     ({"batch_size": 8, "micro_batches": 2, "length_strata": 3}, "model.micro_batches"),
                                     ({"length_strata": 0}, "model.length_strata"),
                                     ({"input_dropout": 1.0}, "model.input_dropout"),
                                     ({"mode": "window", "length_strata": 2}, "model.length_strata")])
def test_sequence_mode_config_errors(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SQNConfig(**{"mode": "sequence", **kw}).validate()
    SQNConfig(mode="sequence", batch_size=6, chunk=8, micro_batches=2).validate()  # chunk is a window-mode key


# ------------------------------------------------------------------------------------------------------
# The experiments

@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    return write_prepared(planted_chains(seed=0)[0], tmp_path_factory.mktemp("chains") / "chains",
                          positive_threshold=4.0)


def run(exp, data, run_dir, sets=()):
    assert main([f"--exp={exp}", "--data", str(data), "--run-dir", str(run_dir), "--quiet", *sets]) == 0
    return json.loads((run_dir / "final.json").read_text())


@pytest.mark.parametrize("exp", ["gru4rec_plus", "sqn_plus"])
def test_quick_runs(exp, chains, tmp_path):
    f = run(exp, chains, tmp_path / exp, ["--quick"])
    assert f["exp"] == exp and f["updates"] == 12 and f["split"] == "leave_last"
    assert all(0.0 <= v <= 1.0 for v in f["test"]["next_item"].values())


PLANTED = ["--set", "train.steps=120", "train.eval_every=120", "train.ckpt_every=120", "train.log_every=30",
           "model.dim=32", "model.ff_dim=32", "model.max_len=36", "model.batch_size=32", "model.micro_batches=1",
           "eval.batch_users=256"]


@pytest.fixture(scope="module")
def floor(chains, tmp_path_factory):
    pop = run("popularity_seq", chains, tmp_path_factory.mktemp("pop") / "pop", ["--set", "data.split.scheme=leave_last"])
    assert pop["split"] == "leave_last"
    return pop["test"]["next_item"]["ndcg@10"]


@pytest.mark.parametrize("exp, sets", [("sasrec_plus", []), ("m3s_plus", ["model.tied_head=false"])])
def test_plus_models_learn_the_planted_chains(exp, sets, chains, floor, tmp_path):
    """Each user's next item follows its cluster's chain (10% random insertions; popularity near chance):
    under their default leave-last split the whole-sequence models must beat popularity_seq clearly.

    Measured (test NDCG@10, popularity_seq 0.090): sasrec_plus 0.611 (0.699 with tied_head=false); m3s_plus
    0.459 with tied_head=false, but only 0.225 with the registered tied output layer at this 120-step budget
    (the TD loss, ~50 at first with rewards of 5, dominates the encoder's gradient while the item table also
    serves as the output layer), so m3s_plus's RL losses are checked on the untied backbone here; how the two
    compare on ML-1M is for the tuning runs (README, standard protocol). With the next-item targets shifted
    by one (each position predicting its own item) sasrec_plus falls to 0.095 and this test fails."""
    f = run(exp, chains, tmp_path / exp, PLANTED + sets)
    ndcg = f["test"]["next_item"]["ndcg@10"]
    print(f"{exp}: test ndcg@10 {ndcg:.3f} vs popularity_seq {floor:.3f}")
    assert f["split"] == "leave_last"
    assert ndcg >= max(floor + 0.25, 1.5 * floor)
