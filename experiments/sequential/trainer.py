"""Trainers of the sequential experiments: every ``SQNConfig`` agent, and the popularity floor, both
scored by the next-item protocol (``jaxrec.eval.next_item``)."""
from __future__ import annotations

import abc

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.memory import release_freed_memory
from experiments.popularity import PopularityTrainer
from experiments.trainer import Evaluator, StandardEvaluation
from jaxrec import config as C
from jaxrec import parallel
from jaxrec import seeds as seeds_lib
from jaxrec.data.sequences import sequence_chunks, user_sequences
from jaxrec.data.splits import EvalView, guard_model_input, guard_training_input, train_view
from jaxrec.errors import ConfigError
from jaxrec.eval.next_item import NextItemEval, NextItemEvaluator, last_windows
from jaxrec.rl.sqn import SQNConfig, make_scorer, make_train, samples_count


def next_item_evaluator(cfg: C.Config, data) -> NextItemEvaluator:
    """The next-item evaluator of a run, with the protocol options of its ``model`` config."""
    m = cfg.model
    return NextItemEvaluator(data.inter, data.relevant_threshold, tuple(cfg.eval.ks), cfg.eval.batch_users,
                             NextItemEval(m.state_len, m.exclude_seen, m.purchase_events, m.eval_events, m.eval_targets))


class NextItemProtocol(StandardEvaluation, abc.ABC):
    """Mixin: ``next_item`` and the event target groups, scored by ``self.evaluator`` from ``window_scores``."""

    evaluator: NextItemEvaluator

    @abc.abstractmethod
    def window_scores(self, state):
        """``(windows [B, N]) -> scores [B, I]`` of ``state``."""

    def evaluate_next_item(self, state, view: EvalView, part: str, on_batch=None, group: str | None = None):
        out = self.evaluator.evaluate(self.window_scores(state), view, part, group, on_batch)
        release_freed_memory()
        return out

    def evaluators(self) -> dict[str, Evaluator]:
        return {"next_item": self.evaluate_next_item}

    def group_evaluators(self) -> dict[str, Evaluator]:
        def group_evaluator(group):
            return lambda state, view, part, on_batch=None: self.evaluate_next_item(state, view, part, on_batch, group)

        return {group: group_evaluator(group) for group in self.evaluator.groups}


class SequentialTrainer(NextItemProtocol):
    """Trainer for every ``SQNConfig`` agent (m3s_tdlambda, sqn, sasrec, gru4rec).

    It owns its jitted init/train/score functions and the compiled training step per data shape: a run
    builds one trainer for all of its seeds (``experiments.loop``), so ``--seeds N`` compiles them once,
    and they go when the run does.
    """

    def __init__(self, cfg: C.Config, data):
        m: SQNConfig = cfg.model.for_split(data.split.heldout_users)
        self.mesh = parallel.make_mesh(cfg.devices)
        self.seed_mesh = parallel.make_mesh(cfg.train.seed_devices, "train.seed_devices")
        # One global batch of batch_size / chunk chunks (per micro-batch and length stratum) split over the devices.
        parallel.check_divisible("model.batch_size", m.slice_rows, self.mesh)
        self.cfg, self.inter = m, data.inter
        # Training windows come only from the training rows (checked on what reaches the windows).
        train = guard_training_input(data.split, train_view(data.inter, data.split), "sequence windows")
        if m.mode == "sequence":  # one row per user: the last max_len items, every position a sample
            chunks = user_sequences(train, m.max_len, m.min_history)
        else:
            chunks = sequence_chunks(train, m.window, m.lookahead, m.chunk, m.min_history)
        self.n_train_samples = chunks.n_samples
        if self.n_train_samples == 0:
            raise ConfigError("data", "the training part has no transition (every user needs more than "
                                      "model.min_history interactions)")
        # Only the device copy is kept (the host arrays would double the data's share of the peak).
        arrays = chunks.strata(m.length_strata) if m.length_strata > 1 else chunks.arrays()
        self.data = parallel.replicate(jax.device_put(arrays), self.mesh)
        del chunks, train, arrays
        release_freed_memory()
        network = m.network(data.inter.n_items)
        init, train = make_train(m, network, parallel.batch_sharder(self.mesh))
        pinned = parallel.replicated(self.mesh)
        self._init, self._train = jax.jit(init), jax.jit(train, out_shardings=pinned)
        self._train_many = seeds_lib.vmap_train(train, n_shared=1, static_steps=False, out_shardings=pinned,
                                                mesh=self.seed_mesh)
        self._score = make_scorer(m, network)
        self._compiled: dict[str, Any] = {}
        self.evaluator = next_item_evaluator(cfg, data)

    def init(self, key):
        state = parallel.replicate(self._init(key), self.mesh)
        # Compile the evaluation functions now, while little is allocated, and hand their compile-time
        # memory back before training: the process peak stays max(train, eval), not their sum.
        # (On this process's replica: evaluation scores local arrays, also when the mesh spans several processes.)
        params = parallel.local(state.params)
        self.evaluator.warm_up(lambda w: self._score(params, w), self.cfg.state_len)
        release_freed_memory()
        return state

    def train(self, state, n_steps):
        shapes = str(jax.tree.map(lambda x: (x.shape, x.dtype), self.data))
        compiled = self._compiled.get(shapes)
        if compiled is None:
            # Compiled ahead of the first run (n_steps is a traced loop bound, so once) and the compiler's
            # freed memory returned before the step's own buffers are allocated: a lower process peak.
            compiled = self._train.lower(state, self.data, jnp.int32(n_steps)).compile()
            self._compiled[shapes] = compiled
            release_freed_memory()
        state, metrics = compiled(state, self.data, jnp.int32(n_steps))
        metrics = {k: float(v) for k, v in metrics.items()}
        release_freed_memory()
        return state, metrics

    def can_train_seeds(self) -> bool:
        return True

    def with_hyper(self, state, cfg: C.Config):
        """``state`` holding the traced hyper-parameters of ``cfg`` (``SQNConfig.TRACED``): a run whose config
        differs from this trainer's only in those shares its compiled program (``C.program_key``)."""
        return state.replace(hyper=parallel.replicate(seeds_lib.traced_values(cfg.model), self.mesh))

    def train_seeds(self, states, n_steps):
        """``train`` of stacked seed states as one vmapped program (``jaxrec.seeds``); metrics are [S]."""
        states, metrics = self._train_many(states, self.data, jnp.int32(n_steps))
        release_freed_memory()
        return states, metrics

    def score_fn(self, state, view: EvalView):
        """Next-item scores from each user's last visible items (the built-in per-user protocols)."""
        windows = last_windows(self.inter, guard_model_input(view, view.context, "state windows"), view.users,
                               self.cfg.state_len)

        def score(users, context):
            pos = np.searchsorted(view.users, np.asarray(users))
            return self._score(state.params, jnp.asarray(windows[pos]))

        return score

    def window_scores(self, state):
        return lambda w: self._score(state.params, w)

    def counters(self, state):
        return {"env_steps": 0, "updates": int(state.step), "samples": samples_count(state)}


class PopularitySeqTrainer(NextItemProtocol, PopularityTrainer):
    """Most-popular training items for every query, under the next-item protocol."""

    def __init__(self, cfg: C.Config, data):
        super().__init__(cfg, data)
        self.evaluator = next_item_evaluator(cfg, data)

    def window_scores(self, state):
        item_scores = state["item_scores"]
        return lambda w: jnp.broadcast_to(item_scores, (w.shape[0], item_scores.shape[0]))
