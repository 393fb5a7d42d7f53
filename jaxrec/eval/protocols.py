"""Evaluation protocols, all scored through ``jaxrec.eval.metrics.topk_metrics``.

``full`` (full-catalogue ranking): for every evaluated user, rank every item except those in the user's
visible history (``EvalView.context``); relevant = the user's target interactions whose rating/reward is
>= ``relevant_threshold``. Users with no relevant target are left out (their recall/NDCG is undefined).
Scores come from ``score_fn(users, context_mask) -> [B, I]``; users are processed in fixed-size
batches (the last one padded) so ``topk_metrics`` compiles once.

``drr`` (the DRR seed's offline protocol, made leak-free: docs/differences.md#drr-eval-protocol): each evaluated user's
state is ``n_state`` items of the visible history (held-out users: their first ``n_state`` items; temporal
splits: the last ``n_state`` visible items); users with fewer visible items are skipped. The agent makes
ONE top-K recommendation from that state over every item except the ``n_state`` state items (the seed's
candidate set: other visible items are NOT excluded, as in the seed). Relevant = the user's target
items with rating >= the threshold. Reported: precision@K and NDCG@K with binary relevance and the true
ideal DCG; ``ideal="k"`` reproduces the seed's variant whose ideal DCG assumes K relevant items.

``cold_start`` (item cold start, ``data.split.cold_items``): the items held out of training are ranked
among themselves: every warm item and the visible history are excluded, relevant = the user's target
interactions on cold items with rating >= the threshold; users without such a target are left out. A
model that knows nothing of an item but its id cannot do better than chance here (expected HR@K about
K * #relevant / #cold items); item features can.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxrec.data.interactions import Interactions
from jaxrec.data.splits import EvalView
from jaxrec.eval.metrics import ideal_dcg, topk_metrics

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
                 ks: tuple[int, ...], batch_users: int = 1024, ideal: str = "true",
                 candidates: np.ndarray | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], int]:
    """Mean metrics of the ``full`` protocol and the number of users they average over.

    ``ideal="k"`` rescales NDCG@K to the seed's variant: DCG / IDCG(K), i.e. as if K items were relevant.
    ``candidates`` (bool [I], default all): only these items may be ranked, and only targets among them
    count as relevant; ``score_fn`` still receives the visible-history mask as its context.
    ``on_batch(users_done, users_total)`` is called after every user batch (the shell's progress bar).
    """
    if ideal not in ("true", "k"):
        raise ValueError(f"ideal must be 'true' or 'k', got {ideal!r}")
    target = view.target[inter.rating[view.target] >= relevant_threshold]
    if candidates is not None:
        target = target[candidates[inter.item[target]]]
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
        exclude = context if candidates is None else context | ~candidates[None, :]
        per_user = topk_metrics(scores, jnp.asarray(relevant), jnp.asarray(exclude), ks)
        if ideal == "k":
            n_rel = (relevant & ~exclude).sum(1)
            for k in ks:
                per_user[f"ndcg@{k}"] = per_user[f"ndcg@{k}"] * ideal_dcg(n_rel, k) / ideal_dcg(np.full_like(n_rel, k), k)
        for name, values in per_user.items():
            v = np.asarray(values, np.float64)[:n_real]
            ok = ~np.isnan(v)
            sums[name] = sums.get(name, 0.0) + float(v[ok].sum())
            counts[name] = counts.get(name, 0) + int(ok.sum())
        if on_batch is not None:
            on_batch(start + n_real, len(users))
    means = {name: sums[name] / counts[name] if counts[name] else float("nan") for name in sorted(sums)}
    return means, int(len(users))


def state_rows(inter: Interactions, view: EvalView, n_state: int, heldout_users: bool) -> EvalView:
    """The view restricted to each user's ``n_state`` state rows (users with fewer are dropped).

    Held-out users: their first ``n_state`` visible rows (the seed's "first 10 items"). Temporal splits:
    the last ``n_state`` visible rows (the most recent history is the state).
    """
    ctx = view.context
    counts = np.bincount(inter.user[ctx], minlength=inter.n_users)
    # Rank of each row among its user's context rows (ctx is sorted by (user, order)).
    pos = np.arange(len(ctx)) - np.searchsorted(inter.user[ctx], inter.user[ctx])
    keep = pos < n_state if heldout_users else pos >= counts[inter.user[ctx]] - n_state
    users = view.users[counts[view.users] >= n_state]
    ctx = ctx[keep & np.isin(inter.user[ctx], users)]
    target = view.target[np.isin(inter.user[view.target], users)]
    return EvalView(users=users, context=ctx, target=target)


def drr_protocol(score_fn: ScoreFn, inter: Interactions, view: EvalView, relevant_threshold: float,
                 n_state: int, heldout_users: bool, ks: tuple[int, ...] = (5, 10), ideal: str = "true",
                 batch_users: int = 1024, on_batch=None) -> tuple[dict[str, float], int]:
    """The ``drr`` protocol (module docstring): precision@K and NDCG@K of one top-K step per user."""
    sv = state_rows(inter, view, n_state, heldout_users)
    means, n_users = full_ranking(score_fn, inter, sv, relevant_threshold, ks, batch_users, ideal, on_batch=on_batch)
    return {k: v for k, v in means.items() if k.startswith(("precision@", "ndcg@"))}, n_users


def cold_start(score_fn: ScoreFn, inter: Interactions, view: EvalView, relevant_threshold: float,
               cold_items: np.ndarray, ks: tuple[int, ...], batch_users: int = 1024,
               on_batch=None) -> tuple[dict[str, float], int]:
    """The ``cold_start`` protocol (module docstring): rank the held-out items only."""
    if len(cold_items) == 0:
        raise ValueError("cold_start needs items held out of training (data.split.cold_items > 0)")
    if max(ks) > len(cold_items):
        raise ValueError(f"cut-off {max(ks)} exceeds the {len(cold_items)} cold-start items")
    candidates = np.zeros(inter.n_items, bool)
    candidates[cold_items] = True
    return full_ranking(score_fn, inter, view, relevant_threshold, ks, batch_users, candidates=candidates,
                        on_batch=on_batch)
