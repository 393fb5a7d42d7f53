"""Renders saved benchmark outputs into the README's benchmark table (figures are never typed by hand).

  python benchmarks/NAME.py | tee benchmarks/results/NAME.txt      # on the machine being measured
  python benchmarks/to_readme.py [--readme README.md]               # table from benchmarks/results/*.txt

Every JSON line with a "metric" key in those files becomes a row (DESIGN.md 2.5 fields).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep.common import cli_main
from experiments.report import replace_section

RESULTS = Path(__file__).resolve().parent / "results"


def rows(results_dir: Path = RESULTS) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(results_dir.glob("*.txt")):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "metric" in rec:
                    out.append((path.stem, rec))
    return out


def other_baselines(r: dict) -> str:
    """``baseline_NAME`` / ``ratio_NAME`` pairs of a record (more baselines timed beside the main one)."""
    names = [k[len("baseline_"):] for k in r if k.startswith("baseline_") and f"ratio_{k[len('baseline_'):]}" in r]
    return "; ".join(f"{n}: {r['baseline_' + n]:.4g} ({r['ratio_' + n]:.3g}x)" for n in names) or "-"


def table(records) -> str:
    lines = ["| benchmark | metric | ours | baseline | ratio (>1 = ours better) | other baselines (ratio) | unit | device |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in records:
        lines.append(f"| {name} | {r['metric']} | {r['ours']:.4g} | {r['baseline']:.4g} | {r['ratio']:.3g} | "
                     f"{other_baselines(r)} | {r['unit']} | {r['device']} |")
    return "\n".join(lines)


def main_args(argv):
    p = argparse.ArgumentParser(prog="to_readme.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", help="README to update between <!-- table:benchmarks --> markers")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    text = table(rows())
    print(text)
    if args.readme:
        replace_section(Path(args.readme), "benchmarks", text)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
