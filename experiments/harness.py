"""The experiment harness: data loading, the training/evaluation loop, run directories, checkpoints.

This is shell code (files, logs, checkpoints); everything it calls on the device is a pure function of
the experiment's trainer. The contract it implements is docs/design.md, section 4 (run directory, resume order).

Loop and resume order (written down because resuming must give the same ``final.json``):
  1. ``config.json`` is written on first start; a later start must resolve to the identical config.
  2. A checkpoint holds ``{state, best, step, wall_s, n_lines, best_val}``: the training state, the
     best-validated state so far, the step, the wall time spent, and how many ``metrics.jsonl`` lines
     existed when it was taken.
  3. On restart the latest checkpoint is restored into a freshly initialised target pytree (orbax
     restores into a target), ``metrics.jsonl`` is truncated to ``n_lines`` so the lines re-logged
     after it are not duplicated, and the loop continues from ``step``. A latest checkpoint that cannot
     be read is moved aside with a warning and the one before it is used. Trainers derive every random
     draw from keys in the state (``fold_in(key, step)``), so chunks after a restart replay exactly.
  4. Chunks end at every multiple of ``log_every``, ``eval_every`` and ``ckpt_every``; at an eval point
     validation picks the best state; at a checkpoint point the checkpoint is saved; the last step is
     all three. The test part is evaluated once, on the best state, after training.
  5. After every chunk, before anything of it is logged or saved, a NaN/inf loss or a NaN in the state
     stops the run (``DivergedError``: one line naming the step and the quantity, exit status 3); the
     checkpoints already saved stay as they were.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import numpy as np

from jaxrec.data.prepared import load_prepared
from experiments.progress import Bars, log_line
from jaxrec import config as C
from jaxrec.data.interactions import Interactions
from jaxrec.data.splits import EvalView, Split, eval_view, make_split
from jaxrec.errors import ConfigError, DivergedError, InputError
from jaxrec.eval.protocols import ScoreFn, cold_start, drr_protocol, full_ranking, state_rows


@dataclasses.dataclass
class Dataset:
    """A prepared data directory plus its split, as every experiment receives it."""

    path: str
    inter: Interactions
    meta: dict
    items: Any
    split: Split
    relevant_threshold: float

    def item_pool(self) -> np.ndarray | None:
        """Items that exist at training time (all but held-out cold-start items); None when all do."""
        if not self.split.cold_items.size:
            return None
        return np.setdiff1d(np.arange(self.inter.n_items), self.split.cold_items).astype(np.int32)


def load_dataset(cfg: C.Config) -> Dataset:
    inter, meta, items = load_prepared(cfg.data.path)
    split = make_split(inter, cfg.data.split)
    threshold = cfg.data.relevant_threshold
    if threshold is None:
        threshold = float(meta.get("positive_threshold", meta.get("rating_min", 0.0)))
    return Dataset(cfg.data.path, inter, meta, items, split, threshold)


class Trainer(Protocol):
    """What an experiment provides; every method but ``counters`` may be jitted device code."""

    def init(self, key: jax.Array) -> Any:
        """The whole training state as one pytree (params, optimiser, replay, keys, counters)."""

    def train(self, state: Any, n_steps: int) -> tuple[Any, dict[str, float]]:
        """Runs ``n_steps`` steps (one jitted chunk) and returns mean losses over them."""

    def score_fn(self, state: Any, view: EvalView) -> ScoreFn:
        """``(users [B], context_mask [B, I]) -> scores [B, I]`` for the ``full`` protocol.

        ``view`` holds the part's visible history rows (``view.context``), so a sequence model can
        build each user's input; the mask already marks the same items. A trainer may instead define
        ``evaluate_<protocol>(state, view, part) -> (metrics, n_users)`` to replace a protocol, and
        ``evaluate_groups(state, view, part) -> {group: (metrics, n_users)}`` to report the final
        validation and test metrics per target group too (click vs purchase targets of event data), which
        ``final.json`` holds under ``by_event`` (``val`` and ``test`` keep the protocols only).
        """

    def counters(self, state: Any) -> dict[str, int]:
        """``env_steps`` and ``updates`` done so far."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    make_config: Callable[[], C.Config]
    make_trainer: Callable[[C.Config, Dataset], Trainer]
    quick: tuple[str, ...] = ()
    """``--set`` overrides applied by ``--quick`` (a tiny but real configuration)."""
    protocols: tuple[str, ...] = ("full",)
    """Protocols this experiment can be evaluated with."""
    max_devices: int = 1


# ----------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(trainer: Trainer, state, data: Dataset, cfg: C.Config, part: str,
             bars: Bars | None = None) -> tuple[dict, dict]:
    """({protocol: {metric: mean}}, {protocol: n_users}) on ``part``."""
    view = eval_view(data.inter, data.split, part, cfg.data.split.heldout_visible)
    bars = bars or Bars(quiet=True)
    results, users = {}, {}
    for protocol in cfg.eval.protocols:
        custom = getattr(trainer, f"evaluate_{protocol}", None)
        on_batch, close = bars.counter(f"{part} {protocol}", "user")
        try:
            if custom is not None:
                results[protocol], users[protocol] = custom(state, view, part)
            elif protocol == "full":
                results[protocol], users[protocol] = full_ranking(
                    trainer.score_fn(state, view), data.inter, view, data.relevant_threshold, cfg.eval.ks,
                    cfg.eval.batch_users, on_batch=on_batch)
            elif protocol == "drr":
                # The model sees only the state items (as in the seed's protocol), so it is scored from them.
                sv = state_rows(data.inter, view, cfg.eval.drr_n_state, data.split.heldout_users)
                results[protocol], users[protocol] = drr_protocol(
                    trainer.score_fn(state, sv), data.inter, view, data.relevant_threshold, cfg.eval.drr_n_state,
                    data.split.heldout_users, cfg.eval.drr_ks, cfg.eval.drr_ideal, cfg.eval.batch_users, on_batch)
            elif protocol == "cold_start":
                results[protocol], users[protocol] = cold_start(
                    trainer.score_fn(state, view), data.inter, view, data.relevant_threshold, data.split.cold_items,
                    cfg.eval.ks, cfg.eval.batch_users, on_batch)
            else:
                raise ConfigError("eval.protocols", f"{type(trainer).__name__} has no evaluate_{protocol}")
        finally:
            close()
    return results, users


def evaluate_groups(trainer: Trainer, state, data: Dataset, cfg: C.Config, part: str) -> dict:
    """{group: (metrics, n_users)} from the trainer's optional ``evaluate_groups`` ({} without one)."""
    fn = getattr(trainer, "evaluate_groups", None)
    if fn is None:
        return {}
    return fn(state, eval_view(data.inter, data.split, part, cfg.data.split.heldout_visible), part)


def selection_value(val: dict, cfg: C.Config) -> float:
    v = val[cfg.eval.protocols[0]].get(cfg.eval.select, float("nan"))
    return -math.inf if math.isnan(v) else v


# ----------------------------------------------------------------------------------------------------
# Run directory


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"
        self.final = self.path / "final.json"
        self.ckpt_dir = self.path / "checkpoints"

    def check(self, cfg_dict: dict):
        """Refuses an existing directory that holds another config (touching nothing)."""
        cfg_path = self.path / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old != cfg_dict:
                diffs = _diff(old, cfg_dict)
                raise InputError(cfg_path, f"this run directory holds a different config ({'; '.join(diffs[:5])}); "
                                           "pass another --run-dir or repeat the original command to resume")

    def start(self, cfg_dict: dict):
        """Creates the directory or checks that an existing one holds the same config."""
        self.check(cfg_dict)
        if not (self.path / "config.json").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(self.path / "config.json", cfg_dict)

    def log(self, record: dict):
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def n_lines(self) -> int:
        if not self.metrics.exists():
            return 0
        with open(self.metrics) as f:
            return sum(1 for _ in f)

    def truncate(self, n_lines: int):
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines(keepends=True)[:n_lines]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.metrics)


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def _write_json_atomic(path: Path, obj):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class Checkpoints:
    """Orbax checkpoints of the harness's ``{state, best, step, ...}`` pytree."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory)
        self.manager = ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, tree):
        self.manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, target):
        return self.manager.restore(step, args=self._ocp.args.StandardRestore(target))

    def restore_latest(self, target, warn: Callable[[str], None]):
        """(tree, step) of the newest checkpoint that restores into ``target``; (None, None) if none exist.

        A checkpoint that cannot be read (corrupted, truncated, half-written by a killed process) is moved
        aside to ``checkpoints.unreadable/STEP``, never deleted, with a warning, and the previous one is
        tried: a crash during a save costs one checkpoint period, not the run."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, target), step
            except Exception as e:  # orbax raises many types (ValueError, OSError, tensorstore errors)
                aside = self.directory.parent / f"{self.directory.name}.unreadable" / str(step)
                aside.parent.mkdir(exist_ok=True)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(self.directory / str(step), aside)
                self.manager.reload()
                warn(f"warning: checkpoint {step} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                     f"moved to {aside}, falling back to the previous one")
        return None, None

    def close(self):
        self.manager.close()


# ----------------------------------------------------------------------------------------------------
# The loop


def run_single(exp: Experiment, cfg: C.Config, run_dir: Path, data: Dataset, progress: Callable[[str], None] = log_line,
               bars: Bars | None = None, stage_dir: Path | None = None) -> dict:
    """Trains and evaluates one seed in ``run_dir``; resumes from its last checkpoint if any.

    ``bars`` draws progress bars on stderr (pretraining, training chunks, evaluation; default: none).
    ``stage_dir``: where a trainer saves stages that seeds can share (pretrained embeddings,
    experiments/embed_stage.py); default ``run_dir``."""
    bars = bars or Bars(quiet=True)
    rd = RunDir(run_dir)
    rd.check(C.to_dict(cfg))
    if rd.final.exists():
        progress(f"{run_dir}: already complete")
        return json.loads(rd.final.read_text())
    # The trainer is built before anything is written: a setup error (missing features, a bad
    # combination of settings) leaves no run directory behind to block the corrected command.
    trainer = exp.make_trainer(cfg, data)
    if hasattr(trainer, "bars"):  # trainers with long steps of their own (e.g. embedding pretraining)
        trainer.bars = bars
    if hasattr(trainer, "stage_dir"):  # trainers with a stage fitted once per run (pretrained embeddings)
        trainer.stage_dir = Path(stage_dir or run_dir)
    rd.start(C.to_dict(cfg))
    state = trainer.init(jax.random.key(cfg.seed))
    tc = cfg.train
    ckpt = _ckpt_tree(state, _copy_tree(state), 0, 0.0, 0, -np.inf)
    manager = Checkpoints(rd.ckpt_dir)
    try:
        restored, latest = manager.restore_latest(ckpt, lambda msg: print(msg, file=sys.stderr))
        if latest is not None:
            ckpt = restored
            rd.truncate(int(ckpt["n_lines"]))
            progress(f"{run_dir}: resuming from step {int(ckpt['step'])}")
        else:
            rd.truncate(0)
        state, best = ckpt["state"], ckpt["best"]
        step, best_val = int(ckpt["step"]), float(ckpt["best_val"])
        t0 = time.perf_counter() - float(ckpt["wall_s"])

        def wall():
            return round(time.perf_counter() - t0, 3)

        def validate_and_select(state, best, best_val, step):
            val, _ = evaluate(trainer, state, data, cfg, "val", bars)
            rd.log({"step": step, "wall_s": wall(), "val": val})
            progress(f"step {step}: val {_short(val)}")
            v = selection_value(val, cfg)
            if v > best_val or not math.isfinite(best_val):
                # A copy: trainers may donate `state` to the next jitted chunk, invalidating its buffers.
                return _copy_tree(state), v
            return best, best_val

        if tc.steps == 0 and latest is None:
            best, best_val = validate_and_select(state, best, best_val, 0)
        train_bar = bars.bar(tc.steps, f"train (seed {cfg.seed})", initial=step)
        try:
            while step < tc.steps:
                n = min(tc.log_every - step % tc.log_every, tc.eval_every - step % tc.eval_every,
                        tc.ckpt_every - step % tc.ckpt_every, tc.steps - step)
                state, logs = trainer.train(state, n)
                step += n
                bad = nonfinite(logs, state)
                if bad:
                    # Nothing of the diverged chunk is logged or saved: the run directory ends at the last good
                    # checkpoint (the metrics past it are trimmed on resume, as after any interruption).
                    raise DivergedError(run_dir, step, bad, manager.latest())
                train_bar.update(n)
                last = step == tc.steps
                if step % tc.log_every == 0 or last:
                    rd.log({"step": step, "wall_s": wall(), **{k: float(v) for k, v in logs.items()}, **trainer.counters(state)})
                if step % tc.eval_every == 0 or last:
                    best, best_val = validate_and_select(state, best, best_val, step)
                    train_bar.set_postfix({f"best val {cfg.eval.select}": f"{best_val:.4f}"})
                if step % tc.ckpt_every == 0 or last:
                    manager.save(step, _ckpt_tree(state, best, step, wall(), rd.n_lines(), best_val))
        finally:
            train_bar.close()
        if tc.steps == 0:
            manager.save(0, _ckpt_tree(state, best, 0, wall(), rd.n_lines(), best_val))
        val, val_users = evaluate(trainer, best, data, cfg, "val", bars)
        test, test_users = evaluate(trainer, best, data, cfg, "test", bars)
        groups = {part: evaluate_groups(trainer, best, data, cfg, part) for part in ("val", "test")}
    finally:
        manager.close()
    final = {
        "exp": cfg.exp, "seed": cfg.seed, "wall_s": wall(), **trainer.counters(state),
        "val": val, "test": test, "eval_users": {"val": val_users, "test": test_users},
        "best_val": {cfg.eval.select: best_val}, "data": data.meta.get("name"), "split": data.split.scheme,
    }
    if groups["val"] or groups["test"]:
        final["by_event"] = {part: {g: m for g, (m, _) in groups[part].items()} for part in ("val", "test")}
        final["by_event"]["users"] = {part: {g: n for g, (_, n) in groups[part].items()} for part in ("val", "test")}
    final.setdefault("env_steps", 0)
    final.setdefault("updates", 0)
    _write_json_atomic(rd.final, final)
    write_plots(rd)
    progress(f"test {_short(test)}")
    return final


@jax.jit
def _nan_free(leaves):
    return [~jax.numpy.isnan(x).any() for x in leaves]


def nonfinite(logs: dict, state) -> str | None:
    """What diverged in a training chunk: a logged loss that is NaN/inf (``name=value``), else the path of
    the first floating-point leaf of ``state`` holding a NaN; None when neither. Parameters are checked for
    NaN, not inf, because +inf is a legitimate state value (the replay table's minimum over an empty row);
    an overflowing parameter turns the losses or itself NaN within a chunk. One jitted reduction per chunk
    (``log_every`` steps), so the guard costs nothing measurable."""
    for name, value in logs.items():
        if not math.isfinite(float(value)):
            return f"{name}={float(value)}"
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    floats = [(p, x) for p, x in flat if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    if not floats:
        return None
    ok = jax.device_get(_nan_free([x for _, x in floats]))
    for (path, _), fine in zip(floats, ok):
        if not fine:
            return f"state{jax.tree_util.keystr(path)}"
    return None


def _copy_tree(tree):
    return jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)


def _ckpt_tree(state, best, step, wall_s, n_lines, best_val) -> dict:
    """The checkpointed pytree (0-d arrays: orbax saves arrays, not Python or numpy scalars)."""
    return {"state": state, "best": best, "step": np.asarray(step, np.int64), "wall_s": np.asarray(wall_s, np.float64),
            "n_lines": np.asarray(n_lines, np.int64), "best_val": np.asarray(best_val, np.float64)}


def _short(results: dict) -> str:
    return "; ".join(f"{p} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith(("hr@", "ndcg@")))
                     for p, m in results.items())


# ----------------------------------------------------------------------------------------------------
# Seeds


def t975(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom (exact, for every dof)."""
    from scipy.stats import t

    if dof < 1:
        raise ValueError(f"t975 needs at least 1 degree of freedom, got {dof}")
    return float(t.ppf(0.975, dof))


def aggregate_seeds(finals: list[dict]) -> dict:
    """Mean and 95% interval half-width over seeds for every (part, protocol, metric)."""
    out = {"exp": finals[0]["exp"], "seed": [f["seed"] for f in finals], "seeds": finals,
           "wall_s": round(sum(f["wall_s"] for f in finals), 3),
           "env_steps": sum(f["env_steps"] for f in finals), "updates": sum(f["updates"] for f in finals)}
    for part in ("val", "test"):
        mean, ci = {}, {}
        for proto, metrics in finals[0][part].items():
            mean[proto], ci[proto] = {}, {}
            for name in metrics:
                v = np.array([f[part][proto][name] for f in finals], np.float64)
                mean[proto][name] = float(v.mean())
                ci[proto][name] = float(t975(len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        out[part], out[f"{part}_ci95"] = mean, ci
    if "by_event" in finals[0]:
        out["by_event"], out["by_event_ci95"] = {}, {}
        for part in ("val", "test"):
            out["by_event"][part], out["by_event_ci95"][part] = {}, {}
            for group, metrics in finals[0]["by_event"][part].items():
                m, c = out["by_event"][part].setdefault(group, {}), out["by_event_ci95"][part].setdefault(group, {})
                for name in metrics:
                    v = np.array([f["by_event"][part][group][name] for f in finals], np.float64)
                    m[name] = float(v.mean())
                    c[name] = float(t975(len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return out


def release_freed_memory():
    """Returns freed heap memory to the OS (glibc only; a no-op elsewhere).

    XLA's compiler frees its working memory (hundreds of MB for the training step) into glibc's arenas,
    which keep it; without this the process peak is compile + run instead of the larger of the two.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _release_compiled():
    """Drops jit caches and unreferenced buffers after a run, so that many seeds or ablation points in one
    process peak at one run's memory, not the sum (each run builds and jits its own closures)."""
    jax.clear_caches()
    gc.collect()
    release_freed_memory()


def run_experiment(exp: Experiment, cfg: C.Config, run_dir: Path, n_seeds: int = 1, progress=log_line,
                   quiet: bool = True) -> dict:
    """Runs ``n_seeds`` seeds into ``run_dir`` (one seed: the directory itself; more: ``seedS/`` each plus
    the aggregate); progress bars on stderr unless ``quiet`` (or ``$CI``)."""
    bars = Bars(quiet)
    if cfg.devices > jax.local_device_count():
        raise ConfigError("--devices", f"{cfg.devices} requested but only {jax.local_device_count()} local devices exist")
    if cfg.devices > exp.max_devices:
        raise ConfigError("--devices", f"experiment {exp.name} runs on at most {exp.max_devices} device(s)")
    bad = [p for p in cfg.eval.protocols if p not in exp.protocols]
    if bad:
        raise ConfigError("eval.protocols", f"{bad} not available for {exp.name}; expected a subset of {exp.protocols}")
    if "cold_start" in cfg.eval.protocols and cfg.data.split.cold_items <= 0:
        raise ConfigError("eval.protocols", "the cold_start protocol needs items held out of training: "
                                            "set data.split.cold_items (e.g. 0.2)")
    data = load_dataset(cfg)
    if n_seeds == 1:
        final = run_single(exp, cfg, run_dir, data, progress, bars)
        _release_compiled()
        return final
    rd = RunDir(run_dir)
    # Checked now, written once the seeds ran: a setup error leaves nothing that blocks the fixed command
    # (each seed's own directory is checked and written the same way by run_single).
    rd.check({**C.to_dict(cfg), "seeds": n_seeds})
    finals = []
    for s in range(cfg.seed, cfg.seed + n_seeds):
        progress(f"seed {s}")
        finals.append(run_single(exp, dataclasses.replace(cfg, seed=s), run_dir / f"seed{s}", data, progress, bars,
                                 stage_dir=run_dir))
        _release_compiled()
    rd.start({**C.to_dict(cfg), "seeds": n_seeds})
    rd.truncate(0)
    for s in range(cfg.seed, cfg.seed + n_seeds):
        for line in (run_dir / f"seed{s}" / "metrics.jsonl").read_text().splitlines():
            rd.log({"seed": s, **json.loads(line)})
    final = aggregate_seeds(finals)
    _write_json_atomic(rd.final, final)
    write_plots(rd)
    return final


# ----------------------------------------------------------------------------------------------------
# Plots


def write_plots(rd: RunDir):
    """``plots/metrics.png``: every logged scalar against the step (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int | None, list[tuple[int, float]]]] = {}
    for line in rd.metrics.read_text().splitlines() if rd.metrics.exists() else []:
        rec = json.loads(line)
        for key, value in _flatten(rec).items():
            if key in ("step", "wall_s", "seed") or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, {}).setdefault(rec.get("seed"), []).append((rec["step"], value))
    if not series:
        return
    names = sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for seed, points in series[name].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, label=None if seed is None else f"seed {seed}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if len(series[name]) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    (rd.path / "plots").mkdir(exist_ok=True)
    fig.savefig(rd.path / "plots" / "metrics.png", dpi=100)
    plt.close(fig)


def _flatten(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
