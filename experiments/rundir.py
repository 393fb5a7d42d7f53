"""A run directory's files (docs/design.md, section 4): ``config.json``, ``metrics.jsonl``, ``final.json``
and the orbax ``checkpoints/``, each written so that an interrupted run can be resumed and a finished one
is never half-written.

A run of several processes (hosts) shares one run directory: only the primary process (``writer``) writes
the files, the others keep the count of metric lines that the checkpoints record; every process takes part
in orbax's saves and restores (each writes its shards, process 0 the metadata and the final rename)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxrec.errors import InputError


class RunDir:
    def __init__(self, path, writer: bool = True):
        """``writer``: this process writes the files (False: the other processes of a multi-process run,
        which only read them and count the metric lines the writer writes)."""
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"
        self.final = self.path / "final.json"
        self.ckpt_dir = self.path / "checkpoints"
        self.writer = writer
        self._lines = 0

    def check(self, cfg_dict: dict, defaults: dict | None = None):
        """Refuses an existing directory that holds another config (touching nothing).

        A key the saved config lacks (an option added after the run started) is taken as ``defaults``'
        value: options are added with a default that keeps the old behaviour, so such a run resumes
        when the new key is left at its default and is refused when it is set to something else.
        """
        cfg_path = self.path / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if defaults is not None:
                old = _with_new_defaults(old, cfg_dict, defaults)
            if _results_config(old) != _results_config(cfg_dict):
                diffs = _diff(_results_config(old), _results_config(cfg_dict))
                raise InputError(cfg_path, f"this run directory holds a different config ({'; '.join(diffs[:5])}); "
                                           "pass another --run-dir or repeat the original command to resume")

    def start(self, cfg_dict: dict, defaults: dict | None = None):
        """Creates the directory or checks that an existing one holds the same config (``check``)."""
        self.check(cfg_dict, defaults)
        if self.writer and not (self.path / "config.json").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path / "config.json", cfg_dict)

    def log(self, record: dict):
        if not self.writer:
            self._lines += 1
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def n_lines(self) -> int:
        if not self.writer:
            return self._lines
        if not self.metrics.exists():
            return 0
        with open(self.metrics) as f:
            return sum(1 for _ in f)

    def records(self) -> list[dict]:
        """The metric lines written so far (read by every process of a multi-process run: the directory is shared)."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate(self, n_lines: int):
        if not self.writer:
            self._lines = n_lines
            return
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines(keepends=True)[:n_lines]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.metrics)


EXECUTION_ONLY = {"train": ("seed_batch", "seed_devices")}
"""Config keys that choose how seeds are scheduled, not what a seed computes (each seed equals its run alone up to
reduction order: tests/test_seeds.py, tests/test_parallel.py): a run directory resumes, and seeds run apart are
aggregated by ``--seeds N`` on their parent, under other values of them."""


def _results_config(cfg: dict) -> dict:
    """``cfg`` without the ``EXECUTION_ONLY`` keys."""
    out = dict(cfg)
    for section, keys in EXECUTION_ONLY.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def _with_new_defaults(old: dict, new: dict, defaults: dict) -> dict:
    """``old`` plus each key only ``new`` has, valued as in ``defaults`` (nested dicts merged)."""
    out = dict(old)
    for k, v in new.items():
        if k not in old:
            if k in defaults:
                out[k] = defaults[k]
        elif isinstance(old[k], dict) and isinstance(v, dict):
            nested = defaults.get(k)
            out[k] = _with_new_defaults(old[k], v, nested if isinstance(nested, dict) else {})
    return out


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def write_atomic(path: Path, write: Callable[[Any], None]):
    """Calls ``write(binary_file)`` on a temporary file beside ``path`` and renames it into place: readers
    never see half a file. The temporary name is unique, so two processes saving one path never write
    into one file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj):
    """Writes ``obj`` as indented JSON with ``write_atomic``."""
    text = json.dumps(obj, indent=2) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def checkpoint_tree(state, best, step, wall_s, n_lines, best_val) -> dict:
    """The checkpointed pytree (0-d arrays: orbax saves arrays, not Python or numpy scalars)."""
    return {"state": state, "best": best, "step": np.asarray(step, np.int64), "wall_s": np.asarray(wall_s, np.float64),
            "n_lines": np.asarray(n_lines, np.int64), "best_val": np.asarray(best_val, np.float64)}


class Checkpoints:
    """Orbax checkpoints of the loop's ``{state, best, step, ...}`` pytree (``checkpoint_tree``).

    With several processes every one of them creates the manager, saves and restores (orbax's multi-host
    protocol: each process writes the shards it holds, process 0 creates the directories, writes the
    metadata and the numpy leaves, and commits the step once all have written); only process 0 moves an
    unreadable checkpoint aside."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        import jax
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory)
        self.primary = jax.process_index() == 0
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
                from jaxrec.parallel import sync

                aside = self.directory.parent / f"{self.directory.name}.unreadable" / str(step)
                sync(f"unreadable checkpoint {step}")  # every process has tried it before it moves
                if self.primary:
                    aside.parent.mkdir(exist_ok=True)
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(self.directory / str(step), aside)
                sync(f"moved checkpoint {step}")
                self.manager.reload()
                warn(f"warning: checkpoint {step} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                     f"moved to {aside}, falling back to the previous one")
        return None, None

    def close(self):
        self.manager.close()
