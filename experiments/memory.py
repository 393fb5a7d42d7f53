"""Handing memory back between runs, so that many seeds or grid points in one process peak at one run's
memory instead of the sum (docs/design.md, section 4)."""
from __future__ import annotations

import ctypes
import gc

import jax


def release_freed_memory():
    """Returns freed heap memory to the OS (glibc only; a no-op elsewhere).

    XLA's compiler frees its working memory (hundreds of MB for the training step) into glibc's arenas,
    which keep it; without this the process peak is compile + run instead of the larger of the two.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_compiled():
    """Drops jit caches and unreferenced buffers after a run, so that many seeds or ablation points in one
    process peak at one run's memory, not the sum (each run builds and jits its own closures)."""
    jax.clear_caches()
    gc.collect()
    release_freed_memory()
