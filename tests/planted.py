"""Planted-signal data sets on which every learner must beat popularity (tests/test_learning.py).

* ``planted_blocks`` (the DRR family: ``mf``, ``ddpg_id``): users fall into clusters; each cluster likes
  one block of items (ratings 4-5) and rates a few items of other blocks low (1-2); a set of popular
  items that belong to no cluster is rated low-ish (2-3) by almost everyone, so the items with the most
  interactions are the irrelevant ones and popularity is a weak baseline.
* ``planted_chains`` (the sequential family): each cluster follows its own deterministic successor map
  over the items (item i -> succ_c(i), a single cycle through every item, different per cluster); at
  every step, with probability ``noise``, a uniformly random item is inserted instead and the chain
  goes on from where it was. The next item is predictable from the last two or three items, which
  reveal the cluster; every item is about equally popular, so popularity is near chance.

Both return ``Interactions`` rows sorted by (user, order); ``tests.helpers.write_prepared`` writes them.
"""
from __future__ import annotations

from data_prep import synthetic
from tests.helpers import make_interactions


def planted_blocks(n_users=400, **kw):
    """``data_prep.synthetic.planted_blocks`` as ``(Interactions, user_cluster, item_cluster)``."""
    rows, user_cluster, item_cluster = synthetic.planted_blocks(n_users=n_users, **kw)
    return make_interactions(rows, n_users, len(item_cluster)), user_cluster, item_cluster


def planted_chains(n_users=300, n_items=80, **kw):
    """``data_prep.synthetic.planted_chains`` as ``(Interactions, user_cluster, succ)``."""
    rows, user_cluster, succ = synthetic.planted_chains(n_users=n_users, n_items=n_items, **kw)
    return make_interactions(rows, n_users, n_items), user_cluster, succ
