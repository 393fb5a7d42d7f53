"""Helpers shared by the benchmark scripts (standard library only: the parents of prepare_speed,
sqn_memory and feature_extraction must stay small, because a child's peak RSS on Linux counts the
parent's memory at spawn time).

Bad input (a flag, a data directory) is checked before any long work and reported like every other
entry point: one line ``error: WHERE: what is wrong`` on stderr and exit status 2 (``--debug``: the
traceback): ``jaxrec.cli`` and ``jaxrec.data.prepared.check_prepared`` are standard-library only, so the
small parents use them without importing numpy or pandas (~90 MB).
"""
from __future__ import annotations

import os
from pathlib import Path

from jaxrec.errors import InputError


def positive(flag: str, value):
    """``value`` (None: the flag was not given) unless it is not a positive finite number: an InputError naming ``flag``."""
    if value is not None and not 0 < value < float("inf"):
        raise InputError(flag, f"{value}, expected a positive number")
    return value


def non_negative(flag: str, value):
    """``value`` (None: not given) unless it is not a finite number >= 0: an InputError naming ``flag``."""
    if value is not None and not 0 <= value < float("inf"):
        raise InputError(flag, f"{value}, expected a number >= 0")
    return value


def work_parent(flag: str, path) -> Path | None:
    """``--workdir``: None, or an absolute directory (created; children run elsewhere, so never relative)."""
    if path is None:
        return None
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise InputError(flag, f"{path} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(flag, f"{path}: cannot create the directory ({e.strerror})") from None
    return p


def device() -> str:
    """The ``device`` field of a result line (docs/design.md, section 7) for a CPU run: processor model and
    usable cores."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model}, {len(os.sched_getaffinity(0))} cores"


def load_note(when: str) -> float:
    """Prints the 1-minute load average (with a warning when other processes compete) and returns it."""
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    warn = " (other processes compete for the CPU: wall times inflated; ours/baseline interleaved)" if load > 0.5 * cores else ""
    print(f"[{when}] 1-min load average {load:.2f} on {cores} cores{warn}", flush=True)
    return load
