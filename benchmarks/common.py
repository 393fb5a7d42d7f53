"""Helpers shared by the benchmark scripts (standard library only: prepare_speed's parent process must
stay small, because a child's peak RSS on Linux counts the parent's memory at spawn time)."""
from __future__ import annotations

import os


def device() -> str:
    """The ``device`` field of DESIGN.md 2.5 for a CPU run: processor model and usable cores."""
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
