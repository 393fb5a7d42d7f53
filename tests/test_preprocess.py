"""Tests for jaxrec.data.preprocess: dedup policies, k-core, dense ids and the (user, order) sort.

Every expected value is worked out by hand from the tiny inputs written in each test, except in the
tests of the sorting helpers, which compare against numpy / pandas references on random inputs.
"""

import numpy as np
import pandas as pd
import pytest

from jaxrec.data import preprocess
from jaxrec.data.preprocess import Raw, clean, compact, dedup, factorize, kcore_mask, stable_argsort
from jaxrec.errors import InputError


def _raw(user, item, rating, order, event=None):
    return Raw(np.asarray(user), np.asarray(item), np.asarray(rating, np.float32), np.asarray(order, np.int64),
               None if event is None else np.asarray(event, np.int8))


def _clean(raw, dedup_policy="none", min_user=1, min_item=1, threshold=None, positives_only=False):
    return clean(raw, dedup_policy=dedup_policy, min_user=min_user, min_item=min_item,
                 positive_threshold=threshold, positives_only=positives_only)


# One user/item pair (0, 0) appears four times:
#   row 0: rating 3, order 10    row 2: rating 5, order 20
#   row 3: rating 5, order 15    row 5: rating 1, order 20  (ties row 2 on order, later in the file)
# Rows 1 and 4 are other pairs, each seen once.
DUP = _raw(user=[0, 0, 0, 0, 1, 0], item=[0, 1, 0, 0, 0, 0], rating=[3, 4, 5, 5, 2, 1], order=[10, 5, 20, 15, 7, 20])


@pytest.mark.parametrize("policy, kept", [
    ("none", [0, 1, 2, 3, 4, 5]),
    ("first", [0, 1, 4]),     # order 10 is the earliest
    ("last", [1, 4, 5]),      # rows 2 and 5 tie on order 20: the later one in the file wins
    ("max", [1, 3, 4]),       # rows 2 and 3 tie on rating 5: the earlier by order (15) wins
])
def test_dedup_policies(policy, kept):
    keep = dedup(DUP, policy, DUP.user.astype(np.int64), DUP.item.astype(np.int64))
    assert np.flatnonzero(keep).tolist() == kept


def test_dedup_first_ties_keep_first_in_file():
    raw = _raw(user=[0, 0, 0], item=[0, 0, 0], rating=[1, 2, 3], order=[5, 5, 5])
    codes = np.zeros(3, np.int64)
    assert np.flatnonzero(dedup(raw, "first", codes, codes)).tolist() == [0]
    assert np.flatnonzero(dedup(raw, "last", codes, codes)).tolist() == [2]
    # equal rating and order: the first in the file
    raw = _raw(user=[0, 0], item=[0, 0], rating=[4, 4], order=[5, 5])
    assert np.flatnonzero(dedup(raw, "max", codes[:2], codes[:2])).tolist() == [0]


def test_dedup_unknown_policy_is_input_error():
    with pytest.raises(InputError, match="--dedup"):
        dedup(DUP, "median", DUP.user, DUP.item)


def test_kcore_needs_several_rounds():
    # min 2 per user and per item. Round 1 drops items 2 and 4 (one row each); that leaves users 2
    # and 3 with one row each, so round 2 drops them, which takes item 3 (rows 5, 6) with them.
    # A single pass would keep rows 5 and 6.
    user = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    item = np.array([0, 1, 0, 1, 2, 3, 3, 4])
    assert np.flatnonzero(kcore_mask(user, item, 2, 2)).tolist() == [0, 1, 2, 3]
    assert kcore_mask(user, item, 1, 1).all()
    assert np.flatnonzero(kcore_mask(user, item, 2, 1)).tolist() == list(range(8))
    assert np.flatnonzero(kcore_mask(user, item, 1, 2)).tolist() == [0, 1, 2, 3, 5, 6]


def test_factorize_and_compact_keep_original_order():
    codes, uniques = factorize(np.array(["b", "a", "c", "a"], dtype=object))
    assert codes.tolist() == [1, 0, 2, 0] and uniques.tolist() == ["a", "b", "c"]
    new, kept = compact(np.array([2, 0, 2]), np.array([10, 20, 30]))
    assert new.tolist() == [1, 0, 1] and kept.tolist() == [10, 30]


def test_stable_argsort_matches_lexsort_including_overflow_fallback():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 5, 200)
    order = rng.integers(0, 4, 200)
    assert stable_argsort(user, order).tolist() == np.lexsort((order, user)).tolist()
    # Ranges too wide to pack into one int64: falls back to lexsort, same answer.
    wide = np.array([-2**62, 2**62, 0, 2**62, -2**62])
    user = np.array([1, 0, 1, 0, 1])
    assert stable_argsort(user, wide).tolist() == [1, 3, 0, 4, 2]
    assert stable_argsort(np.array([], np.int64)).tolist() == []


def test_clean_dense_ids_sort_and_ties_keep_file_order():
    # Original ids are sparse; user 50's two rows tie on order 7 and must keep file order (item 9, then 3).
    raw = _raw(user=[50, 20, 50, 20, 50], item=[9, 3, 3, 9, 1], rating=[1, 2, 3, 4, 5], order=[7, 9, 7, 1, 2])
    cols, users, items, stats = _clean(raw)
    assert users.tolist() == [20, 50] and items.tolist() == [1, 3, 9]
    assert cols["user"].tolist() == [0, 0, 1, 1, 1]
    assert cols["item"].tolist() == [2, 1, 0, 2, 1]
    assert cols["rating"].tolist() == [4, 2, 5, 1, 3]
    assert cols["order"].tolist() == [1, 9, 2, 7, 7]
    assert cols["user"].dtype == np.int32 and cols["item"].dtype == np.int32
    assert cols["rating"].dtype == np.float32 and cols["order"].dtype == np.int64
    assert stats == {"rows_read": 5, "rows_dropped_duplicates": 0, "rows_dropped_min_counts": 0}


def test_clean_kcore_remaps_survivors_to_dense_ids():
    # The kcore case above with sparse original ids: users 20, 40 and items 12, 14 survive.
    raw = _raw(user=[20, 20, 40, 40, 10, 10, 30, 30], item=[12, 14, 12, 14, 11, 13, 13, 15],
               rating=[1] * 8, order=[1, 2, 3, 4, 5, 6, 7, 8])
    cols, users, items, stats = _clean(raw, min_user=2, min_item=2)
    assert users.tolist() == [20, 40] and items.tolist() == [12, 14]
    assert cols["user"].tolist() == [0, 0, 1, 1] and cols["item"].tolist() == [0, 1, 0, 1]
    assert stats["rows_dropped_min_counts"] == 4


def test_clean_positives_only_then_kcore_and_event_codes():
    raw = _raw(user=[1, 1, 2, 2], item=[5, 6, 5, 6], rating=[1, 5, 3, 5], order=[4, 3, 2, 1], event=[0, 2, 1, 2])
    cols, users, items, stats = _clean(raw, threshold=3, positives_only=True, min_item=2)
    # rating >= 3 keeps rows 1, 2, 3; item 5 then has one row (< 2) and goes.
    assert users.tolist() == [1, 2] and items.tolist() == [6]
    assert cols["user"].tolist() == [0, 1] and cols["item"].tolist() == [0, 0]
    assert cols["event"].tolist() == [2, 2] and cols["event"].dtype == np.int8
    assert stats["rows_dropped_not_positive"] == 1 and stats["rows_dropped_min_counts"] == 1


def test_clean_dedup_before_positive_filter():
    # "last" keeps the later rating 2 of pair (1, 5), which then is not positive.
    raw = _raw(user=[1, 1, 1], item=[5, 5, 6], rating=[5, 2, 4], order=[1, 2, 3])
    cols, users, items, stats = _clean(raw, dedup_policy="last", threshold=4, positives_only=True)
    assert items.tolist() == [6] and cols["rating"].tolist() == [4]
    assert stats["rows_dropped_duplicates"] == 1 and stats["rows_dropped_not_positive"] == 1


# ----------------------------------------------------------------------------------------------------
# Sorting and grouping helpers (packed int64 sorts; see the comments in preprocess.py)


def _count_passes(monkeypatch):
    calls = []
    real = preprocess._sort_pass
    monkeypatch.setattr(preprocess, "_sort_pass", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("case, passes", [
    ("one key with many ties", 1),
    ("two keys, 3 + 41 + 10 row bits: one pass", 1),
    ("user + timestamp-like, 21 + 40 + 10 bits: two passes", 2),
    ("three wide keys, int32 on top: three passes", 3),
    ("a full-range int64 key: stable argsort", 1),
    ("a narrow key above a full-range one", 2),
])
def test_stable_argsort_equals_lexsort(monkeypatch, case, passes):
    rng = np.random.default_rng(1)
    n = 1000  # 10 bits of row index
    keys = {
        "one key with many ties": [rng.integers(0, 3, n)],
        "two keys, 3 + 41 + 10 row bits: one pass": [rng.integers(0, 5, n), rng.integers(-2**40, 2**40, n)],
        "user + timestamp-like, 21 + 40 + 10 bits: two passes": [rng.integers(0, 2**21, n), rng.integers(0, 2**40, n)],
        "three wide keys, int32 on top: three passes": [rng.integers(0, 2**31 - 1, n).astype(np.int32),
                                                        rng.integers(0, 2**40, n), rng.integers(0, 2**40, n)],
        "a full-range int64 key: stable argsort": [np.r_[rng.integers(-2**63, 2**63 - 1, n - 2), -2**63, 2**63 - 1]],
        "a narrow key above a full-range one": [rng.integers(0, 2, n), np.r_[rng.integers(-2**63, 2**63 - 1, n - 1), 2**63 - 1]],
    }[case]
    calls = _count_passes(monkeypatch)
    assert stable_argsort(*keys).tolist() == np.lexsort(keys[::-1]).tolist()
    assert len(calls) == passes


def test_stable_argsort_ties_keep_input_order_across_passes(monkeypatch):
    assert stable_argsort(np.zeros(50, np.int64)).tolist() == list(range(50))
    # 31 + 41 + 3 bits: two passes. Rows 1 and 3 tie on both keys and stay in file order, as do
    # rows 4 and 5, which the first pass (by time) must not swap either.
    user = np.array([2**30, 0, 2**30, 0, 7, 7])
    time = np.array([0, 2**40, 5, 2**40, 3, 3])
    calls = _count_passes(monkeypatch)
    assert stable_argsort(user, time).tolist() == [1, 3, 4, 5, 0, 2]
    assert len(calls) == 2


@pytest.mark.parametrize("span", [10, 2**40])  # 2**40: 41 + 41 + 9 bits do not fit, other code path
def test_pair_ends_marks_first_and_last_occurrence(span):
    rng = np.random.default_rng(2)
    user = rng.integers(0, 4, 300) * span
    item = rng.integers(0, 5, 300) * span
    first, last = {}, {}
    for pos, pair in enumerate(zip(user.tolist(), item.tolist())):
        first.setdefault(pair, pos)
        last[pair] = pos
    assert np.flatnonzero(preprocess._pair_ends(user, item, last=False)).tolist() == sorted(first.values())
    assert np.flatnonzero(preprocess._pair_ends(user, item, last=True)).tolist() == sorted(last.values())
    assert preprocess._pair_ends(user[:0], item[:0], last=True).tolist() == []


@pytest.mark.parametrize("values", [
    np.array([5, 3, 3, 9, 0, 5]),                    # small non-negative ids: the lookup table
    np.array([5, 3, 3, 9, 0, 5], np.int32),          # same with int32 ids
    np.array([7, -2, 7, 4]),                         # negative ids: pandas
    np.array([10**12, 3, 10**12, 8]),                # ids far above the row count: pandas
    np.array(["b", "a", "c", "a"], dtype=object),    # strings: pandas
])
def test_factorize_equals_pandas_sorted_factorize(values):
    want_codes, want_uniques = pd.factorize(values, sort=True)
    for dtype in (np.int64, np.int32):
        codes, uniques = factorize(values, dtype)
        assert codes.dtype == dtype and codes.tolist() == want_codes.tolist()
        assert uniques.dtype == np.asarray(want_uniques).dtype and uniques.tolist() == list(want_uniques)


def test_compact_keeps_the_code_dtype():
    new, kept = compact(np.array([2, 0, 2], np.int32), np.array([10, 20, 30]))
    assert new.dtype == np.int32 and new.tolist() == [1, 0, 1] and kept.tolist() == [10, 30]


@pytest.mark.parametrize("policy", ["first", "last"])
def test_clean_single_sort_dedup_equals_dedup_then_sort(policy):
    # clean() dedups first/last inside its (user, order) sort. Reference: pandas, sorting stably by
    # (user, order) and dropping repeated (user, item) pairs, keeping the first/last.
    rng = np.random.default_rng(3)
    n = 2000
    raw = _raw(user=rng.integers(0, 30, n) * 1000, item=rng.integers(0, 20, n), rating=rng.integers(1, 6, n),
               order=rng.integers(0, 50, n) * 10**9)
    cols, users, items, stats = _clean(raw, dedup_policy=policy)
    df = pd.DataFrame({"user": raw.user, "item": raw.item, "rating": raw.rating, "order": raw.order})
    want = df.sort_values(["user", "order"], kind="stable").drop_duplicates(["user", "item"], keep=policy)
    assert users[cols["user"]].tolist() == want["user"].tolist()
    assert items[cols["item"]].tolist() == want["item"].tolist()
    assert cols["rating"].tolist() == want["rating"].tolist() and cols["order"].tolist() == want["order"].tolist()
    assert stats["rows_dropped_duplicates"] == n - len(want)
    # The other path (dedup mask, then one sort of the survivors) agrees.
    keep = dedup(raw, policy, factorize(raw.user)[0], factorize(raw.item)[0])
    assert int(keep.sum()) == len(want)


def test_clean_release_ids_frees_id_columns_only():
    raw = _raw(user=[50, 20, 50], item=[9, 3, 3], rating=[1, 2, 3], order=[7, 9, 7])
    kept = _clean(_raw(raw.user, raw.item, raw.rating, raw.order))
    got = clean(raw, dedup_policy="none", min_user=1, min_item=1, positive_threshold=None, positives_only=False,
                release_ids=True)
    assert raw.user is None and raw.item is None and raw.order is not None
    assert all(np.array_equal(kept[0][k], got[0][k]) for k in kept[0])
    assert np.array_equal(kept[1], got[1]) and np.array_equal(kept[2], got[2]) and kept[3] == got[3]
