"""Vectorised clean-up of raw interaction columns: dedup, positive filter, k-core, dense ids, sort.

Pure numpy over whole columns; no loop over rows or users. Used by data_prep/prepare.py for every
source, so the three sources share one set of rules.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from jaxrec.errors import InputError

DEDUP_POLICIES = ("none", "first", "last", "max")


@dataclasses.dataclass
class Raw:
    """Raw columns: original ids (any hashable dtype), rating, order and optional event codes."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    order: np.ndarray
    event: np.ndarray | None = None

    def take(self, mask_or_rows) -> "Raw":
        return Raw(self.user[mask_or_rows], self.item[mask_or_rows], self.rating[mask_or_rows],
                   self.order[mask_or_rows], None if self.event is None else self.event[mask_or_rows])


def stable_argsort(*keys: np.ndarray) -> np.ndarray:
    """Row indices sorting by integer ``keys`` (most significant first); equal rows keep input order.

    When the keys' value ranges multiply to less than 2**63 they are packed into one int64 and sorted
    with a single stable argsort, ~3.5x faster than ``np.lexsort`` on 20M rows; otherwise lexsort.
    """
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    lows = [int(k.min()) for k in keys]
    widths = [int(k.max()) - lo + 1 for k, lo in zip(keys, lows)]
    if math.prod(widths) >= 2**63:
        return np.lexsort(keys[::-1])
    packed = np.zeros(n, np.int64)
    for k, lo, w in zip(keys, lows, widths):
        packed *= w
        packed += k.astype(np.int64, copy=False) - lo
    return np.argsort(packed, kind="stable")


def dedup(raw: Raw, policy: str, user_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """Boolean mask of rows to keep under ``policy`` for repeated (user, item) pairs.

    ``first``/``last`` keep the earliest/latest by order (file order breaks ties: the first/last
    such row in the file); ``max`` keeps the highest rating, the earliest by order among equal ratings,
    then the first in the file; ``none`` keeps every row (event logs: a view then a purchase of the
    same item are two interactions).
    """
    n = len(user_codes)
    if policy not in DEDUP_POLICIES:
        raise InputError("--dedup", f"unknown dedup policy {policy!r}, expected one of {', '.join(DEDUP_POLICIES)}")
    if policy == "none" or n == 0:
        return np.ones(n, bool)
    # Dense pair ids in hash order: only which rows share a pair matters, not how pairs are ordered.
    # codes < n, so user * n_items + item stays far below 2**63.
    n_items = int(item_codes.max()) + 1
    pair, _ = pd.factorize(user_codes.astype(np.int64) * n_items + item_codes)
    if policy == "max":
        rating_rank, _ = pd.factorize(-raw.rating, sort=True)  # 0 = the highest rating
        idx = stable_argsort(pair, rating_rank, raw.order)
    else:
        idx = stable_argsort(pair, raw.order)
    p = pair[idx]
    boundary = p[1:] != p[:-1]
    keep_sorted = np.ones(n, bool)
    if policy == "last":
        keep_sorted[:-1] = boundary  # the last row of each pair
    else:
        keep_sorted[1:] = boundary  # the first row of each pair
    keep = np.zeros(n, bool)
    keep[idx[keep_sorted]] = True
    return keep


def kcore_mask(user_codes: np.ndarray, item_codes: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Rows surviving repeated removal of users with < min_user and items with < min_item rows.

    Applied until stable: dropping a sparse item can push a user under its minimum and vice versa.
    """
    keep = np.ones(len(user_codes), bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    nu, ni = int(user_codes.max(initial=-1)) + 1, int(item_codes.max(initial=-1)) + 1
    while True:
        ucount = np.bincount(user_codes[keep], minlength=nu)
        icount = np.bincount(item_codes[keep], minlength=ni)
        new = keep & (ucount[user_codes] >= min_user) & (icount[item_codes] >= min_item)
        if new.sum() == keep.sum():
            return new
        keep = new


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense codes int64, uniques) with codes ascending in the original id (ints or strings)."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def compact(codes: np.ndarray, uniques: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumbers a subset of dense codes to 0..k-1 keeping their order (so still ascending in the
    original id); O(n), unlike factorizing the filtered ids again."""
    present = np.zeros(len(uniques), bool)
    present[codes] = True
    new_code = np.cumsum(present) - 1
    return new_code[codes], uniques[present]


def clean(raw: Raw, *, dedup_policy: str, min_user: int, min_item: int,
          positive_threshold: float | None, positives_only: bool):
    """Applies dedup, the positive filter and k-core, then densifies ids and sorts by (user, order).

    Returns ``(columns, user_uniques, item_uniques, stats)`` where columns hold int32 ``user``/``item``,
    float32 ``rating``, int64 ``order`` (and int8 ``event``), sorted by (user, order) with file order
    breaking ties, and the uniques map dense id -> original id.
    """
    stats = {"rows_read": int(len(raw.user))}
    ucodes, user_uniques = factorize(raw.user)
    icodes, item_uniques = factorize(raw.item)
    keep = dedup(raw, dedup_policy, ucodes, icodes)
    stats["rows_dropped_duplicates"] = int((~keep).sum())
    if positives_only and positive_threshold is not None:
        pos = raw.rating >= positive_threshold
        stats["rows_dropped_not_positive"] = int((keep & ~pos).sum())
        keep &= pos
    before = int(keep.sum())
    rows = np.flatnonzero(keep)
    keep_core = kcore_mask(ucodes[rows], icodes[rows], min_user, min_item)
    rows = rows[keep_core]
    stats["rows_dropped_min_counts"] = before - len(rows)
    raw = raw.take(rows)
    user, user_uniques = compact(ucodes[rows], user_uniques)
    item, item_uniques = compact(icodes[rows], item_uniques)
    idx = stable_argsort(user, raw.order)  # stable: rows with equal (user, order) keep file order
    cols = {
        "user": user[idx].astype(np.int32), "item": item[idx].astype(np.int32),
        "rating": raw.rating[idx].astype(np.float32), "order": raw.order[idx].astype(np.int64),
    }
    if raw.event is not None:
        cols["event"] = raw.event[idx].astype(np.int8)
    return cols, user_uniques, item_uniques, stats
