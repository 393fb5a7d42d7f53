"""DDPG math by hand, and the scanned device loop against step-by-step references."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.splits import train_view, user_split
from jaxrec.envs import simulator as S
from jaxrec.nets.drr import SRM_KINDS, StateRepr, srm_dim
from jaxrec.rl import ddpg
from tests.helpers import synthetic_interactions

D = 8


def small_cfg(**kw):
    base = dict(dim=D, hidden=16, n_state=4, top_k=3, batch_size=8, n_envs=2, replay_capacity=256)
    base.update(kw)
    return ddpg.DDPGConfig(**base)


@pytest.fixture(scope="module")
def setup():
    inter = synthetic_interactions(n_users=40, n_items=30, per_user=(12, 25))
    split = user_split(inter, (0.8, 0.1, 0.1), seed=0)
    train = train_view(inter, split)
    key = jax.random.key(3)
    emb = ddpg.Embeddings(user=0.3 * jax.random.normal(key, (inter.n_users, D)),
                          item=0.3 * jax.random.normal(jax.random.fold_in(key, 1), (inter.n_items, D)))
    return inter, split, train, emb


def build(train, cfg):
    """(jitted init, jitted train (donating), the unjitted scan body)."""
    scfg = cfg.sim_config(4.0)
    sim = S.make_sim_data(train, scfg)
    init, train_fn = ddpg.make_train(cfg, sim, scfg)
    return jax.jit(init), jax.jit(train_fn, static_argnums=1, donate_argnums=0), ddpg.make_step(cfg, sim, scfg)[1]


def test_soft_update_by_hand():
    target = {"w": jnp.array([1.0, 2.0])}
    online = {"w": jnp.array([3.0, 6.0])}
    out = ddpg.soft_update(target, online, 0.25)
    np.testing.assert_allclose(out["w"], [1.5, 3.0])  # 0.75 * t + 0.25 * o


def test_state_representations_by_hand():
    u = jnp.array([1.0, 2.0])
    h = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    for kind in SRM_KINDS:
        m = StateRepr(kind)
        params = m.init(jax.random.key(0), u, h)
        assert m.apply(params, u, h).shape == (srm_dim(kind, 3, 2),)
    # DRR-ave at its initial weights (1/3 each): g = mean(h) = [1, 1]; s = [u, u*g, g].
    ave = StateRepr("ave")
    s = ave.apply(ave.init(jax.random.key(0), u, h), u, h)
    np.testing.assert_allclose(s, [1, 2, 1, 2, 1, 1], rtol=1e-6)
    # DRR-p with weights w = 1/3: [h1, h2, h3, (h1 h2, h1 h3, h2 h3) / 9].
    p = StateRepr("p")
    s = p.apply(p.init(jax.random.key(0), u, h), u, h)
    np.testing.assert_allclose(s, [1, 0, 0, 1, 2, 2, 0, 0, 2 / 9, 0, 0, 2 / 9], rtol=1e-6)
    # DRR-u: [u * h_l / 3 for each l, pairwise / 9].
    pu = StateRepr("u")
    s = pu.apply(pu.init(jax.random.key(0), u, h), u, h)
    np.testing.assert_allclose(s, [1 / 3, 0, 0, 2 / 3, 2 / 3, 4 / 3, 0, 0, 2 / 9, 0, 0, 2 / 9], rtol=1e-6)
    # The seed's fixed weights at N = 10: 0.19 ... 0.01 (oldest weighted most).
    h10 = jnp.eye(10)[:, :2]
    s = StateRepr("fixed_ave").apply({}, u, h10)
    np.testing.assert_allclose(s[-2:], [0.19, 0.17], rtol=1e-6)


def test_td_target_and_losses_by_hand():
    cfg = small_cfg(gamma=0.9)
    actor, critic = ddpg.networks(cfg)
    k = jax.random.key(0)
    u0, h0, a0 = jnp.zeros(D), jnp.zeros((cfg.n_state, D)), jnp.zeros(D)
    ap, cp = actor.init(k, u0, h0), critic.init(jax.random.fold_in(k, 1), u0, h0, a0)
    cp_t = jax.tree.map(lambda x: x * 0.5, cp)
    emb = ddpg.Embeddings(user=jax.random.normal(k, (3, D)), item=jax.random.normal(jax.random.fold_in(k, 2), (6, D)))
    batch = ddpg.Transition(user=jnp.array([0, 2]), items=jnp.array([[0, 1, 2, 3], [1, 2, 3, 4]]),
                            action=jnp.ones((2, D)) * 0.1, reward=jnp.array([1.0, -0.5]),
                            next_items=jnp.array([[1, 2, 3, 5], [2, 3, 4, 5]]), terminal=jnp.array([False, True]))
    weights = jnp.array([1.0, 0.5])
    critic_loss, actor_loss = ddpg.make_losses(cfg)
    loss, (td, _) = critic_loss(cp, cp_t, ap, emb, batch, weights, cfg.gamma)
    # By hand: y0 = 1 + 0.9 * Q'(s'0, mu'(s'0)); y1 = -0.5 (terminal); loss = mean(w * (y - Q(s, a))^2).
    u, hn, h = emb.user[batch.user], emb.item[batch.next_items], emb.item[batch.items]
    q_next = critic.apply(cp_t, u, hn, actor.apply(ap, u, hn))
    q = critic.apply(cp, u, h, batch.action)
    y = jnp.array([1.0 + 0.9 * q_next[0], -0.5])
    np.testing.assert_allclose(td, y - q, rtol=1e-5)
    np.testing.assert_allclose(loss, jnp.mean(weights * (y - q) ** 2), rtol=1e-5)
    # Actor: -mean Q(s, mu(s)) at the POLICY's action (not the stored one).
    np.testing.assert_allclose(actor_loss(ap, cp, emb, batch), -jnp.mean(critic.apply(cp, u, h, actor.apply(ap, u, h))), rtol=1e-5)
    # The seed's target: min(Q(s', mu'(s')), Q'(s', mu'(s'))).
    faithful_loss, _ = ddpg.make_losses(dataclasses.replace(cfg, faithful_target=True))
    _, (td_f, _) = faithful_loss(cp, cp_t, ap, emb, batch, weights, cfg.gamma)
    q_online_next = critic.apply(cp, u, hn, actor.apply(ap, u, hn))
    np.testing.assert_allclose(td_f[0], 1.0 + 0.9 * min(q_next[0], q_online_next[0]) - q[0], rtol=1e-5)


def test_scan_equals_step_by_step_and_chunking(setup):
    _, _, train, emb = setup
    cfg = small_cfg()
    init, train_fn, step = build(train, cfg)
    s0 = init(jax.random.key(0), emb)
    a, _ = train_fn(jax.tree.map(jnp.copy, s0), 12)
    ref = jax.tree.map(jnp.copy, s0)
    jstep = jax.jit(step)
    for _ in range(12):
        ref, _ = jstep(ref, None)
    b, _ = train_fn(train_fn(jax.tree.map(jnp.copy, s0), 5)[0], 7)
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(ref), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(x, z)
    assert int(a.updates) == 12 - 3  # updates start once 8 transitions (2 per step) are stored: step 4
    assert int(a.env_steps) == 24


def test_updates_per_step_are_that_many_single_updates(setup):
    """With ``updates_per_step=2`` a step acts and stores exactly as with one update, then updates twice with
    the two halves of the step's update key (the second on the first's result)."""
    _, _, train, emb = setup
    one, two = small_cfg(), small_cfg(updates_per_step=2)
    init, _, step1 = build(train, one)
    _, train2, step2 = build(train, two)
    s0 = jax.jit(lambda s: jax.lax.scan(step1, s, None, length=4)[0])(init(jax.random.key(0), emb))  # replay ready
    got, _ = jax.jit(step2)(jax.tree.map(jnp.copy, s0), None)
    # The reference: the same step with the replay marked empty (it acts and stores the transitions but does not
    # update: fewer than batch_size rows), its true size restored, then two updates by hand.
    key = jax.random.fold_in(jax.random.wrap_key_data(s0.key), s0.step)
    k_update = jax.random.split(key, 4)[3]
    acted, _ = jax.jit(step1)(s0.replace(replay=s0.replay.replace(size=jnp.int32(0))), None)
    ref = acted.replace(replay=acted.replay.replace(size=s0.replay.size + 2))
    update = jax.jit(ddpg.make_update(two))
    for k in jax.random.split(k_update, 2):
        ref, _ = update(ref, k)
    assert int(got.updates) == int(s0.updates) + 2
    for x, y in zip(jax.tree.leaves((got.actor, got.critic, got.critic_target, got.replay.leaves)),
                    jax.tree.leaves((ref.actor, ref.critic, ref.critic_target, ref.replay.leaves))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(got.actor)[0], jax.tree.leaves(jax.jit(step1)(s0, None)[0].actor)[0])
    s, m = train2(init(jax.random.key(0), emb), 6)
    assert int(s.updates) == 2 * (6 - 3) and np.isfinite(m["critic_loss"])


def test_seeds_reproduce_and_differ(setup):
    _, _, train, emb = setup
    init, train_fn, _ = build(train, small_cfg())
    run = lambda seed: train_fn(init(jax.random.key(seed), emb), 20)[0]
    a, b, c = run(0), run(0), run(1)
    for x, y in zip(jax.tree.leaves(a.actor), jax.tree.leaves(b.actor)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(jax.tree.leaves(a.actor)[0], jax.tree.leaves(c.actor)[0])


def test_replay_holds_only_training_users_and_twin_critics(setup):
    inter, split, train, emb = setup
    cfg = small_cfg(twin=True, prioritized=False)
    init, train_fn, _ = build(train, cfg)
    s, m = train_fn(init(jax.random.key(0), emb), 30)
    stored = np.asarray(s.replay.data.user[: int(s.replay.size)])
    heldout_users = set(inter.user[split.val]) | set(inter.user[split.test])
    assert stored.size == 60 and not (set(stored.tolist()) & heldout_users)
    assert jax.tree.leaves(s.critic)[0].shape[0] == 2  # two critics stacked
    assert np.isfinite(m["critic_loss"])


def test_vmap_over_seeds_equals_separate_runs(setup):
    _, _, train, emb = setup
    init, train_fn, step = build(train, small_cfg())
    keys = jax.random.split(jax.random.key(7), 2)
    batched = jax.vmap(lambda k: init(k, emb))(keys)
    run = jax.jit(jax.vmap(lambda st: jax.lax.scan(step, st, None, length=6)[0]))(batched)
    for i in range(2):
        single = train_fn(init(keys[i], emb), 6)[0]
        for x, y in zip(jax.tree.leaves(single.actor), jax.tree.leaves(run.actor)):
            np.testing.assert_allclose(x, y[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("horizon_terminal", [False, True])
def test_horizon_is_a_truncation_that_bootstraps(setup, horizon_terminal):
    """Every episode stopped by the time limit (horizon 1, no positives rule) is stored as non-terminal, so
    its target is r + gamma Q'(s', mu'(s')); only the seed's option makes it terminal (target r)."""
    _, _, train, emb = setup
    cfg = small_cfg(horizon=1, done_at_positives=False, horizon_terminal=horizon_terminal)
    init, train_fn, _ = build(train, cfg)
    state, _ = train_fn(init(jax.random.key(0), emb), 5)
    stored = np.asarray(state.replay.data.terminal[:int(state.replay.size)])
    assert stored.size == 10 and bool(np.all(stored)) == horizon_terminal and bool(np.any(stored)) == horizon_terminal
    critic_loss, _ = ddpg.make_losses(cfg)
    batch = jax.tree.map(lambda x: x[:4], state.replay.data)
    _, (td, _) = critic_loss(state.critic, state.critic_target, state.actor_target, emb, batch, jnp.ones(4), cfg.gamma)
    actor, critic = ddpg.networks(cfg)
    u, h, hn = emb.user[batch.user], emb.item[batch.items], emb.item[batch.next_items]
    q = critic.apply(state.critic, u, h, batch.action)
    q_next = critic.apply(state.critic_target, u, hn, actor.apply(state.actor_target, u, hn))
    y = batch.reward if horizon_terminal else batch.reward + cfg.gamma * q_next
    np.testing.assert_allclose(td, y - q, rtol=1e-5, atol=1e-6)


def test_unit_actions_stay_on_the_sphere_and_rank_like_their_direction(setup):
    """``action=unit``: the policy's and the noisy stored actions have length 1; ranking by <item, a> is
    unchanged by the length of a, which is why the option loses nothing."""
    _, _, train, emb = setup
    cfg = small_cfg(action="unit", sigma=0.1)
    init, train_fn, _ = build(train, cfg)
    state, _ = train_fn(init(jax.random.key(0), emb), 6)
    stored = np.asarray(state.replay.data.action[:int(state.replay.size)])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    a = ddpg.act(cfg, state.actor, emb.user[:3], emb.item[jnp.zeros((3, cfg.n_state), jnp.int32)])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=1), 1.0, rtol=1e-5)
    scores = np.asarray(a @ emb.item.T)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1), np.argsort(-np.asarray((3.0 * a) @ emb.item.T), axis=1))
    tanh = ddpg.act(small_cfg(), state.actor, emb.user[:3], emb.item[jnp.zeros((3, cfg.n_state), jnp.int32)])
    assert np.all(np.abs(np.asarray(tanh)) < 1.0) and not np.allclose(np.linalg.norm(np.asarray(tanh), axis=1), 1.0)
