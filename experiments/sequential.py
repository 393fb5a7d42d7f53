"""Sequential recommenders on one harness and one split: ``m3s_tdlambda``, ``sqn``, ``sasrec``,
``gru4rec`` and ``popularity_seq``.

All five are trained on the training part only (``train_view``) and scored by the same next-item
protocol, reported under the protocol name ``next_item`` (full-catalogue ranking of each next item):

* one query per held-out target interaction (``model.eval_targets=relevant``: only those whose
  rating/reward reaches ``data.relevant_threshold``; the default ``all`` is the seed's and SQN's): the
  model sees the last ``model.window`` items the user interacted with before it (the part's visible
  context and the earlier targets; these are input only, never trained on) and ranks every item;
* items the user interacted with before the target are excluded (``model.exclude_seen``; a query whose
  target was itself seen before cannot be ranked then, and is left out);
* HR@K and NDCG@K (one relevant item, so NDCG = 1/log2(rank + 2)), plus precision/recall, averaged over
  queries, as the seed (m3s-eval-protocol; its x0 masking and test-set selection fixed: m3s-eval-mask,
  m3s-model-selection) and the SQN
  papers do. Model selection uses the validation part only.

It is not the built-in ``full`` protocol (one query per user, every later interaction relevant), hence
its own name; ``popularity_seq`` gives the popularity floor under this protocol, and ``popularity``'s
numbers are not comparable with these. ``drr`` (the built-in one-step top-K from each user's state
items) works through ``score_fn``.

Events sources, click vs purchase (as the SQN papers report): on data with event types every run also
reports its final validation and test metrics per target group, clicks (non-purchase event types) and
purchases (``model.purchase_events``), under ``by_event`` in ``final.json``; ``model.eval_events=click|purchase``
makes ``next_item`` itself (and so model selection) score one group only.
"""
from __future__ import annotations

import dataclasses
import gc
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from experiments.memory import release_freed_memory
from experiments.popularity import PopularityTrainer
from experiments.trainer import Evaluator, Experiment
from jaxrec import config as C
from jaxrec.data.sequences import NextItemQueries, next_item_queries, seen_mask, sequence_chunks, target_seen
from jaxrec.data.splits import EvalView, guard_model_input, guard_training_input, train_view
from jaxrec.errors import ConfigError
from jaxrec.eval.metrics import topk_metrics
from jaxrec.rl.sqn import SQNConfig, make_scorer, make_train, samples_count

PROTOCOLS = ("next_item", "drr")


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


# ----------------------------------------------------------------------------------------------------
# The next-item protocol


def event_subset(q: NextItemQueries, inter, group: str, purchase_events: tuple[str, ...]) -> NextItemQueries:
    """The queries of one target group: ``all``, ``click`` (non-purchase events) or ``purchase``."""
    if group == "all":
        return q
    check_event_group(inter, group, purchase_events)
    codes = [inter.event_types.index(e) for e in purchase_events]
    purchase = np.isin(q.event, codes)
    return q.subset(purchase if group == "purchase" else ~purchase)


def check_event_group(inter, group: str, purchase_events: tuple[str, ...]):
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
    """Builds (once per part and protocol) and scores the next-item queries of a data set."""

    def __init__(self, cfg: C.Config, data, opts: NextItemEval):
        self.inter, self.threshold, self.opts = data.inter, data.relevant_threshold, opts
        self.ks, self.batch = tuple(cfg.eval.ks), cfg.eval.batch_users
        if max(self.ks) > data.inter.n_items:
            raise ConfigError("eval.ks", f"cut-off {max(self.ks)} exceeds the {data.inter.n_items} items of this data")
        check_event_group(data.inter, opts.events, opts.purchase_events)
        self.groups: tuple[str, ...] = ()
        if data.inter.event is not None and data.inter.event_types:
            check_event_group(data.inter, "purchase", opts.purchase_events)
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

    def evaluate(self, score, view: EvalView, part: str, group: str | None = None, on_batch=None):
        """Metrics of one target group (default: ``opts.events``) of a part."""
        q = self.queries(view, part, group or self.opts.events)
        out = next_item_metrics(score, q, self.ks, self.batch, self.opts.exclude_seen, on_batch)
        release_freed_memory()
        return out


def last_windows(inter, rows: np.ndarray, users: np.ndarray, window: int) -> np.ndarray:
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


class NextItemProtocol:
    """Mixin: ``next_item`` and the event target groups, scored by ``self.evaluator`` from ``window_scores``."""

    evaluator: NextItemEvaluator

    def window_scores(self, state):
        """``(windows [B, N]) -> scores [B, I]`` of ``state``."""
        raise NotImplementedError

    def evaluate_next_item(self, state, view: EvalView, part: str, on_batch=None, group: str | None = None):
        return self.evaluator.evaluate(self.window_scores(state), view, part, group, on_batch)

    def evaluators(self) -> dict[str, Evaluator]:
        return {"next_item": self.evaluate_next_item}

    def group_evaluators(self) -> dict[str, Evaluator]:
        def group_evaluator(group):
            return lambda state, view, part, on_batch=None: self.evaluate_next_item(state, view, part, on_batch, group)

        return {group: group_evaluator(group) for group in self.evaluator.groups}


# ----------------------------------------------------------------------------------------------------
# Trainers


_FUNCTIONS: dict[tuple[str, int], dict] = {}


def _compiled_functions(m: SQNConfig, n_items: int) -> dict:
    """The jitted init/train/score functions of a config, shared by every trainer of this process.

    ``--seeds N`` (and a resumed run in the same process) builds one trainer per seed; sharing the jitted
    functions (and the compiled training step per data shape) compiles them once instead of N times.
    """
    key = (repr(m), n_items)
    if key not in _FUNCTIONS:
        # An ablation grid runs many configs in one process, one after another: keep only the current one,
        # so that the previous config's compiled step is freed before this one compiles.
        _FUNCTIONS.clear()
        gc.collect()
        network = m.network(n_items)
        init, train = make_train(m, network)
        _FUNCTIONS[key] = {"init": init, "train": train, "score": make_scorer(m, network), "compiled": {}}
    return _FUNCTIONS[key]


class SequentialTrainer(NextItemProtocol):
    """Harness trainer for every ``SQNConfig`` agent (m3s_tdlambda, sqn, sasrec, gru4rec)."""

    def __init__(self, cfg: C.Config, data):
        m: SQNConfig = cfg.model
        if cfg.devices != 1:
            raise ConfigError("--devices", "the sequential experiments run on one device")
        self.cfg, self.inter = m, data.inter
        # Training windows come only from the training rows (checked on what reaches the windows).
        train = guard_training_input(data.split, train_view(data.inter, data.split), "sequence windows")
        chunks = sequence_chunks(train, m.window, m.lookahead, m.chunk, m.min_history)
        self.n_train_samples = chunks.n_samples
        if self.n_train_samples == 0:
            raise ConfigError("data", "the training part has no transition (every user needs more than "
                                      "model.min_history interactions)")
        # Only the device copy is kept (the host arrays would double the data's share of the peak).
        self.data = jax.device_put(chunks.arrays())
        del chunks, train
        release_freed_memory()
        self.network = m.network(data.inter.n_items)
        self._fns = _compiled_functions(m, data.inter.n_items)
        self._init, self._train, self._score = self._fns["init"], self._fns["train"], self._fns["score"]
        self.evaluator = NextItemEvaluator(cfg, data, NextItemEval(m.window, m.exclude_seen, m.purchase_events,
                                                                   m.eval_events, m.eval_targets))

    def init(self, key):
        state = self._init(key)
        # Compile the evaluation functions now, while little is allocated, and hand their compile-time
        # memory back before training: the process peak stays max(train, eval), not their sum.
        self.evaluator.warm_up(lambda w: self._score(state.params, w), self.cfg.window)
        release_freed_memory()
        return state

    def train(self, state, n_steps):
        shapes = jax.tree.map(lambda x: (x.shape, x.dtype), self.data)
        compiled = self._fns["compiled"].get(str(shapes))
        if compiled is None:
            # Compiled ahead of the first run (n_steps is a traced loop bound, so once) and the compiler's
            # freed memory returned before the step's own buffers are allocated: a lower process peak.
            compiled = self._train.lower(state, self.data, jnp.int32(n_steps)).compile()
            self._fns["compiled"][str(shapes)] = compiled
            release_freed_memory()
        state, metrics = compiled(state, self.data, jnp.int32(n_steps))
        metrics = {k: float(v) for k, v in metrics.items()}
        release_freed_memory()
        return state, metrics

    def score_fn(self, state, view: EvalView):
        """Next-item scores from each user's last visible items (the built-in per-user protocols)."""
        windows = last_windows(self.inter, guard_model_input(view, view.context, "state windows"), view.users,
                               self.cfg.window)

        def score(users, context):
            pos = np.searchsorted(view.users, np.asarray(users))
            return self._score(state.params, jnp.asarray(windows[pos]))

        return score

    def window_scores(self, state):
        return lambda w: self._score(state.params, w)

    def counters(self, state):
        return {"env_steps": 0, "updates": int(state.step), "samples": samples_count(state)}


@dataclasses.dataclass
class PopularitySeqConfig:
    window: int = 10
    """Items of history shown per query (unused by the scores; keeps the queries identical)."""
    exclude_seen: bool = True
    """Never rank items the user interacted with before the target."""
    positives_only: bool = False
    """Count only training interactions whose rating/reward reaches the relevance threshold."""
    purchase_events: tuple[str, ...] = ("transaction",)
    """Events sources: event types counted as purchases (the rest are clicks)."""
    eval_events: Literal["all", "click", "purchase"] = "all"
    """Targets the next_item protocol scores: all, click or purchase (events sources)."""
    eval_targets: Literal["all", "relevant"] = "all"
    """Every held-out interaction is a next-item query, or only those reaching data.relevant_threshold."""


class PopularitySeqTrainer(NextItemProtocol, PopularityTrainer):
    """Most-popular training items for every query, under the next-item protocol."""

    def __init__(self, cfg: C.Config, data):
        super().__init__(cfg, data)
        m: PopularitySeqConfig = cfg.model
        self.evaluator = NextItemEvaluator(cfg, data, NextItemEval(m.window, m.exclude_seen, m.purchase_events,
                                                                   m.eval_events, m.eval_targets))

    def window_scores(self, state):
        item_scores = state["item_scores"]
        return lambda w: jnp.broadcast_to(item_scores, (w.shape[0], item_scores.shape[0]))


# ----------------------------------------------------------------------------------------------------
# Configs


def _base(exp: str, model, steps: int, eval_every: int) -> C.Config:
    """Shared settings: the seed's seeded user-level 80/10/10 split (``data.split.scheme=leave_last`` for
    the temporal leave-last-out one), cut-offs 5/10/20/40, selection on validation NDCG@10.

    Training budgets are about 10 minutes per seed on a 2-core CPU for ML-1M (2048 samples per step;
    the ML-1M training part of the user split holds 783k transitions, 382 steps per pass).
    """
    return C.Config(
        exp=exp, model=model, data=C.DataConfig(split=C.SplitConfig(scheme="users")),
        train=C.TrainConfig(steps=steps, eval_every=eval_every, ckpt_every=eval_every, log_every=100),
        eval=C.EvalConfig(protocols=("next_item",), ks=(5, 10, 20, 40), select="ndcg@10", batch_users=512),
    )


def m3s_config() -> C.Config:
    """The seed's method, corrected: n = 6 steps, λ = 0.8, γ = 0.5, SSL, negatives, double Q."""
    return _base("m3s_tdlambda", SQNConfig(), steps=3500, eval_every=500)


def sqn_config() -> C.Config:
    """One-step SQN (Xin et al. 2020): CE + double Q-learning on one-step targets, same weights as m3s."""
    return _base("sqn", SQNConfig(n_steps=1, ssl="none", negatives=0), steps=3500, eval_every=500)


def sasrec_config() -> C.Config:
    """The same transformer encoder trained by cross-entropy only.

    Learning rate and dropout are the best of lr 1e-3 / 3e-3 x dropout 0 / 0.1 / 0.3 on ML-1M validation
    NDCG@10 (README, "Tuning of the supervised baselines")."""
    return _base("sasrec", SQNConfig(sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0, lr=3e-3, dropout=0.1),
                 steps=6000, eval_every=750)


def gru4rec_config() -> C.Config:
    """A GRU over the last items trained by cross-entropy only (GRU4Rec-style).

    Learning rate and dropout are the best of lr 1e-3 / 3e-3 x dropout 0.1 / 0.3, then dropout 0.5 and lr 1e-2
    around the best, on ML-1M validation NDCG@10 (README, "Tuning of the supervised baselines")."""
    return _base("gru4rec", SQNConfig(backbone="gru", sup_weight=1.0, q_weight=0.0, ssl="none", negatives=0,
                                      lr=3e-3, dropout=0.3),
                 steps=6000, eval_every=750)


def popularity_seq_config() -> C.Config:
    cfg = _base("popularity_seq", PopularitySeqConfig(), steps=0, eval_every=1)
    cfg.train = C.TrainConfig(steps=0)
    return cfg


QUICK = ("train.steps=12", "train.eval_every=6", "train.ckpt_every=6", "train.log_every=3", "model.dim=16",
         "model.ff_dim=32", "model.batch_size=64", "model.chunk=4", "eval.batch_users=256")

EXPERIMENTS = [
    Experiment("m3s_tdlambda", "sequential transformer: CE + multi-step self-supervision + double-Q TD(lambda) "
               "over n steps with negatives (M3S seed, corrected); next_item protocol",
               m3s_config, SequentialTrainer, quick=QUICK, protocols=PROTOCOLS),
    Experiment("sqn", "SQN (Xin et al. 2020): same encoder, CE + one-step double Q-learning; next_item protocol",
               sqn_config, SequentialTrainer, quick=QUICK, protocols=PROTOCOLS),
    Experiment("sasrec", "same transformer encoder, supervised cross-entropy only; next_item protocol",
               sasrec_config, SequentialTrainer, quick=QUICK, protocols=PROTOCOLS),
    Experiment("gru4rec", "GRU over the last items, supervised cross-entropy only; next_item protocol",
               gru4rec_config, SequentialTrainer, quick=QUICK, protocols=PROTOCOLS),
    Experiment("popularity_seq", "most-popular training items under the sequential next-item protocol "
               "(the floor of the rows above)", popularity_seq_config, PopularitySeqTrainer,
               quick=("eval.batch_users=256",), protocols=PROTOCOLS),
]
