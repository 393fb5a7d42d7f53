"""Skip policy for CI: with ``JAXREC_FAIL_ON_SKIP=1`` (set by ``.ci/run``) a skipped test fails the session
unless ``.ci/allowed_skips.txt`` lists it, so a test that silently stops running (missing data, a failed
import) turns CI red instead of green. Locally, without the variable, skips stay skips.

The suite runs on several processes (pytest-xdist, ``-n auto`` in pyproject.toml): most of its time is XLA
compiling small programs, one core per compile, so a second core takes work off the first (the 2-core CI machine:
915 s against 1,169 s in one process; single tests run ~1.5x slower beside each other). The
skip policy is applied by the controlling process, which receives every worker's reports; ``-n 0`` runs the
tests in this one process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ALLOWED = Path(os.environ.get("JAXREC_ALLOWED_SKIPS", Path(__file__).resolve().parents[1] / ".ci" / "allowed_skips.txt"))
_skipped: list[tuple[str, str]] = []
MAX_WORKERS = 4

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share one accelerator when JAX has one: none may take most of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def allowed_skips() -> dict[str, str]:
    """{node id prefix: reason} from ``.ci/allowed_skips.txt`` (``PREFIX  # reason`` per line)."""
    out = {}
    if ALLOWED.is_file():
        for line in ALLOWED.read_text().splitlines():
            prefix, _, reason = line.partition("#")
            if prefix.strip():
                out[prefix.strip()] = reason.strip()
    return out


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most MAX_WORKERS (each holds its own JAX runtime and compile cache;
    the multi-device tests start 2-process and 4-device subprocesses of their own)."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_configure(config):
    """A persistent XLA compilation cache for this session only (a fresh temporary directory, removed at the
    end): the many runs of the suite compile the same programs again and again (every run drops its jit
    caches when it ends, ``experiments/memory.release_compiled``; seeds run one after another, resumed and
    repeated runs), and a cache hit skips XLA's compile but not the tracing, so every trace counter of the
    tests still counts and every result is the program's own. ``JAXREC_TEST_COMPILE_CACHE=0`` turns it off."""
    if os.environ.get("JAXREC_TEST_COMPILE_CACHE", "1") == "0":
        return
    import tempfile

    import jax

    config._jaxrec_compile_cache = tempfile.mkdtemp(prefix="jaxrec-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", config._jaxrec_compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
    cache = getattr(config, "_jaxrec_compile_cache", None)
    if cache:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("JAXREC_FAIL_ON_SKIP") != "1" or not _skipped:
        return
    allowed = allowed_skips()
    unlisted = [(n, r) for n, r in _skipped if not any(n.startswith(p) for p in allowed)]
    if unlisted:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{len(unlisted)} test(s) skipped without a reason listed in {ALLOWED.name}:"]
        lines += [f"  {n}: {r}" for n, r in unlisted]
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """Tests read stderr line by line: progress bars (experiments/progress.py) are off unless a test turns
    them on, as they are for CI."""
    monkeypatch.setenv("CI", "1")
