"""Train / validation / test splits as pure functions of (interactions, config, seed).

Every split returns row indices into an ``Interactions`` (sorted, disjoint). Three schemes:

* ``leave_last``: temporal leave-last-k-out per user: each user's last ``n_test`` rows are test, the
  ``n_val`` before them validation, the rest training. Users with fewer than
  ``n_val + n_test + min_train`` rows stay wholly in training (they cannot be evaluated).
* ``users``: a seeded user-level split (the M3S seed's 80/10/10 over users, now reproducible with
  numpy's ``Generator``, so a JAX upgrade cannot change who is a test user). Held-out
  users contribute nothing to training; at evaluation their earliest ``heldout_visible`` rows are the
  visible history (input only: fold-in, state, exclusion) and the rest are targets.
* ``global_time``: one global temporal cut: rows before the ``fractions[0]`` quantile of time are
  training, then validation up to the ``fractions[0] + fractions[1]`` quantile, then test. Needs real
  timestamps.

Item cold start (``cold_items`` > 0, any scheme): a seeded fraction of the items is removed from
training with ALL their training interactions (``Split.dropped``): they stand for items that arrive
after the model is trained. Their validation/test rows stay, as targets of the ``cold_start`` protocol
(``jaxrec.eval.protocols``), which ranks them among themselves.

Leakage is guarded in code, not only in tests, at the boundary where data reaches a model rather than
where a split is computed: ``Split`` refuses overlapping parts; every fitting consumer (embedding
pretraining, the simulator and its replay, sequence windows, popularity counts) passes the exact
``Interactions`` it fits on through ``guard_training_input``, which reads their provenance
(``Interactions.source_rows``) and raises ``LeakageError`` if any validation or test row (or a row of a
held-out cold item) is in it; every model input at evaluation (fold-in histories, states) passes
through ``guard_model_input``, which raises if it holds a row the evaluation scores.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.interactions import Interactions
from jaxrec.errors import ConfigError, LeakageError

SCHEMES = ("leave_last", "users", "global_time")


@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices (sorted int64) of each part, and how held-out rows relate to training users."""

    scheme: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    heldout_users: bool
    """True when validation/test users have no training rows (scheme ``users``)."""
    cold_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    """Sorted item ids held out of training entirely (item cold start); empty by default."""
    dropped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    """Rows of cold items removed from training (in no part; never trained on)."""

    def __post_init__(self):
        for name in ("train", "val", "test"):
            rows = getattr(self, name)
            if rows.ndim != 1 or (len(rows) > 1 and np.any(np.diff(rows) <= 0)):
                raise LeakageError(f"split part '{name}' must be strictly increasing row indices")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if np.intersect1d(getattr(self, a), getattr(self, b), assume_unique=True).size:
                raise LeakageError(f"split parts '{a}' and '{b}' share rows")

    def part(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split part {name!r}")
        return getattr(self, name)


def guard_train_rows(split: Split, rows: np.ndarray) -> np.ndarray:
    """Returns ``rows`` after checking none of them is a validation or test row.

    Called by everything that fits parameters (embedding pretraining, replay filling, sequence windows
    for training), so a held-out interaction can never be trained on, whatever the caller computed.
    """
    rows = np.asarray(rows)
    for name in ("val", "test"):
        if np.isin(rows, split.part(name)).any():
            raise LeakageError(f"{name} interactions were about to reach training")
    if split.dropped.size and np.isin(rows, split.dropped).any():
        raise LeakageError("interactions of held-out cold-start items were about to reach training")
    return rows


def guard_training_input(split: Split, inter: Interactions, consumer: str) -> Interactions:
    """Returns ``inter`` after checking that none of its rows (by provenance) is held out.

    ``consumer`` names the place (``"MF fitting"``, ``"simulator"``, ...) for the error message. The
    whole prepared data set (no provenance) always holds the validation and test rows, so it is refused.
    """
    rows = inter.sources()
    for name in ("val", "test"):
        n = np.isin(rows, split.part(name)).sum()
        if n:
            raise LeakageError(f"{consumer}: {n} {name} interactions were about to reach training")
    if split.dropped.size and np.isin(rows, split.dropped).any():
        raise LeakageError(f"{consumer}: interactions of held-out cold-start items were about to reach training")
    return inter


def guard_model_input(view: "EvalView", rows: np.ndarray, consumer: str) -> np.ndarray:
    """Returns ``rows`` (row indices fed to a model at evaluation) after checking that none of them is a
    target of ``view``: a model may see a user's visible history, never what it is scored on."""
    rows = np.asarray(rows)
    n = np.isin(rows, view.target).sum()
    if n:
        raise LeakageError(f"{consumer}: {n} evaluation targets were about to be given to the model as input")
    return rows


def train_view(inter: Interactions, split: Split) -> Interactions:
    """The training interactions only; the one door through which training code sees data."""
    return inter.take(guard_train_rows(split, split.train))


def leave_last_out(inter: Interactions, n_val: int = 1, n_test: int = 1, min_train: int = 1) -> Split:
    if n_val < 0 or n_test < 1 or min_train < 1:
        raise ConfigError("data.split", "need n_val >= 0, n_test >= 1 and min_train >= 1")
    count = inter.user_counts[inter.user]
    from_end = count - 1 - inter.position  # 0 for each user's last row
    eligible = count >= n_val + n_test + min_train
    test = eligible & (from_end < n_test)
    val = eligible & (from_end >= n_test) & (from_end < n_test + n_val)
    return _from_masks("leave_last", ~(test | val), val, test, heldout_users=False)


def user_split(inter: Interactions, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> Split:
    _check_fractions(fractions)
    users = np.flatnonzero(inter.user_counts > 0)
    # numpy's Generator (PCG64) on stream [seed, 0], not jax.random: who is a test user must not move
    # when JAX changes its PRNG implementation (the cold-item draw uses stream [seed, 1]).
    perm = np.random.default_rng([seed, 0]).permutation(len(users))
    n_test = int(round(fractions[2] * len(users)))
    n_val = int(round(fractions[1] * len(users)))
    role = np.zeros(inter.n_users, np.int8)  # 0 train, 1 val, 2 test
    role[users[perm[:n_test]]] = 2
    role[users[perm[n_test:n_test + n_val]]] = 1
    row_role = role[inter.user]
    return _from_masks("users", row_role == 0, row_role == 1, row_role == 2, heldout_users=True)


def global_time_split(inter: Interactions, fractions=(0.8, 0.1, 0.1)) -> Split:
    _check_fractions(fractions)
    if not inter.order_is_time:
        raise ConfigError(
            "data.split.scheme",
            "global_time needs real timestamps, but this dataset's order is a per-user rank "
            "(prepare it with --time-col, or use scheme leave_last or users)",
        )
    # Cut times are the order values at ranks floor(f * N): the first fractions[0] of all rows (ties at
    # the cut go to the later part, so one timestamp never straddles two parts).
    n = len(inter.order)
    ranks = [min(n - 1, int(fractions[0] * n)), min(n - 1, int((fractions[0] + fractions[1]) * n))]
    t1, t2 = np.partition(inter.order, ranks)[ranks]
    train = inter.order < t1
    test = inter.order >= t2
    return _from_masks("global_time", train, ~train & ~test, test, heldout_users=False)


def make_split(inter: Interactions, cfg) -> Split:
    """Dispatches on ``cfg.scheme`` (a ``jaxrec.config.SplitConfig``; ``cfg.seed`` seeds ``users``), then
    holds out ``cfg.cold_items`` of the items when it is > 0."""
    if cfg.scheme == "leave_last":
        split = leave_last_out(inter, cfg.n_val, cfg.n_test, cfg.min_train)
    elif cfg.scheme == "users":
        split = user_split(inter, cfg.fractions, cfg.seed)
    elif cfg.scheme == "global_time":
        split = global_time_split(inter, cfg.fractions)
    else:
        raise ConfigError("data.split.scheme", f"unknown scheme {cfg.scheme!r}, expected one of {SCHEMES}")
    fraction = getattr(cfg, "cold_items", 0.0)
    return hold_out_items(inter, split, fraction, cfg.seed) if fraction > 0 else split


def hold_out_items(inter: Interactions, split: Split, fraction: float, seed: int = 0) -> Split:
    """``split`` with a seeded ``fraction`` of the items (those with any interaction) removed from training.

    The draw uses numpy's ``Generator`` on its own stream (``[seed, 1]``), so it does not move with the
    user permutation or with JAX's PRNG implementation. Training rows of the chosen items are dropped;
    their validation/test rows stay (the ``cold_start`` protocol's targets).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError("data.split.cold_items", f"must be in [0, 1), got {fraction}")
    items = np.flatnonzero(np.bincount(inter.item, minlength=inter.n_items) > 0)
    n_cold = int(round(fraction * len(items)))
    if n_cold == 0:
        raise ConfigError("data.split.cold_items", f"{fraction} of {len(items)} items rounds to none")
    rng = np.random.default_rng([seed, 1])
    cold = np.sort(rng.choice(items, size=n_cold, replace=False)).astype(np.int32)
    is_cold = np.isin(inter.item[split.train], cold)
    return dataclasses.replace(split, train=split.train[~is_cold], cold_items=cold, dropped=split.train[is_cold])


@dataclasses.dataclass(frozen=True)
class EvalView:
    """What an evaluator sees for one part: per-row indices of visible history and of targets.

    ``users`` are the evaluated users (those with at least one target row), ascending. ``context`` rows
    may be fed to a model as input (state, fold-in, exclusion) but are never trained on; ``target`` rows
    are what must be predicted.
    """

    users: np.ndarray
    context: np.ndarray
    target: np.ndarray


def eval_view(inter: Interactions, split: Split, part: str, heldout_visible: int = 10) -> EvalView:
    """Splits a part into visible context and targets (see ``EvalView``)."""
    if part not in ("val", "test"):
        raise ValueError(f"eval_view part must be 'val' or 'test', got {part!r}")
    rows = split.part(part)
    if split.heldout_users:
        # Held-out users: the earliest `heldout_visible` rows are shown, the rest are targets.
        pos = inter.position[rows]
        context, target = rows[pos < heldout_visible], rows[pos >= heldout_visible]
    else:
        # Temporal schemes: everything of the user before this part is visible; for the test part
        # that includes the validation rows (standard leave-one-out practice).
        earlier = split.train if part == "val" else np.union1d(split.train, split.val)
        target = rows
        context = earlier[np.isin(inter.user[earlier], inter.user[rows])]
    users = np.unique(inter.user[target])
    context = context[np.isin(inter.user[context], users)]
    return EvalView(users=users, context=np.sort(context), target=target)


def _from_masks(scheme, train, val, test, heldout_users) -> Split:
    return Split(
        scheme=scheme, train=np.flatnonzero(train), val=np.flatnonzero(val), test=np.flatnonzero(test),
        heldout_users=heldout_users,
    )


def _check_fractions(fractions):
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError("data.split.fractions", f"need three non-negative fractions summing to 1, got {fractions}")
