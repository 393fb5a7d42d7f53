"""Planted-signal data sets, generated without any download: for smoke runs (``prepare.py synthetic``,
then any ``--quick`` experiment) and for the tests that check every learner beats popularity.

* ``planted_blocks`` (the DRR family): users fall into clusters; each cluster likes one block of items
  (ratings 4-5) and rates a few items of other blocks low (1-2); a set of popular items that belong to no
  cluster is rated low-ish (2-3) by almost everyone, so popularity is a weak baseline.
* ``planted_chains`` (the sequential family): each cluster follows its own successor cycle over the items;
  with probability ``noise`` a random item is inserted and the chain goes on; every item is about equally
  popular, so popularity is near chance.

Both return ``(rows, clusters, structure)`` with ``rows`` a float64 ``[N, 4]`` array of (user, item,
rating, order) sorted by (user, order). Seeded numpy Generators: the same seed gives the same data.
"""
from __future__ import annotations

import numpy as np


def _rows(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def planted_blocks(n_users=400, n_clusters=4, block=20, n_popular=20, liked=(14, 18), disliked=3,
                   popular=(5, 9), seed=0):
    """Clustered users, one block of ``block`` items per cluster, ``n_popular`` popular irrelevant items.

    Items ``[c * block, (c + 1) * block)`` are cluster c's block; the last ``n_popular`` items are the
    popular ones. Each user rates ``liked`` (range) items of its block 4 or 5, ``disliked`` random items
    of other blocks 1 or 2 and ``popular`` (range) of the popular items 2 or 3, in a random order.

    Returns (rows, user_cluster [U], item_cluster [I], -1 for the popular items).
    """
    rng = np.random.default_rng(seed)
    n_items = n_clusters * block + n_popular
    item_cluster = np.concatenate([np.repeat(np.arange(n_clusters), block), np.full(n_popular, -1)])
    popular_items = np.arange(n_clusters * block, n_items)
    user_cluster = rng.integers(0, n_clusters, n_users)
    rows = []
    for u in range(n_users):
        c = user_cluster[u]
        own = rng.choice(np.flatnonzero(item_cluster == c), rng.integers(liked[0], liked[1] + 1), replace=False)
        other = rng.choice(np.flatnonzero((item_cluster != c) & (item_cluster >= 0)), disliked, replace=False)
        pop = rng.choice(popular_items, rng.integers(popular[0], popular[1] + 1), replace=False)
        items = np.concatenate([own, other, pop])
        ratings = np.concatenate([rng.integers(4, 6, len(own)), rng.integers(1, 3, len(other)),
                                  rng.integers(2, 4, len(pop))]).astype(float)
        perm = rng.permutation(len(items))
        rows += [(u, int(items[p]), ratings[p], t) for t, p in enumerate(perm)]
    return _rows(rows), user_cluster, item_cluster


def planted_chains(n_users=300, n_items=80, n_clusters=3, length=(25, 35), noise=0.1, seed=0):
    """Users walking their cluster's successor cycle from a random start, with random insertions.

    Returns (rows, user_cluster [U], succ [n_clusters, I]). Every rating is 5.
    """
    rng = np.random.default_rng(seed)
    succ = np.zeros((n_clusters, n_items), np.int64)
    for c in range(n_clusters):
        cycle = rng.permutation(n_items)
        succ[c, cycle] = np.roll(cycle, -1)
    user_cluster = rng.integers(0, n_clusters, n_users)
    rows = []
    for u in range(n_users):
        c, item = user_cluster[u], int(rng.integers(n_items))
        for t in range(int(rng.integers(length[0], length[1] + 1))):
            if t > 0 and rng.random() < noise:
                rows.append((u, int(rng.integers(n_items)), 5.0, t))
                continue
            rows.append((u, item, 5.0, t))
            item = int(succ[c, item])
    return _rows(rows), user_cluster, succ
