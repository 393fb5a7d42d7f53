"""The seed-style torch baseline of benchmarks/ddpg_throughput.py computes what jaxrec.rl.ddpg computes.

Checked: its defaults are DDPGConfig's; its numpy simulator replays a hand-worked episode exactly like
``jaxrec.envs.simulator`` and agrees with it step by step on random episodes; one update from the same
parameters, replay contents, batch and IS weights gives the same parameters, targets, losses and priorities;
the loop runs a few steps (updating once the replay holds a batch).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.baselines import ddpg_torch as B  # noqa: E402
from jaxrec.envs import simulator as S  # noqa: E402
from jaxrec.rl import ddpg  # noqa: E402
from jaxrec.rl import replay as R  # noqa: E402
from tests.helpers import make_interactions, synthetic_interactions  # noqa: E402

# As tests/test_simulator.py: user 0 rated items 0..5, user 1 rated 5, 4, 3, 2, 1, 0 (in that order); 6-8 unrated.
ROWS = [(0, 0, 5, 1), (0, 1, 4, 2), (0, 2, 5, 3), (0, 3, 3, 4), (0, 4, 4, 5), (0, 5, 1, 6),
        (1, 5, 4, 1), (1, 4, 4, 2), (1, 3, 5, 3), (1, 2, 2, 4), (1, 1, 4, 5), (1, 0, 4, 6)]
N_ITEMS = 9


STYLES = pytest.mark.parametrize("style", ["lean", "seed"])
ENVS = {"lean": B.OfflineEnv, "seed": B.SeedStyleEnv}
AGENTS = {"lean": B.DDPGAgent, "seed": B.SeedStyleAgent}


def _envs(inter, item_repr, n_state, top_k, style="lean"):
    cfg = S.SimConfig(n_state=n_state, top_k=top_k)
    sim = S.make_sim_data(inter, cfg)
    env = ENVS[style](inter.user, inter.item, inter.rating, inter.n_users, inter.n_items,
                       torch.from_numpy(np.asarray(item_repr, np.float32)), n_state=n_state, top_k=top_k)
    return sim, cfg, env


def test_defaults_are_ddpg_config_defaults():
    cfg = ddpg.DDPGConfig()
    for name, value in B.DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert cfg.srm == "ave" and cfg.prioritized and not cfg.twin and not cfg.faithful_target
    assert cfg.done_at_positives and not cfg.faithful_append and not cfg.init_positives_only and not cfg.mf_reward


@STYLES
def test_simulator_hand_worked_episode_matches_ours(style):
    inter = make_interactions(ROWS, n_items=N_ITEMS)
    sim, cfg, env = _envs(inter, np.eye(N_ITEMS), n_state=2, top_k=2, style=style)
    np.testing.assert_array_equal(env.available, np.flatnonzero(np.asarray(sim.available)))
    np.testing.assert_array_equal(env.n_pos, sim.n_pos)
    ours = S.reset(sim, cfg, jnp.int32(1))
    env.reset(user=1)
    assert env.items == [5, 4] == np.asarray(ours.items).tolist()
    # Step 1: 3 (rated 5: +1, appended) then 7 (unrated: -0.5). Step 2: 5 and 3 score highest but were
    # recommended: 1 (rated 4: +0.5, appended) then 2 (rated 2: -0.5); 6 recommended >= 5 positives: done.
    actions = [np.array([0, 0, 0, 10, 0, 0, 0, 9, 0], np.float32), np.array([0, 7, 6, 8, 0, 9, 0, 0, 0], np.float32)]
    expected = [([4, 3], [3, 7], 0.5, False), ([3, 1], [1, 2], 0.0, True)]
    for action, (items, recs, reward, done) in zip(actions, expected):
        ours, r, d, info = S.step(sim, cfg, ours, jnp.asarray(action), jnp.eye(N_ITEMS))
        next_items, r_b, d_b, recs_b = env.step(torch.from_numpy(action))
        assert next_items == items == np.asarray(ours.items).tolist()
        assert recs_b == recs == np.asarray(info["items"]).tolist()
        assert r_b == pytest.approx(reward) and float(r) == pytest.approx(reward)
        assert d_b == done == bool(d)


@STYLES
def test_simulator_agrees_with_ours_on_random_episodes(style):
    inter = synthetic_interactions(n_users=30, n_items=40, per_user=(15, 30), seed=1)
    rng = np.random.default_rng(0)
    item_repr = rng.standard_normal((inter.n_items, 6)).astype(np.float32)
    sim, cfg, env = _envs(inter, item_repr, n_state=4, top_k=3, style=style)
    np.testing.assert_array_equal(env.available, np.flatnonzero(np.asarray(sim.available)))
    step = jax.jit(lambda s, a: S.step(sim, cfg, s, a, jnp.asarray(item_repr)))
    n_steps = 0
    for user in env.available:
        ours = S.reset(sim, cfg, jnp.int32(user))
        env.reset(user=user)
        assert env.items == np.asarray(ours.items).tolist()
        done = False
        while not done:
            action = rng.standard_normal(6).astype(np.float32)
            ours, r, d, info = step(ours, jnp.asarray(action))
            items, r_b, done, recs = env.step(torch.from_numpy(action))
            assert recs == np.asarray(info["items"]).tolist()
            assert items == np.asarray(ours.items).tolist()
            assert r_b == pytest.approx(float(r), abs=1e-6) and done == bool(d)
            n_steps += 1
    assert n_steps > len(env.available)  # episodes of several steps were compared


def _load_flax(module: torch.nn.Module, params, layers):
    """Copies Flax Dense kernels [in, out] / biases and the state module's weights into torch layers."""
    p = params["params"]
    with torch.no_grad():
        module.srm.position_weights.copy_(torch.from_numpy(np.array(p["srm"]["position_weights"])))
        for name, layer in zip(sorted(k for k in p if k.startswith("Dense_")), layers):
            layer.weight.copy_(torch.from_numpy(np.asarray(p[name]["kernel"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))


def _flat_flax(params, layers_names):
    p = params["params"]
    out = [np.asarray(p["srm"]["position_weights"])]
    for name in layers_names:
        out += [np.asarray(p[name]["kernel"]).T, np.asarray(p[name]["bias"])]
    return out


def _flat_torch(module, layers):
    out = [module.srm.position_weights.detach().numpy()]
    for layer in layers:
        out += [layer.weight.detach().numpy(), layer.bias.detach().numpy()]
    return out


@STYLES
def test_one_update_matches_ours(style):
    d, n_state, n_users, n_items, n = 8, 4, 5, 12, 20
    cfg = ddpg.DDPGConfig(dim=d, hidden=16, n_state=n_state, top_k=3, batch_size=8, replay_capacity=32)
    inter = synthetic_interactions(n_users=n_users, n_items=n_items, per_user=(8, 12), seed=2)
    sim_cfg = cfg.sim_config(4.0)
    init, _ = ddpg.make_train(cfg, S.make_sim_data(inter, sim_cfg), sim_cfg)
    rng = np.random.default_rng(0)
    emb = ddpg.Embeddings(user=jnp.asarray(rng.standard_normal((n_users, d)), jnp.float32),
                          item=jnp.asarray(rng.standard_normal((n_items, d)), jnp.float32))
    state = init(jax.random.key(0), emb)
    # Distinct targets, so that the target networks matter.
    state = state.replace(actor_target=jax.tree.map(lambda x: 0.9 * x, state.actor_target),
                          critic_target=jax.tree.map(lambda x: 1.1 * x, state.critic_target))
    tr = ddpg.Transition(user=jnp.asarray(rng.integers(0, n_users, n), jnp.int32),
                         items=jnp.asarray(rng.integers(0, n_items, (n, n_state)), jnp.int32),
                         action=jnp.asarray(rng.standard_normal((n, d)), jnp.float32),
                         reward=jnp.asarray(rng.standard_normal(n), jnp.float32),
                         next_items=jnp.asarray(rng.integers(0, n_items, (n, n_state)), jnp.int32),
                         terminal=jnp.asarray(rng.random(n) < 0.3))
    replay = R.add(state.replay, tr)
    # Unequal priorities, so that the IS weights are not all 1.
    replay = R.update_priorities(replay, jnp.arange(n), jnp.asarray(rng.random(n) * 3, jnp.float32), cfg.per_alpha)
    state = state.replace(replay=replay, updates=jnp.int32(7))

    user_t, item_t = torch.from_numpy(np.array(emb.user)), torch.from_numpy(np.array(emb.item))
    env = ENVS[style](inter.user, inter.item, inter.rating, n_users, n_items, item_t, n_state=n_state, top_k=3)
    agent = AGENTS[style](env, user_t, item_t,
                        dim=d, hidden=16, n_state=n_state, top_k=3, batch_size=8, replay_capacity=32)
    actor_layers = [agent.actor.fc[0], agent.actor.fc[2], agent.actor.fc[4]]
    critic_layers = [agent.critic.fc1, agent.critic.fc2, agent.critic.fc3, agent.critic.head]
    targets = ([agent.actor_target.fc[0], agent.actor_target.fc[2], agent.actor_target.fc[4]],
               [agent.critic_target.fc1, agent.critic_target.fc2, agent.critic_target.fc3, agent.critic_target.head])
    _load_flax(agent.actor, state.actor, actor_layers)
    _load_flax(agent.critic, state.critic, critic_layers)
    _load_flax(agent.actor_target, state.actor_target, targets[0])
    _load_flax(agent.critic_target, state.critic_target, targets[1])
    buf = agent.buffer
    for i in range(n):
        buf.add(int(tr.user[i]), np.asarray(tr.items[i]), np.asarray(tr.action[i]), float(tr.reward[i]),
                np.asarray(tr.next_items[i]), bool(tr.terminal[i]))
    buf.update_priorities(np.arange(n), rng.random(n))  # overwritten below with ours' leaves
    leaves = np.asarray(state.replay.priorities)
    for i in range(n):
        buf._set(i, float(leaves[i]))
    buf.max_priority = float(state.replay.max_priority)
    agent.updates = 7

    # Ours: one update; the batch it samples is re-drawn with the same key and beta for the baseline.
    key = jax.random.key(5)
    beta = cfg.per_beta + cfg.per_beta_increment * 7
    _, idx, weights = R.sample(state.replay, key, cfg.batch_size, beta)
    new, losses = jax.jit(ddpg.make_update(cfg))(state, key)
    c_loss, a_loss = agent.update(slots=np.array(idx), weights=np.array(weights))

    assert c_loss == pytest.approx(float(losses["critic_loss"]), rel=1e-5)
    assert a_loss == pytest.approx(float(losses["actor_loss"]), rel=1e-5)
    dense_a, dense_c = ["Dense_0", "Dense_1", "Dense_2"], ["Dense_0", "Dense_1", "Dense_2", "Dense_3"]
    pairs = [(new.actor, agent.actor, actor_layers, dense_a), (new.critic, agent.critic, critic_layers, dense_c),
             (new.actor_target, agent.actor_target, targets[0], dense_a),
             (new.critic_target, agent.critic_target, targets[1], dense_c)]
    for flax_p, module, layers, names in pairs:
        for x, y in zip(_flat_flax(flax_p, names), _flat_torch(module, layers)):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
    # The update moved the parameters (Adam's first step is ~lr per entry), so the match is not vacuous.
    assert not np.allclose(_flat_flax(new.actor, dense_a)[1], _flat_flax(state.actor, dense_a)[1], atol=1e-6)
    new_leaves = np.asarray(new.replay.priorities)[:n]
    np.testing.assert_allclose([buf.tree[buf.leaf0 + i] for i in range(n)], new_leaves, rtol=1e-4)
    assert buf.max_priority == pytest.approx(float(new.replay.max_priority), rel=1e-5)


@STYLES
def test_baseline_loop_runs_and_updates(style):
    inter = synthetic_interactions(n_users=30, n_items=40, per_user=(15, 30), seed=1)
    rng = np.random.default_rng(0)
    agent, env = B.build(inter.user, inter.item, inter.rating, inter.n_users, inter.n_items,
                         0.1 * rng.standard_normal((inter.n_users, 8)), 0.1 * rng.standard_normal((inter.n_items, 8)),
                         num_threads=None, style=style, dim=8, hidden=16, n_state=4, top_k=3, batch_size=8, replay_capacity=64)
    rewards = [agent.step()[0] for _ in range(40)]
    assert agent.steps == 40 and agent.buffer.size == 40
    assert agent.updates == 40 - 7  # updates start once 8 transitions are stored
    assert agent.episodes >= 1 and all(-3.0 <= r <= 3.0 for r in rewards)  # 3 items, each in [-1, 1]
    assert all(np.isfinite(p.detach().numpy()).all() for p in agent.actor.parameters())
    assert set(agent.buffer.user[:40].tolist()) <= set(env.available.tolist())
    c_loss, a_loss = agent.update()
    assert np.isfinite(c_loss) and np.isfinite(a_loss)


def test_seed_style_loop_equals_lean_loop():
    """The seed's per-step idioms change the speed, not the numbers: 30 steps of both styles from the same seed
    give the same rewards, episodes, replay contents, priorities and parameters."""
    inter = synthetic_interactions(n_users=30, n_items=40, per_user=(15, 30), seed=1)
    rng = np.random.default_rng(0)
    u, i = 0.1 * rng.standard_normal((inter.n_users, 8)), 0.1 * rng.standard_normal((inter.n_items, 8))
    runs = {}
    for style in ("lean", "seed"):
        agent, _ = B.build(inter.user, inter.item, inter.rating, inter.n_users, inter.n_items, u, i, num_threads=None,
                           style=style, dim=8, hidden=16, n_state=4, top_k=3, batch_size=8, replay_capacity=64)
        rewards = [agent.step()[0] for _ in range(30)]
        runs[style] = (agent, rewards)
    (lean, r_lean), (seed, r_seed) = runs["lean"], runs["seed"]
    np.testing.assert_allclose(r_seed, r_lean, atol=1e-6)
    assert seed.episodes == lean.episodes and seed.updates == lean.updates == 30 - 7
    np.testing.assert_array_equal(seed.buffer.items[:30], lean.buffer.items[:30])
    np.testing.assert_allclose(seed.buffer.action[:30], lean.buffer.action[:30], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(seed.buffer.tree), np.asarray(lean.buffer.tree), rtol=1e-3, atol=1e-6)
    for a, b in zip(seed.actor.parameters(), lean.actor.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_build_refuses_an_unknown_style():
    with pytest.raises(ValueError, match="style"):
        B.build(np.zeros(1), np.zeros(1), np.ones(1), 1, 1, np.zeros((1, 2)), np.zeros((1, 2)), num_threads=None,
                style="fast")
