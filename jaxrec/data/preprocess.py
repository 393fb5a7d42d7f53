"""Vectorised clean-up of raw interaction columns: dedup, positive filter, k-core, dense ids, sort.

Pure numpy over whole columns; no loop over rows or users. Used by data_prep/prepare.py for every
source, so the three sources share one set of rules.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

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


def dedup(raw: Raw, policy: str, user_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """Boolean mask of rows to keep under ``policy`` for repeated (user, item) pairs.

    ``first``/``last`` keep the earliest/latest by order (file order breaks ties); ``max`` keeps the
    highest rating (earliest among equals); ``none`` keeps every row (event logs: a view then a
    purchase of the same item are two interactions).
    """
    n = len(user_codes)
    if policy == "none" or n == 0:
        return np.ones(n, bool)
    if policy not in DEDUP_POLICIES:
        raise ValueError(f"unknown dedup policy {policy!r}, expected one of {DEDUP_POLICIES}")
    secondary = -raw.rating if policy == "max" else raw.order
    # lexsort is stable: equal keys keep file order, which is the tie-break documented above.
    idx = np.lexsort((secondary, item_codes, user_codes))
    pair_start = np.ones(n, bool)
    pair_start[1:] = (user_codes[idx][1:] != user_codes[idx][:-1]) | (item_codes[idx][1:] != item_codes[idx][:-1])
    keep_sorted = pair_start if policy in ("first", "max") else np.roll(pair_start, -1)
    if policy == "last":
        keep_sorted[-1] = True
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


def clean(raw: Raw, *, dedup_policy: str, min_user: int, min_item: int,
          positive_threshold: float | None, positives_only: bool):
    """Applies dedup, the positive filter and k-core, then densifies ids and sorts by (user, order).

    Returns ``(columns, user_uniques, item_uniques, stats)`` where columns hold int32 ``user``/``item``,
    float32 ``rating``, int64 ``order`` (and int8 ``event``), sorted by (user, order) with file order
    breaking ties, and the uniques map dense id -> original id.
    """
    stats = {"rows_read": int(len(raw.user))}
    ucodes, _ = factorize(raw.user)
    icodes, _ = factorize(raw.item)
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
    user, user_uniques = factorize(raw.user)
    item, item_uniques = factorize(raw.item)
    idx = np.lexsort((raw.order, user))
    cols = {
        "user": user[idx].astype(np.int32), "item": item[idx].astype(np.int32),
        "rating": raw.rating[idx].astype(np.float32), "order": raw.order[idx].astype(np.int64),
    }
    if raw.event is not None:
        cols["event"] = raw.event[idx].astype(np.int8)
    return cols, user_uniques, item_uniques, stats
