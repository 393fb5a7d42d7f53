import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.splits import EvalView
from jaxrec.eval.protocols import drr_protocol, full_ranking, rows_to_mask, state_rows
from tests.helpers import make_interactions

# Two users, 6 items. user 0 rows 0-4, user 1 rows 5-8.
ROWS = [(0, 0, 5, 1), (0, 1, 2, 2), (0, 2, 4, 3), (0, 3, 5, 4), (0, 4, 1, 5),
        (1, 5, 4, 1), (1, 1, 3, 2), (1, 0, 5, 3), (1, 2, 4, 4)]


def test_rows_to_mask():
    m = rows_to_mask(np.array([2, 5]), np.array([5, 1, 2, 2]), np.array([0, 3, 1, 4]), 6)
    expected = np.zeros((2, 6), bool)
    expected[1, 0] = expected[0, 1] = expected[0, 4] = True
    np.testing.assert_array_equal(m, expected)


def test_full_ranking_hand_computed():
    inter = make_interactions(ROWS)
    # Held-out view by hand: user 0 sees rows 0,1 and must predict rows 2,3,4; user 1 sees 5,6 -> 7,8.
    view = EvalView(users=np.array([0, 1]), context=np.array([0, 1, 5, 6]), target=np.array([2, 3, 4, 7, 8]))
    item_scores = jnp.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    seen = []

    def score_fn(users, context):
        seen.append(np.asarray(users))
        return jnp.broadcast_to(item_scores, context.shape)

    means, n = full_ranking(score_fn, inter, view, relevant_threshold=4.0, ks=(1, 2), batch_users=1)
    # user 0: excluded {0,1}; ranking 2,3,4,5; relevant (>=4) {2,3} -> hr@1 1, ndcg@2 1
    # user 1: excluded {5,1}; ranking 0,2,3,4; relevant {0,2} -> hr@1 1, ndcg@2 1
    assert n == 2 and means["hr@1"] == 1.0 and means["ndcg@2"] == pytest.approx(1.0)
    item_scores = jnp.array([0.0, 5.0, 1.0, 3.0, 2.0, 6.0])
    means, _ = full_ranking(score_fn, inter, view, 4.0, (1, 2))
    # user 0 ranking: 5,3,4,2 -> rel at rank 2 (item 3): ndcg@2 = (1/log2 3) / (1 + 1/log2 3)
    # user 1 ranking: 3,4,2,0 -> no rel in top 2: 0
    assert means["ndcg@2"] == pytest.approx(0.5 * (1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert means["precision@2"] == pytest.approx(0.25)
    # The seed's NDCG variant divides by IDCG(K) even when fewer than K items are relevant.
    one_rel = EvalView(users=np.array([0]), context=np.array([0, 1]), target=np.array([3, 4]))
    means_k, _ = full_ranking(score_fn, inter, one_rel, 4.0, (2,), ideal="k")
    assert means_k["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    means_t, _ = full_ranking(score_fn, inter, one_rel, 4.0, (2,))
    assert means_t["ndcg@2"] == pytest.approx(1 / np.log2(3))


def test_state_rows_first_or_last_n():
    inter = make_interactions(ROWS)
    view = EvalView(users=np.array([0, 1]), context=np.array([0, 1, 2, 5, 6]), target=np.array([3, 4, 7, 8]))
    first = state_rows(inter, view, n_state=2, heldout_users=True)
    np.testing.assert_array_equal(first.context, [0, 1, 5, 6])
    last = state_rows(inter, view, n_state=2, heldout_users=False)
    np.testing.assert_array_equal(last.context, [1, 2, 5, 6])
    three = state_rows(inter, view, n_state=3, heldout_users=True)
    np.testing.assert_array_equal(three.users, [0])  # user 1 has only 2 visible rows
    np.testing.assert_array_equal(three.target, [3, 4])


def test_drr_protocol_only_excludes_state_items():
    """drr excludes exactly the state items: not fewer (the state item itself stays out of the top) and not
    more (an item seen earlier but outside the state can be recommended)."""
    inter = make_interactions(ROWS)
    # User 0 sees rows 0,1,2 (items 0,1,2) and must predict rows 3,4 (item 3 rated 5, item 4 rated 1).
    view = EvalView(users=np.array([0]), context=np.array([0, 1, 2]), target=np.array([3, 4]))
    state_item_first = jnp.array([0.0, 0.0, 9.0, 8.0, 0.0, 0.0])  # item 2 = the state (last visible row)
    seen_item_first = jnp.array([0.0, 9.0, 0.0, 8.0, 0.0, 0.0])  # item 1 = seen, not in the state

    def p_at_1(scores):
        fn = lambda users, context: jnp.broadcast_to(scores, context.shape)
        means, n = drr_protocol(fn, inter, view, 4.0, n_state=1, heldout_users=False, ks=(1,))
        assert n == 1 and set(means) == {"precision@1", "ndcg@1"}
        return means["precision@1"]

    assert p_at_1(state_item_first) == 1.0  # item 2 excluded -> item 3 (relevant) on top
    assert p_at_1(seen_item_first) == 0.0  # item 1 not excluded -> it takes the top slot
