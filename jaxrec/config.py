"""Typed experiment configs: frozen dataclasses with a docstring per field, dotted overrides, validation.

Every config in jaxrec is written this one way. Frozen makes a config immutable and hashable, so it can be a
static argument of ``jax.jit`` as it is, and an override builds a new config (``replace``) instead of
changing one that a compiled function or a saved run already holds.

Each field is followed by a string literal documenting it (CleanRL style); ``field_docs`` reads those
back from the source so ``run.py --exp=NAME --show-config`` and error messages can show them.
``apply_overrides(cfg, ["train.steps=100", ...])`` parses each value by the field's declared type and
raises ``ConfigError`` naming the key, the expected type and, for an unknown key, the valid keys.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal

from jaxrec.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    scheme: Literal["leave_last", "users", "global_time"] = "leave_last"
    """How interactions are divided: per-user temporal leave-last-out, seeded held-out users, or one
    global time cut (see jaxrec.data.splits)."""
    n_val: int = 1
    """leave_last: number of each user's last interactions (before the test ones) used for validation."""
    n_test: int = 1
    """leave_last: number of each user's last interactions used for test."""
    min_train: int = 1
    """leave_last: users need at least this many training interactions to be evaluated."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """users / global_time: train, validation and test fractions (of users, or of time)."""
    heldout_visible: int = 10
    """users: earliest interactions of a held-out user shown to the model as input at evaluation."""
    seed: int = 0
    """users: seed of the user permutation (and of the cold-start items); fixed across training seeds,
    so --seeds varies only the learner, not the data."""
    cold_items: float = 0.0
    """Item cold start: this fraction of the items (seeded) is removed from training with all their
    interactions; their held-out rows are the targets of the cold_start protocol. 0 = none."""

    def validate(self):
        if self.n_val < 1:
            raise ConfigError("data.split.n_val", "must be >= 1: model selection needs a validation part")
        if self.n_test < 1 or self.min_train < 1 or self.heldout_visible < 1:
            raise ConfigError("data.split", "n_test, min_train and heldout_visible must be >= 1")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise ConfigError("data.split.fractions", f"need three fractions >= 0 summing to 1, got {self.fractions}")
        if not 0.0 <= self.cold_items < 1.0:
            raise ConfigError("data.split.cold_items", f"must be in [0, 1), got {self.cold_items}")
        if self.scheme in ("users", "global_time") and self.fractions[1] <= 0:
            raise ConfigError("data.split.fractions", "the validation fraction must be > 0 (model selection)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str = "data/ml-1m"
    """Prepared data directory (output of data_prep/prepare.py); --data sets it."""
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """How interactions are split (nested keys data.split.*)."""
    features: str | None = None
    """Directory of extracted item features (multimodal experiments); --features sets it."""
    relevant_threshold: float | None = None
    """A held-out interaction is relevant when its rating/reward is >= this; none = the dataset's
    meta.json positive_threshold."""


def drr_family_data() -> DataConfig:
    """The DRR family's split and relevance (``mf``, ``ddpg_id``, the multimodal experiments and their
    ``popularity`` floor): seeded held-out users 80/10/10, each showing its first 10 items, relevant =
    rating >= 4 (the DRR seed's ML-1M setting). One definition, so rows of one table agree by default."""
    return DataConfig(split=SplitConfig(scheme="users", heldout_visible=10), relevant_threshold=4.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 0
    """Training steps (updates or environment steps, per experiment); 0 for fit-once baselines."""
    eval_every: int = 1000
    """Validation evaluation period in steps (model selection keeps the best validated state)."""
    ckpt_every: int = 1000
    """Checkpoint period in steps; a re-run on the same run directory resumes from the last one."""
    log_every: int = 100
    """Training-loss logging period in steps (one jitted chunk per period)."""
    patience: int = 0
    """Early stopping: end training after this many validations in a row without a better ``eval.select`` than the
    best so far (SASRec+'s 10, with validation every epoch); 0 = train all ``steps``. The best state is tested as
    always; ``final.json`` records ``stopped_at``. Seeds trained together stop one by one (each keeps its own
    stopping step and best state; the vmapped program runs until the last one stops)."""
    seed_batch: int = 0
    """--seeds N: seeds trained together as one vmapped program (0 = all N; 1 = one after another).
    Lower it when N seeds' training states do not fit in memory together. Trainers that cannot batch seeds
    (the fit-once baselines; ddpg_id with mf_reward, whose seeds' simulators differ) run them one after another."""
    seed_devices: int = 1
    """Devices a vmapped batch of seeds is split over (seed parallelism): each device trains its share of the
    seeds, with no communication between them (``--devices`` instead splits one seed's batch). Every seed batch
    (``train.seed_batch``, or all of ``--seeds``) must be a multiple of it. On a CPU the devices are XLA's host
    devices, one thread each (``XLA_FLAGS=--xla_force_host_platform_device_count=N``): a seed's small matmuls
    leave the other cores idle, N host devices keep N of them busy (benchmarks/seed_sweep.py)."""

    def validate(self):
        if self.steps < 0 or self.eval_every < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ConfigError("train", "steps must be >= 0 and eval_every, ckpt_every, log_every >= 1")
        if self.patience < 0:
            raise ConfigError("train.patience", f"must be >= 0 (0: no early stopping), got {self.patience}")
        if self.seed_batch < 0:
            raise ConfigError("train.seed_batch", f"must be >= 0, got {self.seed_batch}")
        if self.seed_devices < 1:
            raise ConfigError("train.seed_devices", f"must be >= 1, got {self.seed_devices}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    protocols: tuple[str, ...] = ("full",)
    """Evaluation protocols: full = rank every item not in the visible history; drr = the DRR seed's
    one-step top-K from each user's state items; cold_start = rank only the items held out of training
    by data.split.cold_items (jaxrec.eval.protocols); next_item = the sequential experiments' protocol,
    one query per held-out interaction ranked from the items before it (jaxrec/eval/next_item.py)."""
    ks: tuple[int, ...] = (5, 10, 20)
    """Cut-offs K for hr@K, precision@K, recall@K, ndcg@K."""
    select: str = "ndcg@10"
    """Validation metric (of the first protocol) that picks the state evaluated on test."""
    batch_users: int = 1024
    """Users scored per batch (bounds the [users, items] score matrix in memory)."""
    drr_n_state: int = 10
    """drr protocol: state items per user (held-out users: their first ones; temporal: the last ones)."""
    drr_ks: tuple[int, ...] = (5, 10)
    """drr protocol cut-offs (the DRR seed reports P@5, NDCG@5, P@10, NDCG@10)."""
    drr_ideal: Literal["true", "k"] = "true"
    """drr protocol NDCG: true = ideal DCG over min(K, #relevant); k = the seed's K-relevant variant."""

    def validate(self):
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("eval.ks", f"need positive cut-offs, got {self.ks}")
        name, _, k = self.select.partition("@")
        ks = self.drr_ks if self.protocols and self.protocols[0] == "drr" else self.ks
        if name not in ("hr", "precision", "recall", "ndcg") or not k.isdigit() or int(k) not in ks:
            raise ConfigError("eval.select", f"{self.select!r} must be METRIC@K with K among the first protocol's cut-offs {ks}")
        if self.batch_users < 1 or self.drr_n_state < 1 or not self.drr_ks or min(self.drr_ks) < 1:
            raise ConfigError("eval", "batch_users, drr_n_state and drr_ks must be >= 1")
        unknown = [p for p in self.protocols if p not in ("full", "drr", "cold_start", "next_item")]
        if not self.protocols or unknown:
            raise ConfigError("eval.protocols", f"{unknown or 'none'}: expected a non-empty subset of full, drr, cold_start, next_item")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: shared parts plus the experiment's own ``model`` dataclass."""

    exp: str = ""
    """Experiment name (set by the runner)."""
    seed: int = 0
    """Seed of every PRNG key of the learner (init, exploration, sampling); the split has its own."""
    devices: int = 1
    """Devices for data parallelism (--devices; jaxrec/parallel.py): each training batch is split over
    them and the global batch stays the same, so the numbers equal one device's up to reduction order."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Dataset and split."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Training loop."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation."""
    model: Any = None
    """The experiment's own config dataclass (keys model.*)."""


# ----------------------------------------------------------------------------------------------------
# Field documentation


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Maps each field of dataclass ``cls`` to the string literal that follows it in the source (fields
    inherited from dataclass bases keep their base's doc unless redefined)."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cfg) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type name, current value, doc) for every leaf field of ``cfg``."""
    rows = []
    for key, (owner, name) in _leaves(cfg).items():
        hint = _hints(type(owner))[name]
        rows.append((key, _type_name(hint), getattr(owner, name), field_docs(type(owner)).get(name, "")))
    return rows


# ----------------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(cfg, overrides: list[str]):
    """Returns a copy of ``cfg`` with each ``a.b.c=value`` applied; validates the result."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item}", "expected KEY=VALUE, e.g. train.steps=1000")
        leaves = _leaves(cfg)
        if key not in leaves:
            close = difflib.get_close_matches(key, leaves, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--set {key}", f"unknown key{hint}; valid keys: {', '.join(leaves)}")
        owner, name = leaves[key]
        cfg = replace(cfg, key, parse_value(key, raw.strip(), _hints(type(owner))[name]))
    validate(cfg)
    return cfg


def validate(cfg):
    """Runs every nested dataclass's ``validate()`` and checks Literal fields hold allowed values."""
    for key, (owner, name) in _leaves(cfg).items():
        hint = _hints(type(owner))[name]
        value = getattr(owner, name)
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ConfigError(key, f"{value!r} is not one of {typing.get_args(hint)}")
    for obj in _dataclasses(cfg):
        if hasattr(obj, "validate"):
            obj.validate()


def parse_value(key: str, raw: str, hint):
    """Parses ``raw`` as a value of type ``hint`` (bool, int, float, str, Literal, tuple, X | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(key, raw, inner[0] if len(inner) == 1 else str)
    if origin is Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise ConfigError(f"--set {key}", f"{raw!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple:
        parts = [p.strip() for p in raw.strip("()[]").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(key, p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"--set {key}", f"expected {len(args)} comma-separated values, got {raw!r}")
        return tuple(parse_value(key, p, a) for p, a in zip(parts, args))
    if hint is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"--set {key}", f"{raw!r} is not a boolean, expected true or false")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ConfigError(f"--set {key}", f"{raw!r} is not {'an integer' if hint is int else 'a number'}") from None
    if hint is str:
        return raw
    raise ConfigError(f"--set {key}", f"cannot set a field of type {_type_name(hint)} from the command line")


# ----------------------------------------------------------------------------------------------------
# Traced hyper-parameters (configurations that share one compiled program)


def traced_keys(cfg) -> tuple[str, ...]:
    """Dotted keys of the fields that trainers read from their training state instead of compiling in:
    each config class lists its own in a ``TRACED`` class variable (e.g. learning rates, gamma, tau)."""
    return tuple(key for key, (owner, name) in _leaves(cfg).items() if name in getattr(type(owner), "TRACED", ()))


def program_key(cfg) -> str:
    """What fixes a run's compiled training program: the config without its seed and its traced fields,
    plus every derived property of its parts (``SQNConfig.uses_q`` is False at ``q_weight=0``: a traced
    value that changes the program's structure). Configurations with equal keys train as one vmapped
    program (``experiments/ablate.py``), each reading its own traced values from its state."""
    plain = cfg
    for key in ("seed",) + traced_keys(cfg):
        plain = replace(plain, key, None)
    derived = {}
    for path, node in _paths(cfg):
        for name, attr in inspect.getmembers(type(node)):
            if isinstance(attr, property) and not name.startswith("_"):
                derived[f"{path}{name}"] = repr(getattr(node, name))
    return repr((to_dict(plain), sorted(derived.items())))


# ----------------------------------------------------------------------------------------------------
# Serialisation


def to_dict(cfg) -> dict:
    """JSON-ready nested dict (tuples become lists)."""
    return _jsonable(dataclasses.asdict(cfg))


_ABSENT = object()


def declared_defaults(cfg) -> dict:
    """``to_dict(cfg)`` with every field that declares a default set to it, whatever the experiment registered.

    A key missing from an old run's ``config.json`` is an option added after the run started; options are added
    with a default that keeps the earlier behaviour, so the run was trained with the DECLARED default, even
    where an experiment now registers another value (``SASREC_PLUS.position_origin``)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = declared_defaults(value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default_factory())
        else:
            out[f.name] = _jsonable(value)
    return out


def from_dict(default, d: dict):
    """``default`` (a config of the right experiment) with every leaf taken from the nested dict ``d``
    (a ``config.json``); lists become tuples; a key absent from ``d`` takes its declared default
    (``declared_defaults``: what a run from before the key existed was trained with)."""
    cfg, declared = default, declared_defaults(default)
    for key in _leaves(default):
        node, fallback = d, declared
        for part in key.split("."):
            fallback = fallback[part]
            node = node[part] if isinstance(node, dict) and part in node else _ABSENT
        value = fallback if node is _ABSENT else node
        cfg = replace(cfg, key, tuple(value) if isinstance(value, list) else value)
    validate(cfg)
    return cfg


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------------
# Internals


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _leaves(cfg, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Dotted key -> (owning dataclass instance, field name) for every non-dataclass field."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, key + "."))
        elif value is not None or _hints(type(cfg))[f.name] is not Any:
            out[key] = (cfg, f.name)
    return out


def _dataclasses(cfg):
    yield cfg
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _dataclasses(value)


def _paths(cfg, prefix: str = ""):
    """(dotted prefix, node) of every dataclass in the config tree."""
    yield prefix, cfg
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _paths(value, f"{prefix}{f.name}.")


def replace(cfg, key: str, value):
    """A copy of the (frozen) config ``cfg`` with the dotted field ``key`` set to ``value``; the other
    fields are shared, not copied (configs are immutable, so sharing is safe)."""
    head, _, rest = key.partition(".")
    if rest:
        value = replace(getattr(cfg, head), rest, value)
    return dataclasses.replace(cfg, **{head: value})


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
