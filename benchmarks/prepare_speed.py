"""Wall time and peak memory of ``data_prep/prepare.py table`` on a large synthetic interaction CSV.

  python benchmarks/prepare_speed.py [--quick] [--rows N] [--repeats R] [--workdir DIR] [--seed S]

Methodology
-----------
1. Data. A CSV with header ``user,item,rating,timestamp`` and ``--rows`` rows (default 20,000,000;
   ``--quick``: 1,000,000) is synthesised into a fresh temp dir (under ``--workdir`` if given) with
   ``np.random.default_rng(seed)``, vectorised and in chunks of 1M rows written with pyarrow's CSV
   writer, so generation needs a few hundred MB whatever the size. Its shape imitates MovieLens-20M
   scaled up: ~140k users with log-normal activity (a heavy tail of very active users, some users
   with fewer than 5 rows), ~50k items with Zipf-like popularity (exponent ~1), sparse shuffled
   original ids, half-star ratings 0.5..5 with MovieLens' rating histogram, and unix timestamps
   (each user active from a random start date, spread over months). Sampling with replacement also
   produces repeated (user, item) pairs (~17% of rows at 20M), which ``--dedup last`` (the default of
   ``table``) removes; the k-core then leaves ~16.6M of 20M rows.
   Generation runs in its own subprocess and its time is printed but is not part of any metric.
2. Ours: ``python data_prep/prepare.py table --src F --user-col user --item-col item --rating-col rating
   --time-col timestamp --min-user-interactions 5 --min-item-interactions 5 --out OUT``.
3. Baseline: ``python benchmarks/baselines/pandas_groupby.py F`` = ``pandas.read_csv`` + per-user and
   per-item ``groupby().size()``: a lower bound (the minimum any pipeline must do), not a competitor,
   so its ratios are expected to be < 1.
4. Each is run as a fresh subprocess, ``--repeats`` times (default 3; ``--quick``: 1), alternating
   ours / baseline so that drift (page cache, thermal) hits both alike. The file is read from the page
   cache in every run (it was just written), for both. Reported numbers are MEDIANS over repeats.
   The children's CPU seconds are printed too, and a warning when the load average shows other
   processes competing for the cores (wall times are then inflated).
   - Wall time: from spawning the child to reaping it (interpreter start and imports included: that is
     what a user waits for).
   - Peak RSS: ``ru_maxrss`` of that very child, from ``os.wait4`` (Linux: KiB; reported in GB =
     1e9 bytes). Caveat handled here: Linux counts the RSS of the process *before* ``exec`` in the
     child's ``ru_maxrss``, i.e. the parent's RSS at spawn time. That is why this parent imports only
     the standard library (~10 MB) and synthesises the data in a separate subprocess.
5. Output: one JSON line per quantity in the format of docs/design.md, section 7, ``ratio`` = baseline / ours (> 1
   would mean ours is faster / leaner): ``prepare_peak_rss`` (GB) first, ``prepare_wall_time`` (s) last,
   plus a human line saying whether the targets hold (ours < 60 s and < 3 GB for 20M rows).
6. The temp dir (CSV and prepared outputs) is removed at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.common import device, non_negative, positive, work_parent  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402

# Keep this parent process small (standard library only): see methodology point 4 on ru_maxrss.

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "data_prep" / "prepare.py"
BASELINE = REPO / "benchmarks" / "baselines" / "pandas_groupby.py"
FULL_ROWS = 20_000_000
QUICK_ROWS = 1_000_000
TARGET_WALL_S = 60.0
TARGET_RSS_GB = 3.0
N_USERS = 140_000
N_ITEMS = 50_000
CHUNK_ROWS = 1_000_000
# MovieLens-20M rating histogram over the half stars 0.5, 1.0, ..., 5.0 (percent, rounded).
RATING_PCT = (1.1, 3.3, 1.4, 7.2, 4.4, 21.3, 10.5, 27.7, 7.7, 14.4)
T_START, T_END = 946_684_800, 1_704_067_200  # 2000-01-01 .. 2024-01-01, unix seconds


# ----------------------------------------------------------------------------------------------------
# Synthetic data (runs in its own subprocess: ``--generate-to PATH``)


def synthesise(path: Path, rows: int, seed: int) -> None:
    """Writes the synthetic ``user,item,rating,timestamp`` CSV described in the module docstring."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    # Users: log-normal activity weights; original ids are a shuffled 1..N_USERS.
    user_p = rng.lognormal(0.0, 1.1, N_USERS)
    user_p /= user_p.sum()
    user_ids = rng.permutation(N_USERS).astype(np.int64) + 1
    user_t0 = rng.integers(T_START, T_END - 86_400 * 365, N_USERS)  # first activity of each user
    # Items: Zipf-like popularity by rank, ranks assigned to sparse original ids at random.
    ranks = np.arange(1, N_ITEMS + 1, dtype=np.float64)
    item_p = (ranks + 5.0) ** -1.0
    item_p /= item_p.sum()
    item_ids = rng.choice(4 * N_ITEMS, N_ITEMS, replace=False).astype(np.int64) + 1
    stars = np.arange(1, 11, dtype=np.float32) / 2
    rating_p = np.asarray(RATING_PCT) / sum(RATING_PCT)
    write_opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as f:
        f.write(b"user,item,rating,timestamp\n")
        for start in range(0, rows, CHUNK_ROWS):
            m = min(CHUNK_ROWS, rows - start)
            u = rng.choice(N_USERS, m, p=user_p)
            ts = user_t0[u] + rng.exponential(86_400 * 120, m).astype(np.int64)
            table = pa.table({
                "user": user_ids[u],
                "item": item_ids[rng.choice(N_ITEMS, m, p=item_p)],
                "rating": stars[rng.choice(10, m, p=rating_p)],
                "timestamp": np.minimum(ts, T_END),
            })
            pacsv.write_csv(table, f, write_options=write_opts)
    print(f"wrote {rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB -> {path}")


# ----------------------------------------------------------------------------------------------------
# Measuring one child process


def run_child(cmd: list[str], log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in GB, CPU seconds) of ``cmd`` run to completion; its output goes to ``log``.

    Exits with the child's log tail if it fails.
    """
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen not to wait again
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"command failed with status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return wall, usage.ru_maxrss * 1024 / 1e9, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux


def last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def warn_if_busy(when: str) -> None:
    """Says so when other processes compete for the CPU: wall times are then inflated (CPU s less so)."""
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    if load > 0.5 * cores:
        print(f"warning ({when}): 1-min load average {load:.1f} on {cores} cores; other processes compete for "
              f"the CPU, wall times are inflated (compare the CPU seconds, or re-run on an idle machine)", flush=True)


def bench_line(metric: str, ours: float, baseline: float, unit: str, digits: int) -> str:
    return json.dumps({"metric": metric, "ours": round(ours, digits), "baseline": round(baseline, digits),
                       "ratio": round(baseline / ours, 3), "unit": unit, "device": device()})


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked (InputError naming the flag) before anything is generated or run."""
    p = ArgParser(prog="prepare_speed.py", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, 1 repeat")
    p.add_argument("--rows", type=int, help=f"rows of the synthetic CSV (default {FULL_ROWS:,})")
    p.add_argument("--repeats", type=int, help="runs of each of ours / baseline (default 3; --quick: 1)")
    p.add_argument("--workdir", help="directory for the temp files (default: the system temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--generate-to", help=argparse.SUPPRESS)  # internal: the generation subprocess
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    args.rows = positive("--rows", args.rows) or (QUICK_ROWS if args.quick else FULL_ROWS)
    args.repeats = positive("--repeats", args.repeats) or (1 if args.quick else 3)
    non_negative("--seed", args.seed)
    if not args.generate_to:
        args.workdir = work_parent("--workdir", args.workdir)  # absolute: the children run in the repo root
    return args


def main_args(argv) -> None:
    args = parse_args(argv)
    if args.generate_to:
        synthesise(Path(args.generate_to), args.rows, args.seed)
        return

    work = Path(tempfile.mkdtemp(prefix="prepare_speed-", dir=args.workdir))
    try:
        csv = work / "interactions.csv"
        gen_cmd = [sys.executable, __file__, "--generate-to", str(csv), "--rows", str(args.rows), "--seed", str(args.seed)]
        gen_s, gen_gb, _ = run_child(gen_cmd, work / "generate.log")
        print(f"{last_line(work / 'generate.log')}")
        print(f"generation: {gen_s:.1f} s, peak RSS {gen_gb:.2f} GB (not part of the metric)")

        ours_cmd = [sys.executable, str(PREPARE), "table", "--src", str(csv), "--user-col", "user",
                    "--item-col", "item", "--rating-col", "rating", "--time-col", "timestamp",
                    "--min-user-interactions", "5", "--min-item-interactions", "5", "--out", str(work / "out")]
        base_cmd = [sys.executable, str(BASELINE), str(csv)]
        results = {"ours": [], "baseline": []}
        warn_if_busy("before the runs")
        for r in range(args.repeats):
            for name, cmd in (("ours", ours_cmd), ("baseline", base_cmd)):
                log = work / f"{name}-{r}.log"
                wall, gb, cpu = run_child(cmd, log)
                results[name].append((wall, gb))
                print(f"repeat {r + 1}/{args.repeats} {name:8s}: {wall:7.2f} s wall, {cpu:7.2f} s CPU, peak RSS {gb:6.3f} GB"
                      f" | {last_line(log)}", flush=True)
            shutil.rmtree(work / "out", ignore_errors=True)

        warn_if_busy("after the runs")
        med = {name: (statistics.median(w for w, _ in runs), statistics.median(g for _, g in runs))
               for name, runs in results.items()}
        (ours_s, ours_gb), (base_s, base_gb) = med["ours"], med["baseline"]
        ok_s, ok_gb = ours_s < TARGET_WALL_S, ours_gb < TARGET_RSS_GB
        note = "" if args.rows == FULL_ROWS else f" [this run has {args.rows:,} rows; targets are for {FULL_ROWS:,}: indicative only]"
        print(f"targets for {FULL_ROWS:,} rows (ours < {TARGET_WALL_S:g} s and < {TARGET_RSS_GB:g} GB peak): "
              f"wall {ours_s:.1f} s {'OK' if ok_s else 'MISSED'}, peak {ours_gb:.2f} GB {'OK' if ok_gb else 'MISSED'}"
              f" -> {'targets hold' if ok_s and ok_gb else 'targets NOT met'}{note}")
        print(f"medians over {args.repeats} repeat(s); baseline = pandas read_csv + groupby sizes, a lower bound "
              f"(ratio < 1 expected)")
        print(bench_line("prepare_peak_rss", ours_gb, base_gb, "GB", 3))
        print(bench_line("prepare_wall_time", ours_s, base_s, "s", 2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
