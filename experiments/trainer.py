"""What an experiment is (``Experiment``), what its trainer provides (``Trainer``), and how a trainer is
evaluated (``Evaluator``, ``evaluate``): the contract between an experiment and the loop
(docs/design.md, section 1, "Trainer interface")."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol

import jax

from experiments.dataset import Dataset
from experiments.progress import Bars
from jaxrec import config as C
from jaxrec.data.splits import EvalView, eval_view
from jaxrec.errors import ConfigError
from jaxrec.eval.protocols import ScoreFn, cold_start, drr_protocol, full_ranking, state_rows

OnBatch = Callable[[int, int], None]
"""Progress callback ``(done, total)``: called after each scored batch of users (or queries)."""


class Evaluator(Protocol):
    """One evaluation protocol of a trainer: ``(state, view, part, on_batch) -> (metrics, n_users)``.

    ``view`` is the part's ``EvalView``; ``part`` is ``val`` or ``test``; ``on_batch`` (None: no
    progress) is called as batches are scored; ``metrics`` maps ``hr@10``-style names to means over the
    ``n_users`` users (or their queries) the protocol scored."""

    def __call__(self, state: Any, view: EvalView, part: str,
                 on_batch: OnBatch | None = None) -> tuple[dict[str, float], int]: ...


class Trainer(Protocol):
    """What an experiment provides; every method but ``counters`` may be jitted device code.

    Evaluation: the built-in protocols ``full``, ``drr`` and ``cold_start`` (``standard_evaluators``) are
    scored from ``score_fn``. A trainer replaces one of them, or adds a protocol of its own (``next_item``
    of the sequential experiments), by returning it from ``evaluators()`` under the protocol's name;
    ``group_evaluators()`` returns named target groups (click vs purchase targets of event data) whose
    final validation and test metrics ``final.json`` holds under ``by_event`` (``val`` and ``test`` keep
    the protocols only). ``StandardEvaluation`` is the mixin of a trainer that does neither. A protocol
    named in ``eval.protocols`` that neither provides is a ``ConfigError``."""

    def init(self, key: jax.Array) -> Any:
        """The whole training state as one pytree (params, optimiser, replay, keys, counters)."""

    def train(self, state: Any, n_steps: int) -> tuple[Any, dict[str, float]]:
        """Runs ``n_steps`` steps (one jitted chunk) and returns mean losses over them."""

    def score_fn(self, state: Any, view: EvalView) -> ScoreFn:
        """``(users [B], context_mask [B, I]) -> scores [B, I]`` for the built-in protocols.

        ``view`` holds the part's visible history rows (``view.context``), so a sequence model can
        build each user's input; the mask already marks the same items."""

    def evaluators(self) -> dict[str, Evaluator]:
        """Protocols this trainer scores itself, by name: they replace or add to ``standard_evaluators``."""

    def group_evaluators(self) -> dict[str, Evaluator]:
        """Target groups reported apart in ``final.json`` (``by_event``), by name; {} for none."""

    def counters(self, state: Any) -> dict[str, int]:
        """``env_steps`` and ``updates`` done so far."""


class StandardEvaluation:
    """Mixin of a trainer evaluated by the built-in protocols only, with no target groups."""

    def evaluators(self) -> dict[str, Evaluator]:
        return {}

    def group_evaluators(self) -> dict[str, Evaluator]:
        return {}


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    make_config: Callable[[], C.Config]
    make_trainer: Callable[[C.Config, Dataset], Trainer]
    """Builds the trainer of a run; a multi-seed run builds it once and calls ``init`` once per seed, so
    a trainer depends on its config but never on ``cfg.seed``."""
    quick: tuple[str, ...] = ()
    """``--set`` overrides applied by ``--quick`` (a tiny but real configuration)."""
    protocols: tuple[str, ...] = ("full",)
    """Protocols this experiment can be evaluated with."""
    data_parallel: bool = False
    """Its trainer splits the training batch over ``--devices N`` (``jaxrec.parallel``); otherwise one device."""

    def check_protocols(self, protocols: tuple[str, ...]):
        """Refuses a protocol this experiment is not evaluated with (before anything runs)."""
        for protocol in protocols:
            if protocol not in self.protocols:
                raise ConfigError("eval.protocols", f"unknown protocol {protocol!r} for experiment {self.name}; "
                                                    f"allowed: {', '.join(self.protocols)}")


# ----------------------------------------------------------------------------------------------------
# Evaluation


def standard_evaluators(trainer: Trainer, data: Dataset, cfg: C.Config) -> dict[str, Evaluator]:
    """The built-in protocols (``jaxrec.eval.protocols``), each scored from ``trainer.score_fn``."""

    def full(state, view, part, on_batch=None):
        return full_ranking(trainer.score_fn(state, view), data.inter, view, data.relevant_threshold, cfg.eval.ks,
                            cfg.eval.batch_users, on_batch=on_batch)

    def drr(state, view, part, on_batch=None):
        # The model sees only the state items (as in the seed's protocol), so it is scored from them.
        sv = state_rows(data.inter, view, cfg.eval.drr_n_state, data.split.heldout_users)
        return drr_protocol(trainer.score_fn(state, sv), data.inter, view, data.relevant_threshold,
                            cfg.eval.drr_n_state, data.split.heldout_users, cfg.eval.drr_ks, cfg.eval.drr_ideal,
                            cfg.eval.batch_users, on_batch)

    def cold(state, view, part, on_batch=None):
        return cold_start(trainer.score_fn(state, view), data.inter, view, data.relevant_threshold,
                          data.split.cold_items, cfg.eval.ks, cfg.eval.batch_users, on_batch)

    return {"full": full, "drr": drr, "cold_start": cold}


def evaluators_of(trainer: Trainer, data: Dataset, cfg: C.Config) -> dict[str, Evaluator]:
    """Every protocol ``trainer`` can be scored with: the built-in ones, replaced or extended by its own."""
    return {**standard_evaluators(trainer, data, cfg), **trainer.evaluators()}


def check_evaluators(trainer: Trainer, data: Dataset, cfg: C.Config) -> dict[str, Evaluator]:
    """``evaluators_of``, refusing a protocol of ``eval.protocols`` that the trainer cannot be scored with."""
    table = evaluators_of(trainer, data, cfg)
    for protocol in cfg.eval.protocols:
        if protocol not in table:
            raise ConfigError("eval.protocols", f"unknown protocol {protocol!r} for {type(trainer).__name__} "
                                                f"(experiment {cfg.exp}); it provides: {', '.join(table)}")
    return table


def evaluate(trainer: Trainer, state, data: Dataset, cfg: C.Config, part: str,
             bars: Bars | None = None) -> tuple[dict, dict]:
    """({protocol: {metric: mean}}, {protocol: n_users}) on ``part``."""
    table = check_evaluators(trainer, data, cfg)
    view = eval_view(data.inter, data.split, part, cfg.data.split.heldout_visible)
    bars = bars or Bars(quiet=True)
    results, users = {}, {}
    for protocol in cfg.eval.protocols:
        on_batch, close = bars.counter(f"{part} {protocol}", "user")
        try:
            results[protocol], users[protocol] = table[protocol](state, view, part, on_batch)
        finally:
            close()
    return results, users


def evaluate_groups(trainer: Trainer, state, data: Dataset, cfg: C.Config, part: str) -> dict:
    """{group: (metrics, n_users)} of the trainer's ``group_evaluators`` ({} without any)."""
    groups = trainer.group_evaluators()
    if not groups:
        return {}
    view = eval_view(data.inter, data.split, part, cfg.data.split.heldout_visible)
    return {name: fn(state, view, part) for name, fn in groups.items()}


def selection_value(val: dict, cfg: C.Config) -> float:
    v = val[cfg.eval.protocols[0]].get(cfg.eval.select, float("nan"))
    return -math.inf if math.isnan(v) else v
