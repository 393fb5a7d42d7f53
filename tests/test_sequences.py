"""Sequence windows and next-item queries on hand-made logs: padding, user boundaries, no future leakage."""
import os
from pathlib import Path

import numpy as np
import pytest

from jaxrec.data.interactions import Interactions
from jaxrec.data.sequences import next_item_queries, seen_mask, sequence_chunks, target_seen
from jaxrec.data.splits import leave_last_out, train_view, user_split
from tests.helpers import REPO, make_interactions, synthetic_interactions

P = 30  # PAD = n_items
# user 0: items 10, 11, 12, 13 (ratings 1..4); user 1: items 20, 21, 22 (ratings 5, 1, 2)
ROWS = [(0, 10, 1, 0), (0, 11, 2, 1), (0, 12, 3, 2), (0, 13, 4, 3), (1, 20, 5, 0), (1, 21, 1, 1), (1, 22, 2, 2)]


def log():
    return make_interactions(ROWS, n_items=P)


def test_every_transition_state_action_rewards_next_states_by_hand():
    c = sequence_chunks(log(), window=2, n_steps=2, chunk=1, min_history=1)
    # One row per transition p >= 1: items[k] = x_{p-2} .. x_{p+1}, PAD outside the user's history.
    np.testing.assert_array_equal(c.items, [[P, 10, 11, 12], [10, 11, 12, 13], [11, 12, 13, P],
                                            [P, 20, 21, 22], [20, 21, 22, P]])
    np.testing.assert_array_equal(c.states()[0], [[P, 10], [10, 11], [11, 12]])  # s_1, s_2, s_3
    np.testing.assert_array_equal(c.actions(), [[11, 12], [12, 13], [13, P], [21, 22], [22, P]])
    np.testing.assert_array_equal(c.reward, [[2, 3], [3, 4], [4, 0], [1, 2], [2, 0]])
    np.testing.assert_array_equal(c.valid, [[1, 1], [1, 1], [1, 0], [1, 1], [1, 0]])
    # The episode ends after each user's last item (13 and 22).
    np.testing.assert_array_equal(c.terminal, [[0, 0], [0, 1], [1, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(c.sample, [[1]] * 5)
    np.testing.assert_array_equal(c.user, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(c.start, [1, 2, 3, 1, 2])
    assert c.n_samples == 5 and c.n_states == 3 and c.pad == P


def test_empty_history_state_and_chunks_of_consecutive_transitions():
    c = sequence_chunks(log(), window=2, n_steps=2, chunk=2, min_history=0)
    # user 0: transitions p = 0..3 in two chunks; user 1: p = 0..2, the second chunk half full.
    np.testing.assert_array_equal(c.items, [[P, P, 10, 11, 12], [10, 11, 12, 13, P], [P, P, 20, 21, 22],
                                            [20, 21, 22, P, P]])
    np.testing.assert_array_equal(c.states()[0, 0], [P, P])  # the empty state before the first item
    np.testing.assert_array_equal(c.sample, [[1, 1], [1, 1], [1, 1], [1, 0]])
    assert c.n_samples == 7


def test_supervised_layout_without_lookahead():
    c = sequence_chunks(log(), window=3, n_steps=0, chunk=2, min_history=1)
    assert c.n_actions == 2 and c.items.shape == (3, 5)  # user 0: p = 1..3 in 2 chunks; user 1: p = 1, 2
    np.testing.assert_array_equal(c.items[0], [P, P, 10, 11, 12])


def naive_windows(inter, window, n_steps, chunk, min_history):
    """A loop over users and positions (the reference the vectorised builder must match)."""
    rows = []
    n_actions = chunk + max(n_steps, 1) - 1
    for u in range(inter.n_users):
        items = list(inter.item[inter.user == u])
        n = len(items)
        for p0 in range(min_history, n, chunk):
            seq = [items[q] if 0 <= q < n else inter.n_items for q in range(p0 - window, p0 + n_actions)]
            rows.append((u, seq, [p0 + i < n for i in range(chunk)]))
    return rows


@pytest.mark.parametrize("window, n_steps, chunk, min_history", [(3, 2, 1, 1), (4, 6, 3, 0), (2, 0, 5, 2), (10, 6, 8, 1)])
def test_matches_a_naive_loop_and_never_crosses_users(window, n_steps, chunk, min_history):
    inter = synthetic_interactions(n_users=12, n_items=40, per_user=(3, 25), seed=4)
    c = sequence_chunks(inter, window, n_steps, chunk, min_history)
    ref = naive_windows(inter, window, n_steps, chunk, min_history)
    assert len(ref) == len(c)
    for k, (u, seq, sample) in enumerate(ref):
        assert c.user[k] == u
        np.testing.assert_array_equal(c.items[k], seq)
        np.testing.assert_array_equal(c.sample[k], sample)
        # Every real item of a row belongs to the row's user.
        own = set(inter.item[inter.user == u])
        assert set(c.items[k][c.items[k] != inter.n_items]) <= own


def test_no_future_leakage_in_states():
    inter = synthetic_interactions(n_users=10, n_items=60, per_user=(5, 30), seed=2)
    c = sequence_chunks(inter, 5, 3, 4, 1)
    pos_of = {}  # (user, item) -> position (items are unique per user in the synthetic log)
    for u, i, p in zip(inter.user, inter.item, inter.position):
        pos_of[int(u), int(i)] = int(p)
    for k in range(len(c)):
        for i in range(c.n_states):
            state = c.items[k, i:i + 5]
            for item in state[state != inter.n_items]:
                # The state of position p0 + i holds only items logged strictly before it.
                assert pos_of[int(c.user[k]), int(item)] < c.start[k] + i


def test_training_windows_never_reach_held_out_rows():
    inter = log()
    split = leave_last_out(inter)  # user 0: 12 is val, 13 test; user 1: 21 val, 22 test
    c = sequence_chunks(train_view(inter, split), window=2, n_steps=6, chunk=1)
    # User 0 trains on 10 -> 11 only; user 1 has one training row, so no transition.
    np.testing.assert_array_equal(c.items, [[P, 10, 11] + [P] * 5])
    assert not np.isin(c.items, [12, 13, 21, 22]).any()
    # The last training action ends the (training) episode.
    np.testing.assert_array_equal(c.terminal[:, 0], [True])


def test_next_item_queries_states_and_seen_items():
    inter = log()
    # History = user 0's 4 rows and user 1's 3 rows; targets: rows 2, 3 (items 12, 13) and 6 (item 22).
    q = next_item_queries(inter, np.arange(7), np.array([2, 3, 6]), window=3)
    np.testing.assert_array_equal(q.state, [[P, 10, 11], [10, 11, 12], [P, 20, 21]])
    np.testing.assert_array_equal(q.target, [12, 13, 22])
    np.testing.assert_array_equal(q.position, [2, 3, 2])
    seen = seen_mask(q, np.arange(3))
    # Only items before the target are seen: never the target itself, never a later item.
    assert set(np.flatnonzero(seen[0])) == {10, 11}
    assert set(np.flatnonzero(seen[1])) == {10, 11, 12}
    assert set(np.flatnonzero(seen[2])) == {20, 21}
    np.testing.assert_array_equal(target_seen(q), [False, False, False])


def test_queries_use_only_the_given_history_and_detect_repeats():
    # user 0 logs item 5 twice: the second one is a repeat (its target was seen before).
    inter = make_interactions([(0, 5, 1, 0), (0, 6, 1, 1), (0, 5, 1, 2), (1, 7, 1, 0), (1, 8, 1, 1)], n_items=9)
    q = next_item_queries(inter, np.array([0, 1, 2, 4]), np.array([1, 2, 4]), window=2)
    np.testing.assert_array_equal(q.state, [[9, 5], [5, 6], [9, 9]])  # row 3 is not visible history
    np.testing.assert_array_equal(target_seen(q), [False, True, False])
    np.testing.assert_array_equal(seen_mask(q, np.array([2]))[0], np.zeros(9, bool))
    with pytest.raises(ValueError):
        next_item_queries(inter, np.array([0, 1]), np.array([2]), window=2)


ML1M = REPO / "data" / "ml-1m"
SHARED_DATA = Path(os.environ.get("JAXREC_SHARED_DATA") or REPO.parent / "shared" / "data")
ML1M_NPZ = SHARED_DATA / "ml-1m" / "derived" / "ml-1m_ratings_ordered.npz"


def ml1m():
    """The prepared ML-1M if present, else the same interactions from ../shared/data's derived file."""
    if (ML1M / "interactions.npz").exists():
        from jaxrec.data.prepared import load_prepared

        return load_prepared(ML1M)[0]
    with np.load(ML1M_NPZ) as z:
        users, user = np.unique(z["user_id"], return_inverse=True)
        items, item = np.unique(z["movie_id"], return_inverse=True)
        order = np.lexsort((z["order_in_user"], user))
        return Interactions(user=user[order].astype(np.int32), item=item[order].astype(np.int32),
                            rating=z["rating"][order].astype(np.float32), order=z["order_in_user"][order].astype(np.int64),
                            n_users=len(users), n_items=len(items), order_is_time=False)


@pytest.mark.skipif(not (ML1M / "interactions.npz").exists() and not ML1M_NPZ.exists(),
                    reason="ML-1M not present (neither data/ml-1m nor ../shared/data)")
def test_ml1m_windows_count_every_training_transition():
    """Every training row after a user's first is one transition, on the real ML-1M split (the build time is
    measured by benchmarks/sqn_throughput.py, not asserted here: timing belongs in benchmarks)."""
    inter = ml1m()
    assert (len(inter), inter.n_users, inter.n_items) == (1000209, 6040, 3706)
    train = train_view(inter, user_split(inter, (0.8, 0.1, 0.1), seed=0))
    for chunk in (1, 8):  # every transition on its own, and the m3s default
        c = sequence_chunks(train, 10, 6, chunk, 1)
        assert c.n_samples == len(train) - len(np.unique(train.user))


def test_bad_arguments():
    with pytest.raises(ValueError):
        sequence_chunks(log(), window=0)
