"""The next-item protocol of the sequential experiments, reported under the protocol name ``next_item``
(full-catalogue ranking of each next item):

* one query per held-out target interaction (``targets="relevant"``: only those whose rating/reward
  reaches the relevance threshold; the default ``all`` is the seed's and SQN's): the model sees the last
  ``window`` items the user interacted with before it (the part's visible context and the earlier
  targets; these are input only, never trained on) and ranks every item;
* items the user interacted with before the target are excluded (``exclude_seen``; a query whose target
  was itself seen before cannot be ranked then, and is left out);
* HR@K and NDCG@K (one relevant item, so NDCG = 1/log2(rank + 2)), plus precision/recall, averaged over
  queries, as the seed (m3s-eval-protocol; its x0 masking and test-set selection fixed: m3s-eval-mask,
  m3s-model-selection) and the SQN papers do.

It is not ``full`` of ``jaxrec.eval.protocols`` (one query per user, every later interaction relevant),
hence its own name. Events sources (click vs purchase, as the SQN papers report): the queries split into
target groups by event type (``event_subset``).

Pure functions of the data and a score function, beside ``jaxrec.eval.protocols``; progress is reported
through an ``on_batch`` callback, as there.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.interactions import Interactions
from jaxrec.data.sequences import NextItemQueries, next_item_queries, seen_mask, target_seen
from jaxrec.data.splits import EvalView
from jaxrec.errors import ConfigError
from jaxrec.eval.metrics import topk_metrics


@dataclasses.dataclass
class NextItemEval:
    """Evaluation options of the next-item protocol."""

    window: int = 10
    """Items of history shown to the model per query (the state size)."""
    exclude_seen: bool = True
    """Never rank items the user interacted with before the target."""
    purchase_events: tuple[str, ...] = ("transaction",)
    """Events sources: event types counted as purchases (the rest are clicks)."""
    events: str = "all"
    """Targets the next_item protocol scores: all, click or purchase (events sources)."""
    targets: str = "all"
    """Queries: every held-out interaction, or only the relevant ones (rating >= the relevance threshold)."""


def event_subset(q: NextItemQueries, inter: Interactions, group: str,
                 purchase_events: tuple[str, ...]) -> NextItemQueries:
    """The queries of one target group: ``all``, ``click`` (non-purchase events) or ``purchase``."""
    if group == "all":
        return q
    check_event_group(inter, group, purchase_events)
    codes = [inter.event_types.index(e) for e in purchase_events]
    purchase = np.isin(q.event, codes)
    return q.subset(purchase if group == "purchase" else ~purchase)


def check_event_group(inter: Interactions, group: str, purchase_events: tuple[str, ...]):
    if group not in ("all", "click", "purchase"):
        raise ConfigError("model.eval_events", f"{group!r} is not one of all, click, purchase")
    if group == "all":
        return
    if inter.event is None or not inter.event_types:
        raise ConfigError("model.eval_events", f"{group} targets need an events source (event types); this data has none")
    unknown = [e for e in purchase_events if e not in inter.event_types]
    if unknown:
        raise ConfigError("model.purchase_events", f"{unknown} are not event types of this data {inter.event_types}")


def drop_seen_targets(q: NextItemQueries) -> NextItemQueries:
    """The queries whose target item is not in the user's history before it.

    Once seen items are excluded from the ranking such a target can never be ranked, so it is left out
    (MovieLens has no repeated item per user; event logs have many repeated views).
    """
    return q.subset(~target_seen(q))


def next_item_metrics(score: Callable, q: NextItemQueries, ks: tuple[int, ...], batch: int,
                      exclude_seen: bool = True,
                      on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], int]:
    """Mean metrics over the queries and the number of users they come from.

    ``score(windows [B, N]) -> [B, I]``. Queries are scored in fixed-size batches (the last one padded
    with its last query, padded rows dropped) so every jitted function compiles once. With
    ``exclude_seen`` the queries must come from ``drop_seen_targets``. ``on_batch(queries_done,
    queries_total)`` is called after every batch.
    """
    if not len(q):
        return {f"{m}@{k}": float("nan") for k in ks for m in ("hr", "ndcg", "precision", "recall")}, 0
    sums: dict[str, float] = {}
    batch = max(1, min(batch, len(q)))
    rows = np.arange(batch)
    for start in range(0, len(q), batch):
        idx = np.arange(start, min(start + batch, len(q)))
        n_real = len(idx)
        idx = np.concatenate([idx, np.full(batch - n_real, idx[-1])])
        scores = score(jnp.asarray(q.state[idx]))
        relevant = np.zeros((batch, q.n_items), bool)
        relevant[rows, q.target[idx]] = True
        exclude = seen_mask(q, idx) if exclude_seen else np.zeros_like(relevant)
        per_query = topk_metrics(scores, jnp.asarray(relevant), jnp.asarray(exclude), ks)
        for name, values in per_query.items():
            sums[name] = sums.get(name, 0.0) + float(np.asarray(values, np.float64)[:n_real].sum())
        if on_batch is not None:
            on_batch(start + n_real, len(q))
    return {name: sums[name] / len(q) for name in sorted(sums)}, int(len(np.unique(q.user)))


class NextItemEvaluator:
    """Builds (once per part and target group) and scores the next-item queries of a data set."""

    def __init__(self, inter: Interactions, relevant_threshold: float, ks: tuple[int, ...], batch: int,
                 opts: NextItemEval):
        self.inter, self.threshold, self.opts = inter, relevant_threshold, opts
        self.ks, self.batch = tuple(ks), batch
        if max(self.ks) > inter.n_items:
            raise ConfigError("eval.ks", f"cut-off {max(self.ks)} exceeds the {inter.n_items} items of this data")
        check_event_group(inter, opts.events, opts.purchase_events)
        self.groups: tuple[str, ...] = ()
        if inter.event is not None and inter.event_types:
            check_event_group(inter, "purchase", opts.purchase_events)
            self.groups = ("click", "purchase")
        self._queries: dict[tuple[str, str], NextItemQueries] = {}

    def queries(self, view: EvalView, part: str, group: str) -> NextItemQueries:
        if (part, group) not in self._queries:
            if (part, "all") not in self._queries:
                target = view.target
                if self.opts.targets == "relevant":
                    target = target[self.inter.rating[target] >= self.threshold]
                history = np.union1d(view.context, view.target)
                q = next_item_queries(self.inter, history, target, self.opts.window)
                self._queries[part, "all"] = drop_seen_targets(q) if self.opts.exclude_seen else q
            everything = self._queries[part, "all"]
            self._queries[part, group] = event_subset(everything, self.inter, group, self.opts.purchase_events)
        return self._queries[part, group]

    def warm_up(self, score, window: int):
        """Compiles ``score`` and the metric function for this evaluator's batch shape."""
        batch = self.batch
        scores = score(jnp.full((batch, window), self.inter.n_items, jnp.int32))
        empty = jnp.zeros((batch, self.inter.n_items), bool)
        jax.block_until_ready(topk_metrics(scores, empty, empty, self.ks))

    def evaluate(self, score, view: EvalView, part: str, group: str | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], int]:
        """Metrics of one target group (default: ``opts.events``) of a part."""
        q = self.queries(view, part, group or self.opts.events)
        return next_item_metrics(score, q, self.ks, self.batch, self.opts.exclude_seen, on_batch)


def last_windows(inter: Interactions, rows: np.ndarray, users: np.ndarray, window: int) -> np.ndarray:
    """[len(users), N]: each user's last ``window`` items among ``rows`` (left-padded with PAD)."""
    rows = np.sort(rows)
    out = np.full((len(users), window), inter.n_items, np.int32)
    if not len(rows):
        return out
    r_user = inter.user[rows]
    end = np.searchsorted(r_user, users, side="right")
    begin = np.searchsorted(r_user, users, side="left")
    cols = end[:, None] - window + np.arange(window)[None, :]
    inside = cols >= begin[:, None]
    return np.where(inside, inter.item[rows[np.maximum(cols, 0)]], out)
