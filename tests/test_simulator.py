"""The offline simulator against hand-worked episodes (the seed's rules with its bugs fixed:
docs/differences.md, DRR table)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.envs import simulator as S
from tests.helpers import make_interactions

# One user (0) who rated items 0..5 in this order; user 1 rated 6 items too.
ROWS = [(0, 0, 5, 1), (0, 1, 4, 2), (0, 2, 5, 3), (0, 3, 3, 4), (0, 4, 4, 5), (0, 5, 1, 6),
        (1, 5, 4, 1), (1, 4, 4, 2), (1, 3, 5, 3), (1, 2, 2, 4), (1, 1, 4, 5), (1, 0, 4, 6)]
N_ITEMS = 9  # items 6, 7, 8 were never rated


def _sim(**kw):
    inter = make_interactions(ROWS, n_items=N_ITEMS)
    cfg = S.SimConfig(n_state=2, top_k=2, **kw)
    return S.make_sim_data(inter, cfg), cfg


def _pick(*items):
    """An (item_repr, action) pair whose scores rank ``items`` first, in that order."""
    scores = np.zeros(N_ITEMS, np.float32)
    for rank, i in enumerate(items):
        scores[i] = 10.0 - rank
    return jnp.eye(N_ITEMS), jnp.asarray(scores)


def test_make_sim_data():
    sim, _ = _sim()
    np.testing.assert_array_equal(sim.init_items, [[0, 1], [5, 4]])
    np.testing.assert_array_equal(sim.n_pos, [4, 5])
    np.testing.assert_array_equal(sim.available, [True, True])
    assert int(sim.rating2[0, 3]) == 6 and int(sim.rating2[0, 7]) == 0


def test_hand_worked_episode():
    sim, cfg = _sim()
    # User 1 rated 5:4, 4:4, 3:5, 2:2, 1:4, 0:4 in that order; 5 positives.
    s = S.reset(sim, cfg, jnp.int32(1))
    np.testing.assert_array_equal(s.items, [5, 4])
    assert int(s.n_recommended) == 2 and bool(s.recommended[5]) and bool(s.recommended[4])
    # Step 1: recommend 3 (rated 5 -> +1) then 7 (unrated -> -0.5): reward 0.5; 3 enters the state.
    repr_, action = _pick(3, 7)
    s, r, done, info = S.step(sim, cfg, s, action, repr_)
    np.testing.assert_array_equal(info["items"], [3, 7])
    np.testing.assert_allclose(info["rewards"], [1.0, -0.5])
    assert float(r) == pytest.approx(0.5) and not bool(done)  # 4 recommended < 5 positives
    np.testing.assert_array_equal(s.items, [4, 3])
    # Step 2: the agent prefers 5 and 3 again, but they were recommended: skipped. The best new items
    # are 1 (rated 4 -> +0.5, appended) then 2 (rated 2 -> -0.5, not appended).
    scores = jnp.asarray([0.0, 7.0, 6.0, 8.0, 0.0, 9.0, 0.0, 0.0, 0.0])
    s, r, done, info = S.step(sim, cfg, s, scores, jnp.eye(N_ITEMS))
    np.testing.assert_array_equal(info["items"], [1, 2])
    assert float(r) == pytest.approx(0.0)
    np.testing.assert_array_equal(s.items, [3, 1])
    # 6 recommended >= 5 positives of user 1: the episode ends (the seed's rule, user index fixed), a
    # terminal state even though the horizon was not reached.
    assert bool(done) and bool(info["terminal"]) and int(s.n_recommended) == 6
    assert float(s.ep_return) == pytest.approx(0.5)


def test_two_positives_enter_in_descending_score_order():
    sim, cfg = _sim()
    s = S.reset(sim, cfg, jnp.int32(0))
    repr_, action = _pick(4, 2)  # both positive: 4 then 2
    s, r, _, _ = S.step(sim, cfg, s, action, repr_)
    np.testing.assert_array_equal(s.items, [4, 2])  # oldest dropped, most relevant first
    assert float(r) == pytest.approx(1.5)


def test_faithful_append_and_horizon_and_constant_unrated():
    sim, cfg = _sim(faithful_append=True, horizon=1, unrated_reward=-1.0, done_at_positives=False)
    s = S.reset(sim, cfg, jnp.int32(0))
    repr_, action = _pick(2, 3)  # 2 positive, 3 rated 3: with a positive present both enter (seed)
    s, r, done, info = S.step(sim, cfg, s, action, repr_)
    np.testing.assert_array_equal(s.items, [2, 3])
    assert bool(done) and not bool(info["terminal"])  # horizon 1: a time limit, not a terminal state
    repr_, action = _pick(7, 8)
    _, r, _, _ = S.step(sim, cfg, S.reset(sim, cfg, jnp.int32(0)), action, repr_)
    assert float(r) == pytest.approx(-2.0)


def test_mf_reward_for_unrated_items():
    inter = make_interactions(ROWS, n_items=N_ITEMS)
    cfg = S.SimConfig(n_state=2, top_k=2, mf_reward=True)
    user_f = np.array([[1.0], [0.0]], np.float32)
    item_f = np.arange(N_ITEMS, dtype=np.float32)[:, None] * 0.1
    bias = np.zeros(2 + N_ITEMS + 1, np.float32)
    bias[-1] = 3.0  # global mean
    sim = S.make_sim_data(inter, cfg, mf=(user_f, item_f, bias))
    rewards, rated = S.item_rewards(sim, cfg, jnp.int32(0), jnp.array([7, 2]))
    # item 7 unrated: predicted 3 + 0.7 = 3.7 -> (3.7 - 3) / 2 = 0.35; item 2 rated 5 -> 1.
    np.testing.assert_allclose(rewards, [0.35, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(rated, [False, True])


def test_no_repeats_over_a_long_episode_and_vmap_matches_single():
    sim, cfg = _sim(done_at_positives=False)
    key = jax.random.key(0)
    actions = jax.random.normal(key, (3, 2, N_ITEMS))
    states = jax.vmap(S.reset, in_axes=(None, None, 0))(sim, cfg, jnp.array([0, 1]))
    v_step = jax.vmap(S.step, in_axes=(None, None, 0, 0, None))
    seen = [set(np.asarray(states.items[u]).tolist()) for u in range(2)]
    for t in range(3):
        singles = [S.step(sim, cfg, jax.tree.map(lambda x: x[u], states), actions[t, u], jnp.eye(N_ITEMS)) for u in range(2)]
        states, r, done, info = v_step(sim, cfg, states, actions[t], jnp.eye(N_ITEMS))
        for u in range(2):
            np.testing.assert_allclose(r[u], singles[u][1])
            np.testing.assert_array_equal(states.items[u], singles[u][0].items)
            new = set(np.asarray(info["items"][u]).tolist())
            assert not (new & seen[u])
            seen[u] |= new
    # 2 state items + 3 steps x 2 = 8 of 9 items; one more step would need 2 > 1 remaining: terminal.
    assert bool(jnp.all(states.done)) and bool(jnp.all(info["terminal"]))


def test_append_items_keeps_last_n():
    np.testing.assert_array_equal(S.append_items(jnp.array([1, 2, 3]), jnp.array([7, 8, 9]), jnp.array([True, False, True])), [3, 7, 9])
    np.testing.assert_array_equal(S.append_items(jnp.array([1, 2, 3]), jnp.array([7, 8]), jnp.array([False, False])), [1, 2, 3])
    np.testing.assert_array_equal(S.append_items(jnp.array([1, 2]), jnp.array([7, 8, 9]), jnp.array([True, True, True])), [8, 9])


def test_sample_user_only_available():
    inter = make_interactions(ROWS + [(2, 0, 5, 1), (2, 1, 5, 2)], n_items=N_ITEMS)
    sim = S.make_sim_data(inter, S.SimConfig(n_state=2, top_k=2))
    assert not bool(sim.available[2])  # 2 positives are not more than the 2 state items
    users = jax.vmap(S.sample_user, in_axes=(None, 0))(sim, jax.random.split(jax.random.key(1), 200))
    assert set(np.asarray(users).tolist()) == {0, 1}
