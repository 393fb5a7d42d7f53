"""Evaluation protocols, all scored through ``jaxrec.eval.metrics.topk_metrics``.

``full`` (full-catalogue ranking): for every evaluated user, rank every item except those in the user's
visible history (``EvalView.context``); relevant = the user's target interactions whose rating/reward is
>= ``relevant_threshold``. Users with no relevant target are left out (their recall/NDCG is undefined).
Scores come from ``score_fn(users, context_mask) -> [B, I]``; users are processed in fixed-size
batches (the last one padded) so ``topk_metrics`` compiles once.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxrec.data.interactions import Interactions
from jaxrec.data.splits import EvalView
from jaxrec.eval.metrics import topk_metrics

ScoreFn = Callable[[np.ndarray, jnp.ndarray], jnp.ndarray]


def rows_to_mask(batch_users: np.ndarray, row_user: np.ndarray, row_item: np.ndarray, n_items: int) -> np.ndarray:
    """[B, n_items] bool with True at (position of row_user in batch_users, row_item).

    ``batch_users`` must be ascending; rows of users outside the batch are ignored.
    """
    pos = np.searchsorted(batch_users, row_user)
    pos = np.minimum(pos, len(batch_users) - 1)
    inside = batch_users[pos] == row_user
    mask = np.zeros((len(batch_users), n_items), bool)
    mask[pos[inside], row_item[inside]] = True
    return mask


def full_ranking(score_fn: ScoreFn, inter: Interactions, view: EvalView, relevant_threshold: float,
                 ks: tuple[int, ...], batch_users: int = 1024) -> tuple[dict[str, float], int]:
    """Mean metrics of the ``full`` protocol and the number of users they average over."""
    target = view.target[inter.rating[view.target] >= relevant_threshold]
    users = np.unique(inter.user[target])
    ctx_user, ctx_item = inter.user[view.context], inter.item[view.context]
    tgt_user, tgt_item = inter.user[target], inter.item[target]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    batch_users = max(1, min(batch_users, len(users)))
    for start in range(0, len(users), batch_users):
        batch = users[start:start + batch_users]
        n_real = len(batch)
        # Pad with the last user so every batch has one shape (one compilation); padded rows are dropped.
        padded = np.concatenate([batch, np.full(batch_users - n_real, batch[-1])]) if n_real < batch_users else batch
        context = rows_to_mask(batch, ctx_user, ctx_item, inter.n_items)
        relevant = rows_to_mask(batch, tgt_user, tgt_item, inter.n_items)
        if n_real < batch_users:
            context = np.concatenate([context, np.repeat(context[-1:], batch_users - n_real, 0)])
            relevant = np.concatenate([relevant, np.repeat(relevant[-1:], batch_users - n_real, 0)])
        scores = score_fn(padded, jnp.asarray(context))
        per_user = topk_metrics(scores, jnp.asarray(relevant), jnp.asarray(context), ks)
        for name, values in per_user.items():
            v = np.asarray(values, np.float64)[:n_real]
            ok = ~np.isnan(v)
            sums[name] = sums.get(name, 0.0) + float(v[ok].sum())
            counts[name] = counts.get(name, 0) + int(ok.sum())
    means = {name: sums[name] / counts[name] if counts[name] else float("nan") for name in sorted(sums)}
    return means, int(len(users))
