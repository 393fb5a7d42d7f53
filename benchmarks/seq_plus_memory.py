"""Peak memory (max RSS) and training throughput of the whole-sequence experiments on ML-1M.

  python benchmarks/seq_plus_memory.py [--quick] [--data DIR] [--steps S] [--exps sasrec_plus,m3s_plus]

Methodology
-----------
1. For each experiment (default ``sasrec_plus`` and ``m3s_plus``, their registered configs: 200 items per
   user, 2 blocks, d 64, 128 users per step, full softmax over the 3,706 items at every position):
   ``python experiments/run.py --exp=E --data DIR --set train.steps=S train.eval_every=S ...`` (default
   S = 40; ``--quick`` 10) in a fresh subprocess, on the experiment's default split (leave-last): loading,
   the split, the training rows, compiling and running the training step, validation and test evaluation
   (6,040 full-ranking queries each), a checkpoint and the plots: everything a real run holds at once.
2. Peak RSS = ``ru_maxrss`` of that very child from ``os.wait4`` (``sqn_memory.measure``; this parent
   imports only the standard library, because Linux counts the parent's memory at spawn in the child's
   peak). GB = 1e9 bytes.
3. Throughput = training steps per second between the first and the last logged training lines of the
   run's ``metrics.jsonl`` (compilation and evaluation excluded; other processes may load the CPU).
4. Output: one JSON line per experiment (docs/design.md, section 7): ``EXP_peak_rss_gb``, with the 2 GB
   budget of issue #12 as the baseline (ratio = 2 GB / ours: > 1 is under the budget).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import device, positive  # noqa: E402
from benchmarks.sqn_memory import measure  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402
from jaxrec.data.prepared import check_prepared  # noqa: E402
from jaxrec.errors import InputError  # noqa: E402

GOAL_GB = 2.0
KNOWN = ("sasrec_plus", "gru4rec_plus", "sqn_plus", "m3s_plus")


def parse_args(argv=None):
    p = ArgParser(prog="seq_plus_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--exps", default="sasrec_plus,m3s_plus")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    positive("--steps", args.steps)
    args.exps = [e for e in args.exps.split(",") if e]
    unknown = [e for e in args.exps if e not in KNOWN]
    if unknown or not args.exps:
        raise InputError("--exps", f"{','.join(unknown) or '(none)'}: expected some of {', '.join(KNOWN)}")
    args.data = str(check_prepared(args.data))
    return args


def steps_per_second(metrics: Path) -> float | None:
    train = [json.loads(x) for x in metrics.read_text().splitlines()]
    train = [x for x in train if "loss" in x and "val" not in x]
    if len(train) < 2 or train[-1]["wall_s"] <= train[0]["wall_s"]:
        return None
    return (train[-1]["step"] - train[0]["step"]) / (train[-1]["wall_s"] - train[0]["wall_s"])


def main_args(argv) -> None:
    args = parse_args(argv)
    steps = args.steps or (10 if args.quick else 40)
    dev = device()
    print(f"device: {dev}", flush=True)
    with tempfile.TemporaryDirectory(prefix="seq_plus_memory_") as tmp:
        for exp in args.exps:
            run_dir = Path(tmp) / exp
            cmd = [sys.executable, "experiments/run.py", f"--exp={exp}", "--data", args.data, "--run-dir", str(run_dir),
                   "--quiet", "--set", f"train.steps={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
                   f"train.log_every={max(steps // 4, 1)}"]
            gb, wall, _ = measure(cmd, Path(tmp) / f"{exp}.log")
            rate = steps_per_second(run_dir / "metrics.jsonl")
            final = json.loads((run_dir / "final.json").read_text())
            # The row's baseline is the budget: ratio > 1 = the run stays under it.
            line = {"metric": f"{exp}_peak_rss_gb", "ours": round(gb, 3), "baseline": GOAL_GB,
                    "ratio": round(GOAL_GB / gb, 2), "unit": "GB", "baseline_setting": "the 2 GB budget (issue #12)",
                    "steps": steps, "wall_s": round(wall, 1),
                    "train_steps_per_s": None if rate is None else round(rate, 3),
                    "test_ndcg@10": round(final["test"]["next_item"]["ndcg@10"], 4), "device": dev,
                    "setting": f"run.py {exp} registered config, leave_last, {steps} steps + val/test eval + checkpoint"}
            print(json.dumps(line), flush=True)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
