"""The training/evaluation loop of a run: one seed (``run_single``) or several (``run_experiment``).

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

One trainer serves every seed of a run (``init`` once per seed): what it compiles is compiled once per
run, and dropped with it when the run ends.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from experiments.dataset import Dataset, load_dataset
from experiments.memory import release_compiled
from experiments.plots import write_plots
from experiments.progress import Bars, log_line
from experiments.rundir import Checkpoints, RunDir, checkpoint_tree, write_json_atomic
from experiments.trainer import Experiment, Trainer, check_evaluators, evaluate, evaluate_groups, selection_value
from jaxrec import config as C
from jaxrec.errors import ConfigError, DivergedError
from jaxrec.eval.stats import aggregate_seeds


def run_single(exp: Experiment, cfg: C.Config, run_dir: Path, data: Dataset, progress: Callable[[str], None] = log_line,
               bars: Bars | None = None, make_trainer: Callable[[], Trainer] | None = None,
               stage_dir: Path | None = None) -> dict:
    """Trains and evaluates one seed in ``run_dir``; resumes from its last checkpoint if any.

    ``bars`` draws progress bars on stderr (pretraining, training chunks, evaluation; default: none).
    ``make_trainer`` returns the run's trainer (default: a new one from ``exp``); it is called only when
    the seed has something left to do. ``stage_dir``: where a trainer saves stages that seeds can share
    (pretrained embeddings, experiments/embed_stage.py); default ``run_dir``."""
    bars = bars or Bars(quiet=True)
    rd = RunDir(run_dir)
    rd.check(C.to_dict(cfg), defaults=C.to_dict(exp.make_config()))
    if rd.final.exists():
        progress(f"{run_dir}: already complete")
        return json.loads(rd.final.read_text())
    # The trainer is built before anything is written: a setup error (missing features, a bad
    # combination of settings) leaves no run directory behind to block the corrected command.
    trainer = make_trainer() if make_trainer is not None else exp.make_trainer(cfg, data)
    check_evaluators(trainer, data, cfg)
    if hasattr(trainer, "bars"):  # trainers with long steps of their own (e.g. embedding pretraining)
        trainer.bars = bars
    if hasattr(trainer, "stage_dir"):  # trainers with a stage fitted once per run (pretrained embeddings)
        trainer.stage_dir = Path(stage_dir or run_dir)
    rd.start(C.to_dict(cfg))
    state = trainer.init(jax.random.key(cfg.seed))
    tc = cfg.train
    ckpt = checkpoint_tree(state, copy_tree(state), 0, 0.0, 0, -np.inf)
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
            progress(f"step {step}: val {short(val)}")
            v = selection_value(val, cfg)
            if v > best_val or not math.isfinite(best_val):
                # A copy: trainers may donate `state` to the next jitted chunk, invalidating its buffers.
                return copy_tree(state), v
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
                    manager.save(step, checkpoint_tree(state, best, step, wall(), rd.n_lines(), best_val))
        finally:
            train_bar.close()
        if tc.steps == 0:
            manager.save(0, checkpoint_tree(state, best, 0, wall(), rd.n_lines(), best_val))
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
    write_json_atomic(rd.final, final)
    write_plots(rd)
    progress(f"test {short(test)}")
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


def copy_tree(tree):
    """A copy of every array leaf (a state that survives the next chunk donating the original's buffers)."""
    return jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)


def short(results: dict) -> str:
    """One progress line of HR/NDCG per protocol."""
    return "; ".join(f"{p} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith(("hr@", "ndcg@")))
                     for p, m in results.items())


def run_experiment(exp: Experiment, cfg: C.Config, run_dir: Path, n_seeds: int = 1, progress=log_line,
                   quiet: bool = True) -> dict:
    """Runs ``n_seeds`` seeds into ``run_dir`` (one seed: the directory itself; more: ``seedS/`` each plus
    the aggregate); progress bars on stderr unless ``quiet`` (or ``$CI``)."""
    bars = Bars(quiet)
    if cfg.devices > jax.local_device_count():
        raise ConfigError("--devices", f"{cfg.devices} requested but only {jax.local_device_count()} local devices exist")
    if cfg.devices > exp.max_devices:
        raise ConfigError("--devices", f"experiment {exp.name} runs on at most {exp.max_devices} device(s)")
    exp.check_protocols(cfg.eval.protocols)
    if "cold_start" in cfg.eval.protocols and cfg.data.split.cold_items <= 0:
        raise ConfigError("eval.protocols", "the cold_start protocol needs items held out of training: "
                                            "set data.split.cold_items (e.g. 0.2)")
    data = load_dataset(cfg)
    # The run owns its trainer (built on first need, shared by its seeds) and with it whatever the trainer
    # compiled; clearing the cache drops both once the run is over.
    trainer = functools.cache(lambda: exp.make_trainer(cfg, data))
    try:
        if n_seeds == 1:
            return run_single(exp, cfg, run_dir, data, progress, bars, trainer)
        rd = RunDir(run_dir)
        # Checked now, written once the seeds ran: a setup error leaves nothing that blocks the fixed command
        # (each seed's own directory is checked and written the same way by run_single).
        rd.check({**C.to_dict(cfg), "seeds": n_seeds}, defaults=C.to_dict(exp.make_config()))
        finals = []
        for s in range(cfg.seed, cfg.seed + n_seeds):
            progress(f"seed {s}")
            finals.append(run_single(exp, dataclasses.replace(cfg, seed=s), run_dir / f"seed{s}", data, progress,
                                     bars, trainer, stage_dir=run_dir))
            release_compiled()
    finally:
        trainer.cache_clear()
        release_compiled()
    rd.start({**C.to_dict(cfg), "seeds": n_seeds})
    rd.truncate(0)
    for s in range(cfg.seed, cfg.seed + n_seeds):
        for line in (run_dir / f"seed{s}" / "metrics.jsonl").read_text().splitlines():
            rd.log({"seed": s, **json.loads(line)})
    final = aggregate_seeds(finals)
    write_json_atomic(rd.final, final)
    write_plots(rd)
    return final
