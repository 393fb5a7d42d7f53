"""Peak memory (max RSS) of ``m3s_tdlambda`` on ML-1M against the seed's pipeline.

  python benchmarks/sqn_memory.py [--quick] [--data DIR] [--steps S] [--repeats R]

Methodology
-----------
1. Ours: ``python experiments/run.py --exp=m3s_tdlambda --data DIR --set data.split.scheme=users
   train.steps=S ...`` (default S = 200; ``--quick`` 20) in a fresh subprocess: loading the data, the
   split, the training windows, compiling and running the training step, validation and test evaluation
   (the next-item protocol over every held-out target), orbax checkpoints and plots: everything a real run
   holds at once. Its peak does not grow with S (the step's buffers are fixed by the batch).
2. Baseline: ``python benchmarks/baselines/m3s_torch.py --data DIR --steps 2`` in a fresh subprocess: the
   seed's pipeline (per-user pandas windows into a list of Python lists, the seed's tensor dataset and
   DataLoader, two published training steps at batch 2048). ``--quick`` builds the windows of the first
   200 training users only (so its peak is a lower bound of the seed's).
3. Peak RSS = ``ru_maxrss`` of that very child, from ``os.wait4`` (Linux: KiB; reported in GB = 1e9
   bytes). Linux counts the RSS of the process *before* ``exec`` in the child's ``ru_maxrss``, so this
   parent imports only the standard library (~10 MB).
4. Ours runs ``--repeats`` times (default 3; ``--quick`` 1), the baseline once (it takes minutes);
   reported numbers are MEDIANS. Wall times are printed for information (other processes may load the CPU).
5. Output: one JSON line (docs/design.md, section 7): ``m3s_peak_rss_gb``, ratio = baseline / ours (> 1: ours leaner);
   the goal is ours < 1 GB.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.common import device, positive  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402
from jaxrec.data.prepared import check_prepared  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_GB = 1.0


def measure(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """(peak RSS GB, wall s, last output line) of one child; its output goes to ``log``."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"command failed with status {proc.returncode}: {' '.join(cmd)}\n{text[-3000:]}")
    lines = text.strip().splitlines()
    return usage.ru_maxrss * 1024 / 1e9, wall, lines[-1] if lines else ""  # ru_maxrss: KiB on Linux


def parse_args(argv=None):
    """The flags and the data directory, checked (InputError naming the flag or file) before any child runs;
    standard library only (see the methodology, point 3)."""
    p = ArgParser(prog="sqn_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    positive("--steps", args.steps)
    positive("--repeats", args.repeats)
    # Absolute: the children run in the repository root, not in this process's working directory.
    args.data = str(check_prepared(args.data))
    return args


def main_args(argv) -> None:
    args = parse_args(argv)
    steps = args.steps or (20 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)
    dev = device()
    print(f"device: {dev}", flush=True)
    ours, ours_wall = [], []
    with tempfile.TemporaryDirectory(prefix="sqn_memory_") as tmp:
        for r in range(repeats):
            cmd = [sys.executable, "experiments/run.py", "--exp=m3s_tdlambda", "--data", args.data,
                   "--run-dir", str(Path(tmp) / f"run{r}"), "--set", "data.split.scheme=users", f"train.steps={steps}",
                   f"train.eval_every={steps}", f"train.ckpt_every={steps}", f"train.log_every={max(steps // 4, 1)}"]
            gb, wall, _ = measure(cmd, Path(tmp) / f"ours{r}.log")
            ours.append(gb)
            ours_wall.append(wall)
            print(f"ours run {r}: peak {gb:.3f} GB, {wall:.1f} s", flush=True)
        base_cmd = [sys.executable, "benchmarks/baselines/m3s_torch.py", "--data", args.data, "--steps", "2", "--threads", "1"]
        if args.quick:
            base_cmd += ["--users", "200"]
        base_gb, base_wall, base_last = measure(base_cmd, Path(tmp) / "baseline.log")
    base_info = json.loads(base_last)
    print(f"baseline: peak {base_gb:.3f} GB, {base_wall:.1f} s ({base_info})", flush=True)
    mo = statistics.median(ours)
    line = {"metric": "m3s_peak_rss_gb", "ours": round(mo, 3), "baseline": round(base_gb, 3),
            "ratio": round(base_gb / mo, 2), "unit": "GB", "device": dev, "goal_ours_below": GOAL_GB,
            "ours_all": [round(x, 3) for x in ours], "ours_wall_s": round(statistics.median(ours_wall), 1),
            "ours_setting": f"run.py m3s_tdlambda, users split, {steps} steps + val/test eval + checkpoint",
            "baseline_setting": f"seed windows ({base_info['users']} users, {base_info['windows']} windows, "
                                f"{base_info['build_s']} s) + 2 published steps",
            "baseline_wall_s": round(base_wall, 1)}
    print(json.dumps(line), flush=True)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
