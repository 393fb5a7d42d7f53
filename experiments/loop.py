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
  5. Early stopping (``train.patience`` > 0): after that many validations in a row without a better
     selection value the run stops there (a checkpoint is saved at that step) and is tested as at the end.
     The count is not checkpointed: on restart it is recounted from the validation lines of the truncated
     ``metrics.jsonl``, which are exactly those of the validations up to the checkpoint.
  6. After every chunk, before anything of it is logged or saved, a NaN/inf loss or a NaN in the state
     stops the run (``DivergedError``: one line naming the step and the quantity, exit status 3); the
     checkpoints already saved stay as they were.

One trainer serves every seed of a run (``init`` once per seed): what it compiles is compiled once per
run, and dropped with it when the run ends. Seeds (and ``ablate.py`` grid points that share a compiled
program, ``run_points``) train as one vmapped program when the trainer has ``train_seeds``: each still has
its own ``SeedRun``, files and resume, so a run's numbers do not depend on how its seeds were batched.

Several processes (hosts; ``jaxrec.parallel.initialize``) run this loop in lockstep on one shared run
directory: every process trains, evaluates (on its own replica of the state, ``parallel.local``), decides
the same best state and takes part in every checkpoint save and restore; only process 0 writes the metric
lines, ``config.json``, ``final.json``, plots and stages and prints progress. Barriers (``parallel.sync``)
keep the others from opening the checkpoints before process 0 created the directory, and from leaving a
run before its ``final.json`` is written.
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
from jaxrec import parallel
from jaxrec.errors import ConfigError, DivergedError
from jaxrec.eval.stats import aggregate_seeds


class SeedRun:
    """One seed's run directory through a run: resume, the bookkeeping after each training chunk (log,
    NaN guard, validate and select, checkpoint) and the final evaluation. ``run_single`` drives one;
    ``run_seeds_together`` drives several whose states train as one vmapped program. Both write the same
    files, so a run's numbers and its resume do not depend on which driver ran it."""

    def __init__(self, exp: Experiment, cfg: C.Config, run_dir: Path, data: Dataset, progress: Callable[[str], None],
                 bars: Bars, stage_dir: Path | None = None):
        """``stage_dir``: where the trainer keeps stages shared by seeds (pretrained embeddings,
        experiments/embed_stage.py): the run root of several seeds; default ``run_dir``."""
        self.exp, self.cfg, self.run_dir, self.data, self.progress, self.bars = exp, cfg, Path(run_dir), data, progress, bars
        self.stage_dir = Path(stage_dir or run_dir)
        self.rd = RunDir(run_dir, writer=parallel.is_primary())
        self.rd.check(C.to_dict(cfg), defaults=C.declared_defaults(exp.make_config()))
        self.final = json.loads(self.rd.final.read_text()) if self.rd.final.exists() else None
        self.manager = None

    def start(self, trainer: Trainer):
        """Initialises the state and restores the latest readable checkpoint (resume order 1-3)."""
        self.trainer = trainer
        check_evaluators(trainer, self.data, self.cfg)
        if hasattr(trainer, "bars"):  # trainers with long steps of their own (e.g. embedding pretraining)
            trainer.bars = self.bars
        if hasattr(trainer, "stage_dir"):  # trainers with a stage fitted once per run (pretrained embeddings)
            trainer.stage_dir = self.stage_dir
        self.rd.start(C.to_dict(self.cfg), defaults=C.declared_defaults(self.exp.make_config()))
        parallel.sync(f"started {self.run_dir}")  # the directory exists before any process opens its checkpoints
        state = trainer.init(jax.random.key(self.cfg.seed))
        if hasattr(trainer, "with_hyper"):
            # The trainer may be shared with runs of other traced values (an ablate.py grid): this run's own.
            state = trainer.with_hyper(state, self.cfg)
        ckpt = checkpoint_tree(state, copy_tree(state), 0, 0.0, 0, -np.inf)
        self.manager = Checkpoints(self.rd.ckpt_dir)
        restored, latest = self.manager.restore_latest(ckpt, warn)
        if latest is not None:
            ckpt = restored
            self.rd.truncate(int(ckpt["n_lines"]))
            self.progress(f"{self.run_dir}: resuming from step {int(ckpt['step'])}")
        else:
            self.rd.truncate(0)
        self.state, self.best = ckpt["state"], ckpt["best"]
        self.step, self.best_val = int(ckpt["step"]), float(ckpt["best_val"])
        # The lines up to the checkpoint: a process other than the writer may read before the writer truncated.
        self.stale = validations_since_best(self.rd.records()[:int(ckpt["n_lines"])], self.cfg)
        self.wall_s, self.mark, self.share = float(ckpt["wall_s"]), time.perf_counter(), 1
        if self.cfg.train.steps == 0 and latest is None:
            self.validate_and_select(self.state)

    def wall(self) -> float:
        """Wall seconds this run has taken so far: its share (1 / ``share``) of the time since the last
        reading, when ``share`` runs train as one program, so a batch's runs add up to its wall time."""
        now = time.perf_counter()
        self.wall_s += (now - self.mark) / self.share
        self.mark = now
        return round(self.wall_s, 3)

    @property
    def stopped(self) -> bool:
        """Early stopping (order 5): ``train.patience`` validations in a row without a better selection value."""
        return 0 < self.cfg.train.patience <= self.stale

    def next_chunk(self) -> int:
        """Steps to the next multiple of ``log_every``, ``eval_every``, ``ckpt_every`` or the end (order 4)."""
        tc, step = self.cfg.train, self.step
        return min(tc.log_every - step % tc.log_every, tc.eval_every - step % tc.eval_every,
                   tc.ckpt_every - step % tc.ckpt_every, tc.steps - step)

    def validate_and_select(self, state):
        # Every process evaluates its own replica (the same numbers on each, so all select the same best).
        val, _ = evaluate(self.trainer, parallel.local(state), self.data, self.cfg, "val", self.bars)
        self.rd.log({"step": self.step, "wall_s": self.wall(), "val": val})
        self.progress(f"step {self.step}: val {short(val)}")
        v = selection_value(val, self.cfg)
        if improves(v, self.best_val):
            # A copy: trainers may donate `state` to the next jitted chunk, invalidating its buffers.
            self.best, self.best_val, self.stale = copy_tree(state), v, 0
        else:
            self.stale += 1

    def after_chunk(self, state, logs: dict, n: int):
        """The bookkeeping of a chunk of ``n`` steps that produced ``state`` and ``logs`` (order 4-5)."""
        tc = self.cfg.train
        self.step += n
        self.state = state
        bad = nonfinite(logs, state)
        if bad:
            # Nothing of the diverged chunk is logged or saved: the run directory ends at the last good
            # checkpoint (the metrics past it are trimmed on resume, as after any interruption).
            raise DivergedError(self.run_dir, self.step, bad, self.manager.latest())
        last = self.step == tc.steps
        if self.step % tc.log_every == 0 or last:
            self.rd.log({"step": self.step, "wall_s": self.wall(), **{k: float(v) for k, v in logs.items()},
                         **self.trainer.counters(state)})
        if self.step % tc.eval_every == 0 or last:
            self.validate_and_select(state)
            if self.stopped and not last:
                self.progress(f"step {self.step}: stopping early, no better validation {self.cfg.eval.select} "
                              f"in {self.stale} evaluations (train.patience)")
        if self.step % tc.ckpt_every == 0 or last or self.stopped:
            self.manager.save(self.step, checkpoint_tree(state, self.best, self.step, self.wall(), self.rd.n_lines(),
                                                         self.best_val))

    def finish(self) -> dict:
        """Tests the best state once and writes ``final.json`` and the plots."""
        cfg, data, trainer, best = self.cfg, self.data, self.trainer, self.best
        if cfg.train.steps == 0 and self.manager.latest() is None:  # (a resumed fit-once run has it already)
            self.manager.save(0, checkpoint_tree(self.state, best, 0, self.wall(), self.rd.n_lines(), self.best_val))
        best = parallel.local(best)
        val, val_users = evaluate(trainer, best, data, cfg, "val", self.bars)
        test, test_users = evaluate(trainer, best, data, cfg, "test", self.bars)
        groups = {part: evaluate_groups(trainer, best, data, cfg, part) for part in ("val", "test")}
        final = {
            "exp": cfg.exp, "seed": cfg.seed, "wall_s": self.wall(), **trainer.counters(self.state),
            "val": val, "test": test, "eval_users": {"val": val_users, "test": test_users},
            "best_val": {cfg.eval.select: self.best_val}, "data": data.meta.get("name"), "split": data.split.scheme,
        }
        if self.stopped and self.step < cfg.train.steps:
            final["stopped_at"] = self.step
        if groups["val"] or groups["test"]:
            final["by_event"] = {part: {g: m for g, (m, _) in groups[part].items()} for part in ("val", "test")}
            final["by_event"]["users"] = {part: {g: n for g, (_, n) in groups[part].items()} for part in ("val", "test")}
        final.setdefault("env_steps", 0)
        final.setdefault("updates", 0)
        if self.rd.writer:
            write_json_atomic(self.rd.final, final)
            write_plots(self.rd)
        parallel.sync(f"finished {self.run_dir}")  # no process leaves the run before its final.json exists
        self.progress(f"test {short(test)}")
        self.final = final
        return final

    def close(self):
        if self.manager is not None:
            self.manager.close()
            self.manager = None


def run_single(exp: Experiment, cfg: C.Config, run_dir: Path, data: Dataset, progress: Callable[[str], None] = log_line,
               bars: Bars | None = None, make_trainer: Callable[[], Trainer] | None = None,
               stage_dir: Path | None = None) -> dict:
    """Trains and evaluates one seed in ``run_dir``; resumes from its last checkpoint if any.

    ``bars`` draws progress bars on stderr (pretraining, training chunks, evaluation; default: none).
    ``make_trainer`` returns the run's trainer (default: a new one from ``exp``); it is called only when
    the seed has something left to do. ``stage_dir``: where a trainer saves stages that seeds can share
    (pretrained embeddings, experiments/embed_stage.py); default ``run_dir``."""
    bars = bars or Bars(quiet=True)
    run = SeedRun(exp, cfg, run_dir, data, progress, bars, stage_dir)
    if run.final is not None:
        progress(f"{run_dir}: already complete")
        return run.final
    # The trainer is built before anything is written: a setup error (missing features, a bad
    # combination of settings) leaves no run directory behind to block the corrected command.
    trainer = make_trainer() if make_trainer is not None else exp.make_trainer(cfg, data)
    try:
        run.start(trainer)
        train_bar = bars.bar(cfg.train.steps, f"train (seed {cfg.seed})", initial=run.step)
        try:
            while run.step < cfg.train.steps and not run.stopped:
                n = run.next_chunk()
                state, logs = trainer.train(run.state, n)
                run.after_chunk(state, logs, n)
                train_bar.update(n)
                train_bar.set_postfix({f"best val {cfg.eval.select}": f"{run.best_val:.4f}"})
        finally:
            train_bar.close()
        return run.finish()
    finally:
        run.close()


def run_seeds_together(runs: list[SeedRun], trainer: Trainer, bars: Bars) -> list[dict]:
    """Trains the seeds of ``runs`` (all started, all at the same step) as ONE vmapped program
    (``trainer.train_seeds``), then tests each; per-seed files are those ``run_single`` writes."""
    from jaxrec import seeds as seeds_lib

    cfg = runs[0].cfg
    names = ", ".join(str(r.cfg.seed) for r in runs)
    states = seeds_lib.stack([r.state for r in runs])
    # Runs that stopped early (train.patience) keep their state of that step; the program trains them on, unread,
    # until the last live one stops, and from then on the live ones share the wall time.
    live = [r for r in runs if not r.stopped]
    for r in live:
        r.wall()
        r.state, r.share = None, len(live)  # the stack holds the states now; per-seed copies after each chunk
    train_bar = bars.bar(cfg.train.steps, f"train (seeds {names}, vmapped)", initial=max(r.step for r in runs))
    try:
        while live and live[0].step < cfg.train.steps:
            n = live[0].next_chunk()
            states, logs = trainer.train_seeds(states, n)
            logs = jax.device_get(logs)
            for i, (r, state) in enumerate(zip(runs, seeds_lib.unstack(states, len(runs)))):
                if r in live:
                    r.after_chunk(state, {k: v[i] for k, v in logs.items()}, n)
            train_bar.update(n)
            if any(r.stopped for r in live):
                for r in live:
                    r.wall()
                live = [r for r in live if not r.stopped]
                for r in live:
                    r.share = len(live)
    finally:
        train_bar.close()
    last = seeds_lib.unstack(states, len(runs))
    del states
    for r, state in zip(runs, last):
        if r in live:
            r.wall()
            r.state = state
        r.mark, r.share = time.perf_counter(), 1  # a stopped run's wait for the others is not its time
    return [r.finish() for r in runs]


def batchable(trainer: Trainer) -> bool:
    """Whether ``trainer`` trains several states as one vmapped program (``train_seeds``)."""
    return getattr(trainer, "train_seeds", None) is not None and trainer.can_train_seeds()


def train_together(runs: list[SeedRun], trainer: Callable[[], Trainer], batch: int, progress,
                   bars: Bars) -> dict[Path, dict]:
    """``final.json`` of each run, by run directory: runs already complete are read; the others are started,
    brought to one step, and trained ``batch`` at a time as one vmapped program (their configs must share
    ``C.program_key``: seeds of one config, or grid points differing only in traced values)."""
    finals = {r.run_dir: r.final for r in runs if r.final is not None}
    for r in runs:
        if r.final is not None:
            progress(f"{r.run_dir}: already complete")
    todo = [r for r in runs if r.final is None]
    try:
        for r in todo:
            r.start(trainer())
        # Runs resumed from different steps (a process killed between two runs' saves) cannot share a
        # program: the ones behind run alone up to the others first.
        front = max((r.step for r in todo if not r.stopped), default=0)
        for r in todo:
            if r.step < front and not r.stopped:
                _advance(r, trainer(), front, bars)
        for start in range(0, len(todo), batch):
            group = todo[start:start + batch]
            progress(f"{', '.join(str(r.run_dir) for r in group)} (vmapped)")
            for r, final in zip(group, run_seeds_together(group, trainer(), bars)):
                finals[r.run_dir] = final
            release_compiled()
    finally:
        for r in runs:
            r.close()
    return finals


def run_seeds(exp: Experiment, cfg: C.Config, run_dir: Path, n_seeds: int, data: Dataset, progress, bars: Bars,
              trainer: Callable[[], Trainer]) -> list[dict]:
    """``final.json`` of each seed ``cfg.seed .. cfg.seed + n_seeds - 1`` (in ``run_dir/seedS``).

    Seeds train together, ``train.seed_batch`` at a time, as one vmapped program when the trainer can
    (``train_seeds``); otherwise, or with ``train.seed_batch=1``, one after another. Either way each
    seed's files are the same."""
    seed_cfgs = [dataclasses.replace(cfg, seed=s) for s in range(cfg.seed, cfg.seed + n_seeds)]
    batch = cfg.train.seed_batch or n_seeds
    check_seed_batches(cfg, n_seeds, batchable(trainer()))
    if batch > 1 and n_seeds > 1 and batchable(trainer()):
        runs = [SeedRun(exp, c, run_dir / f"seed{c.seed}", data, progress, bars, run_dir) for c in seed_cfgs]
        finals = train_together(runs, trainer, batch, progress, bars)
        return [finals[r.run_dir] for r in runs]
    finals = []
    for c in seed_cfgs:
        progress(f"seed {c.seed}")
        finals.append(run_single(exp, c, run_dir / f"seed{c.seed}", data, progress, bars, trainer, stage_dir=run_dir))
        release_compiled()
    return finals


def run_points(exp: Experiment, cfgs: list[C.Config], run_dirs: list[Path], n_seeds: int = 1, progress=log_line,
               quiet: bool = True) -> list[dict]:
    """The ``final.json`` of each configuration, as ``run_experiment`` writes it in its run directory (with
    ``n_seeds`` > 1 the aggregate), all trained as one vmapped program of ``len(cfgs) x n_seeds`` states,
    ``train.seed_batch`` of them at a time (0 = all). The configurations must share ``C.program_key`` (grid
    points that differ only in traced hyper-parameters): the first one's trainer serves all, each state
    holding its own traced values. A trainer that cannot batch states (or ``train.seed_batch=1``) runs them
    one after another, still compiled once."""
    progress, quiet = primary_only(progress, quiet)
    keys = {C.program_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ConfigError("grid", "points that differ in more than traced hyper-parameters cannot share a program")
    bars = Bars(quiet)
    first = cfgs[0]
    for cfg in cfgs:
        check_run(exp, cfg)
    data = load_dataset(first)
    trainer = functools.cache(lambda: exp.make_trainer(first, data))
    try:
        check_seed_batches(first, len(cfgs) * n_seeds, batchable(trainer()))
        runs, owners = [], []
        for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
            if n_seeds > 1:
                RunDir(run_dir).check({**C.to_dict(cfg), "seeds": n_seeds},
                                      defaults=C.declared_defaults(exp.make_config()))
            for s in range(cfg.seed, cfg.seed + n_seeds):
                seed_dir = run_dir / f"seed{s}" if n_seeds > 1 else run_dir
                runs.append(SeedRun(exp, dataclasses.replace(cfg, seed=s), seed_dir, data, progress, bars, run_dir))
                owners.append(i)
        batch = first.train.seed_batch or len(runs)
        if batch > 1 and batchable(trainer()):
            finals = train_together(runs, trainer, batch, progress, bars)
        else:
            finals = {r.run_dir: run_single(exp, r.cfg, r.run_dir, data, progress, bars, trainer, r.stage_dir)
                      for r in runs}
    finally:
        trainer.cache_clear()
        release_compiled()
    out = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
        mine = [finals[r.run_dir] for r, o in zip(runs, owners) if o == i]
        out.append(mine[0] if n_seeds == 1 else write_aggregate(exp, cfg, run_dir, n_seeds, mine))
    return out


def write_aggregate(exp: Experiment, cfg: C.Config, run_dir: Path, n_seeds: int, finals: list[dict]) -> dict:
    """The run directory of several seeds: its config, every seed's metric lines, the aggregate ``final.json``
    (mean and 95% interval over seeds) and plots."""
    final = aggregate_seeds(finals)
    if parallel.is_primary():
        rd = RunDir(run_dir)
        rd.start({**C.to_dict(cfg), "seeds": n_seeds}, defaults=C.declared_defaults(exp.make_config()))
        rd.truncate(0)
        for s in range(cfg.seed, cfg.seed + n_seeds):
            for line in (run_dir / f"seed{s}" / "metrics.jsonl").read_text().splitlines():
                rd.log({"seed": s, **json.loads(line)})
        write_json_atomic(rd.final, final)
        write_plots(rd)
    parallel.sync(f"aggregated {run_dir}")
    return final


def _advance(run: SeedRun, trainer: Trainer, to_step: int, bars: Bars):
    """Trains one started seed alone up to ``to_step`` (a chunk boundary of the others)."""
    while run.step < to_step and not run.stopped:
        n = min(run.next_chunk(), to_step - run.step)
        state, logs = trainer.train(run.state, n)
        run.after_chunk(state, logs, n)


def improves(value: float, best: float) -> bool:
    """Whether a validation ``value`` replaces the ``best`` so far (the first one always does)."""
    return value > best or not math.isfinite(best)


def validations_since_best(records: list[dict], cfg: C.Config) -> int:
    """Validations after the best one in the metric lines ``records`` (early stopping's count, order 5)."""
    best, stale = -math.inf, 0
    for rec in records:
        if "val" in rec:
            v = selection_value(rec["val"], cfg)
            best, stale = (v, 0) if improves(v, best) else (best, stale + 1)
    return stale


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


def warn(msg: str):
    """A warning on stderr (process 0's only, in a run of several processes)."""
    if parallel.is_primary():
        print(msg, file=sys.stderr)


def primary_only(progress: Callable[[str], None], quiet: bool) -> tuple[Callable[[str], None], bool]:
    """(``progress``, ``quiet``) on process 0; no progress lines and no bars on the others."""
    if parallel.is_primary():
        return progress, quiet
    return (lambda line: None), True


def copy_tree(tree):
    """A copy of every array leaf (a state that survives the next chunk donating the original's buffers)."""
    return jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)


def short(results: dict) -> str:
    """One progress line of HR/NDCG per protocol."""
    return "; ".join(f"{p} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k.startswith(("hr@", "ndcg@")))
                     for p, m in results.items())


def check_run(exp: Experiment, cfg: C.Config):
    """Settings a run refuses before it reads any data (ConfigError naming the key)."""
    if cfg.devices < 1:
        raise ConfigError("--devices", f"must be >= 1, got {cfg.devices}")
    if cfg.train.seed_devices > 1 and cfg.devices > 1:  # the conflict first: it holds on any machine
        raise ConfigError("train.seed_devices", "splits the seeds over devices and --devices splits one seed's "
                                                "batch: use one of them")
    if cfg.devices > 1 and not exp.data_parallel:
        raise ConfigError("--devices", f"experiment {exp.name} runs on one device (its training is not batched)")
    if cfg.devices > jax.device_count():
        raise ConfigError("--devices", f"{cfg.devices} requested but only {jax.device_count()} devices exist")
    if cfg.devices % jax.process_count():
        raise ConfigError("--devices", f"{cfg.devices} does not split over {jax.process_count()} processes: "
                                       f"use a multiple of {jax.process_count()} (the devices of all processes)")
    if cfg.train.seed_devices > 1:
        if jax.process_count() > 1:
            raise ConfigError("train.seed_devices", "runs in one process (several hosts: --devices)")
        parallel.make_mesh(cfg.train.seed_devices, "train.seed_devices")  # enough devices
    exp.check_protocols(cfg.eval.protocols)
    if "cold_start" in cfg.eval.protocols and cfg.data.split.cold_items <= 0:
        raise ConfigError("eval.protocols", "the cold_start protocol needs items held out of training: "
                                            "set data.split.cold_items (e.g. 0.2)")


def check_seed_batches(cfg: C.Config, n_states: int, batchable: bool):
    """``train.seed_devices`` must divide every vmapped batch of the run's ``n_states`` seed states (ConfigError
    naming the key, before anything is written)."""
    d = cfg.train.seed_devices
    if d == 1:
        return
    batch = cfg.train.seed_batch or n_states
    if n_states == 1 or batch == 1 or not batchable:
        why = ("this run trains one seed (--seeds N)" if n_states == 1 else
               "train.seed_batch=1 trains the seeds one after another" if batch == 1 else
               f"{cfg.exp} trains its seeds one after another")
        raise ConfigError("train.seed_devices", f"{d} splits a vmapped batch of seeds, but {why}")
    sizes = sorted({min(batch, n_states - start) for start in range(0, n_states, batch)})
    if any(size % d for size in sizes):
        raise ConfigError("train.seed_devices", f"{d} does not divide the seed batches ({', '.join(map(str, sizes))} "
                                                f"states): use --seeds (or train.seed_batch) a multiple of {d}")


def run_experiment(exp: Experiment, cfg: C.Config, run_dir: Path, n_seeds: int = 1, progress=log_line,
                   quiet: bool = True) -> dict:
    """Runs ``n_seeds`` seeds into ``run_dir`` (one seed: the directory itself; more: ``seedS/`` each plus
    the aggregate); progress bars on stderr unless ``quiet`` (or ``$CI``). With several processes only
    process 0 prints progress."""
    progress, quiet = primary_only(progress, quiet)
    bars = Bars(quiet)
    check_run(exp, cfg)
    data = load_dataset(cfg)
    # The run owns its trainer (built on first need, shared by its seeds) and with it whatever the trainer
    # compiled; clearing the cache drops both once the run is over.
    trainer = functools.cache(lambda: exp.make_trainer(cfg, data))
    try:
        if n_seeds == 1:
            check_seed_batches(cfg, 1, True)
            return run_single(exp, cfg, run_dir, data, progress, bars, trainer)
        rd = RunDir(run_dir)
        # Checked now, written once the seeds ran: a setup error leaves nothing that blocks the fixed command
        # (each seed's own directory is checked and written the same way by run_single).
        rd.check({**C.to_dict(cfg), "seeds": n_seeds}, defaults=C.declared_defaults(exp.make_config()))
        finals = run_seeds(exp, cfg, run_dir, n_seeds, data, progress, bars, trainer)
    finally:
        trainer.cache_clear()
        release_compiled()
    return write_aggregate(exp, cfg, run_dir, n_seeds, finals)
