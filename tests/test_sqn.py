"""The sequence network and the SQN / M3S losses, updates and training loop."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.sequences import sequence_chunks
from jaxrec.errors import ConfigError
from jaxrec.nets.sequence import SequenceNetwork
from jaxrec.rl.sqn import (SQNConfig, double_q_bootstrap, make_losses, make_scorer, make_train, network_params,
                           param_layout, samples_count)
from tests.helpers import synthetic_interactions

I, N = 23, 4


def init(net, seed=0):
    return jax.jit(net.init)(jax.random.key(seed), jnp.full((net.window,), net.n_items))


def net_and_params(**kw):
    net = SequenceNetwork(n_items=I, window=N, dim=8, ff_dim=16, **kw)
    return net, init(net)


def test_attention_never_crosses_sequences_in_a_batch():
    net, params = net_and_params(heads=2)
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.integers(0, I, (6, 9)), jnp.int32).at[0, :3].set(I)
    encode = jax.jit(jax.vmap(lambda s: net.apply(params, s, method=SequenceNetwork.chunk_states)))
    states = encode(batch)
    # Replace every other sequence of the batch: sequence 0's states must not move at all.
    other = batch.at[1:].set(jnp.asarray(rng.integers(0, I, (5, 9)), jnp.int32))
    again = encode(other)
    np.testing.assert_array_equal(states[0], again[0])
    assert not np.allclose(states[1], again[1])


@pytest.mark.parametrize("kw", [{}, {"heads": 2}, {"backbone": "gru"}, {"pooling": "mean"}, {"causal": False},
                                {"layers": 2}, {"norm": "pre"}])
def test_one_pass_states_equal_window_by_window(kw):
    net, params = net_and_params(**kw)
    seq = jnp.array([I, I, 3, 4, 5, 6, 7, I, I])  # left padding (short history), right padding (user's end)
    states = jax.jit(lambda s: net.apply(params, s, method=SequenceNetwork.chunk_states))(seq)
    windows = jax.jit(jax.vmap(lambda w: net.apply(params, w, method=SequenceNetwork.window_state)))(
        jnp.stack([seq[i:i + N] for i in range(6)]))
    assert states.shape == (6, 8) and bool(jnp.isfinite(states).all())
    np.testing.assert_allclose(states, windows, atol=2e-6)
    assert net.shares_windows == (kw in ({}, {"heads": 2}))


def test_padding_is_masked_and_order_matters():
    net, params = net_and_params()
    state = jax.jit(lambda p, w: net.apply(p, w, method=SequenceNetwork.window_state))
    window = jnp.array([I, I, 3, 4])
    base = state(params, window)
    # The PAD row of the embedding table never reaches a state.
    poked = jax.tree.map(lambda x: x, params)
    poked["params"]["item_embedding"] = params["params"]["item_embedding"].at[I].set(100.0)
    np.testing.assert_array_equal(base, state(poked, window))
    # An all-padding window (empty history) gives a finite state, not NaN.
    assert bool(jnp.isfinite(state(params, jnp.full((N,), I))).all())
    # Positions matter: swapping the two items changes the state.
    assert not np.allclose(base, state(params, jnp.array([I, I, 4, 3])))


def test_double_q_selects_with_main_and_evaluates_with_target_by_hand():
    net = SequenceNetwork(n_items=3, window=2, dim=2, ff_dim=4, q_heads=2)
    params = init(net)
    main = jax.tree.map(lambda x: x, params)
    target = jax.tree.map(lambda x: x, params)
    main["params"]["q_w"] = jnp.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    main["params"]["q_b"] = jnp.array([0.0, 0.0, -1.0])
    main["params"]["q1_w"] = -main["params"]["q_w"]  # head 1 prefers the opposite items
    main["params"]["q1_b"] = jnp.zeros(3)
    target["params"]["q_w"] = jnp.array([[5.0, 6.0, 7.0], [8.0, 9.0, 10.0]])
    target["params"]["q_b"] = jnp.array([0.5, 0.25, 0.0])
    target["params"]["q1_w"] = jnp.array([[-1.0, 2.0, 4.0], [0.0, 1.0, 3.0]])
    target["params"]["q1_b"] = jnp.zeros(3)
    h_main = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    h_target = jnp.array([[1.0, 1.0], [2.0, 0.0]])
    boot = jax.jit(lambda m, t, hm, ht, sel, val: double_q_bootstrap(net, m, t, hm, ht, sel, val), static_argnums=(4, 5))
    v, a = boot(main, target, h_main, h_target, 0, 0)
    # Q_main rows: [1, 0, 1] -> item 0 (ties go to the lower index); [0, 3, -1] -> item 1.
    np.testing.assert_array_equal(a, [0, 1])
    # Q_target(h_target[0], 0) = 5 + 8 + .5 = 13.5; Q_target(h_target[1], 1) = 2 * 6 + .25 = 12.25. The
    # target's own maxima (17 and 14) are NOT used.
    np.testing.assert_allclose(v, [13.5, 12.25])
    # Two heads: head 1 picks (rows [-1, 0, -2] -> 1; [0, -3, 0] -> 0) and target head 0 values:
    # Q'_0(h_target[0], 1) = 6 + 9 + .25 = 15.25; Q'_0(h_target[1], 0) = 10 + .5 = 10.5.
    v, a = boot(main, target, h_main, h_target, 1, 0)
    np.testing.assert_array_equal(a, [1, 0])
    np.testing.assert_allclose(v, [15.25, 10.5])
    # Head 0 picks and target head 1 values: Q'_1(h_target[0], 0) = -1; Q'_1(h_target[1], 1) = 4.
    v, _ = boot(main, target, h_main, h_target, 0, 1)
    np.testing.assert_allclose(v, [-1.0, 4.0])


def tiny_cfg(**kw):
    base = dict(window=3, dim=8, ff_dim=16, batch_size=8, chunk=2, micro_batches=1, dropout=0.0, n_steps=2,
                bootstrap_at_end=False)
    base.update(kw)
    cfg = SQNConfig(**base)
    cfg.validate()
    return cfg


def one_batch(cfg, n_chunks=4):
    inter = synthetic_interactions(n_users=6, n_items=I, per_user=(5, 9), seed=3)
    c = sequence_chunks(inter, cfg.window, cfg.lookahead, cfg.chunk, cfg.min_history)
    return {k: jnp.asarray(v[:n_chunks]) for k, v in c.arrays().items()}


@pytest.mark.parametrize("double_q", ["none", "heads"])
def test_td_lambda_target_recomputed_by_hand(double_q):
    cfg = tiny_cfg(ssl="none", negatives=0, lam=0.5, gamma=0.9, double_q=double_q)
    net = cfg.network(I)
    main, target = init(net, 1), init(net, 2)
    batch = one_batch(cfg)
    keys = jax.random.split(jax.random.key(0), 4)
    loss, metrics = jax.jit(make_losses(cfg, net))(main, target, batch, keys)
    pairs = ((0, 1), (1, 0)) if double_q == "heads" else ((0, 0),)  # (trained head, valuing target head)

    @jax.jit
    def pieces(seq):
        h = net.apply(main, seq, method=SequenceNetwork.chunk_states)
        ht = net.apply(target, seq, method=SequenceNetwork.chunk_states)
        vs = [double_q_bootstrap(net, main, target, h, ht, a, b)[0] for a, b in pairs]
        return vs, [net.apply(main, h, a, method=SequenceNetwork.q_values) for a, _ in pairs]

    # Rebuild the target of every sample from the public pieces.
    td, mean_g = 0.0, 0.0
    for p in range(len(pairs)):
        expected_q, expected_g, weights = [], [], []
        for k in range(4):
            seq = batch["items"][k]
            vs, qs = pieces(seq)
            v, q_all = np.asarray(vs[p]), np.asarray(qs[p])
            valid, term = np.asarray(batch["valid"][k]), np.asarray(batch["terminal"][k])
            disc = 0.9 * valid * (1 - term)
            for i in range(cfg.chunk):
                r = np.asarray(batch["reward"][k][i:i + 2])
                # Two steps, λ = .5: G = r0 + d0 ((1 - λ) v1 + λ (r1 + d1 v2)) (rlax convention).
                g = r[0] + disc[i] * (0.5 * v[i + 1] + 0.5 * (r[1] + disc[i + 1] * v[i + 2]))
                expected_q.append(q_all[i, min(int(seq[cfg.window + i]), I - 1)])
                expected_g.append(g)
                weights.append(float(batch["sample"][k][i]))
        w = np.array(weights)
        td += np.sum(w * (np.array(expected_q) - np.array(expected_g)) ** 2) / w.sum() / len(pairs)
        mean_g += np.sum(w * np.array(expected_g)) / w.sum() / len(pairs)
    assert float(metrics["loss_td"]) == pytest.approx(td, rel=1e-4)
    assert float(metrics["mean_target"]) == pytest.approx(mean_g, rel=1e-4)
    assert float(loss) == pytest.approx(cfg.sup_weight * float(metrics["loss_sup"]) + cfg.q_weight * td, rel=1e-4)


def test_self_supervision_has_gradients():
    for ssl in ("future_states", "ahead"):
        cfg = tiny_cfg(ssl=ssl, sup_weight=0.0, q_weight=0.0, ssl_weight=1.0)
        net = cfg.network(I)
        params = init(net, 1)
        batch = one_batch(cfg)
        keys = jax.random.split(jax.random.key(0), 4)
        grads = jax.jit(jax.grad(lambda p: make_losses(cfg, net)(p, p, batch, keys)[0]))(params)
        assert float(jnp.abs(grads["params"]["sup_w"]).sum()) > 0  # the seed's term had none (m3s-ssl)
        assert float(jnp.abs(grads["params"]["item_embedding"]).sum()) > 0


_TRAIN = {}


def run_train(cfg, steps, splits=(None,), seed=0):
    """Trains ``steps`` updates (in calls of ``splits`` steps); jitted functions shared per config."""
    inter = synthetic_interactions(n_users=8, n_items=I, per_user=(6, 12), seed=5)
    net = cfg.network(I)
    data = jax.device_put(sequence_chunks(inter, cfg.window, cfg.lookahead, cfg.chunk, cfg.min_history).arrays())
    if repr(cfg) not in _TRAIN:
        _TRAIN[repr(cfg)] = tuple(jax.jit(fn) for fn in make_train(cfg, net))
    init, train = _TRAIN[repr(cfg)]
    state = init(jax.random.key(seed))
    for n in splits if splits != (None,) else (steps,):
        state, metrics = train(state, data, jnp.int32(n))
    return net, state, metrics


# One training config for the loop tests below (they share its compiled functions).
LOOP = dict(target_tau=0.25, dropout=0.1, negatives=3)


def test_two_networks_update_only_the_coins_network_and_targets_follow_polyak():
    cfg = tiny_cfg(double_q="networks", **LOOP)
    net, s0, _ = run_train(cfg, 0)
    _, s1, metrics = run_train(cfg, 1)
    changed = [not np.array_equal(s0.params[i], s1.params[i]) for i in range(2)]
    assert sorted(changed) == [False, True]
    np.testing.assert_allclose(s1.target_params, 0.75 * s0.target_params + 0.25 * s1.params, rtol=1e-6, atol=1e-7)
    assert int(s1.step) == 1 and samples_count(s1) > 0 and np.isfinite(metrics["loss"])
    assert param_layout(net)[0] == s1.params.shape[1]
    assert set(network_params(net, s1)["params"]) >= {"item_embedding", "sup_w", "q_w"}


def test_two_heads_share_one_network_and_both_learn():
    cfg = tiny_cfg(**LOOP)
    net, s0, _ = run_train(cfg, 0)
    _, s1, _ = run_train(cfg, 1)
    assert s1.params.shape[0] == 1 and net.q_heads == 2
    before, after = network_params(net, s0)["params"], network_params(net, s1)["params"]
    for name in ("q_w", "q1_w", "sup_w", "item_embedding"):
        assert not np.array_equal(before[name], after[name]), name
    np.testing.assert_allclose(s1.target_params, 0.75 * s0.target_params + 0.25 * s1.params, rtol=1e-6, atol=1e-7)


def test_chunked_training_and_micro_batches_give_the_same_result():
    cfg = tiny_cfg(**LOOP)
    _, straight, _ = run_train(cfg, 4)
    _, split, _ = run_train(cfg, 4, splits=(1, 3))  # resuming mid-way: fold_in(key, step) replays exactly
    np.testing.assert_array_equal(straight.params, split.params)
    for a, b in zip(jax.tree.leaves(straight.opt_state), jax.tree.leaves(split.opt_state)):
        np.testing.assert_array_equal(a, b)
    _, micro, _ = run_train(dataclasses.replace(cfg, micro_batches=2), 4)
    np.testing.assert_allclose(straight.params, micro.params, atol=2e-5)
    _, other_seed, _ = run_train(cfg, 4, seed=1)
    assert not np.allclose(straight.params, other_seed.params)


def test_supervised_only_has_one_network_and_scores_all_items():
    cfg = tiny_cfg(q_weight=0.0, ssl="none", negatives=0, sup_weight=1.0)
    net, state, metrics = run_train(cfg, 3)
    assert state.params.shape[0] == 1 and state.target_params.shape == (1,)
    assert set(metrics) == {"loss", "loss_sup", "grad_norm"}
    scores = make_scorer(cfg, net)(state.params, jnp.array([[I, 1, 2], [3, 4, 5]]))
    assert scores.shape == (2, I) and bool(jnp.isfinite(scores).all())


@pytest.mark.parametrize("kw, key", [({"batch_size": 10, "chunk": 4}, "model.batch_size"),
                                     ({"ssl": "future_states", "n_steps": 1}, "model.ssl"),
                                     ({"q_weight": 0.0, "rank_by": "q"}, "model.rank_by"),
                                     ({"micro_batches": 3}, "model.micro_batches"),
                                     ({"dim": 10, "heads": 3}, "model.heads")])
def test_config_validation(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SQNConfig(**kw).validate()
