"""Renders saved benchmark outputs into the README's benchmark table (figures are never typed by hand).

  python benchmarks/NAME.py | tee benchmarks/results/NAME.txt      # on the machine being measured
  python benchmarks/to_readme.py [--readme README.md]               # table from benchmarks/results/*.txt
  python benchmarks/to_readme.py --results FILE_OR_DIR ...          # other results files (dirs: their *.txt)

Every JSON line with a "metric" key in those files becomes a row (fields of docs/design.md, section 7).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxrec.cli import ArgParser, cli_main
from experiments.report import replace_section
from jaxrec.errors import InputError

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = {"ours": (int, float), "baseline": (int, float), "ratio": (int, float), "unit": str, "device": str}
"""The fields a row needs besides "metric" (docs/design.md, section 7)."""


def rows(results: Path | list[Path] = RESULTS) -> list[tuple[str, dict]]:
    """(benchmark name, record) of every result line in ``results`` (files, or dirs of ``*.txt``); a missing
    path, or a result line without the fields of a row, is an InputError naming it."""
    files = []
    for path in ([results] if isinstance(results, (str, Path)) else results):
        path = Path(path)
        if path.is_dir():
            files += sorted(path.glob("*.txt"))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "no such results file or directory; save a benchmark's output there first "
                                   "(python benchmarks/NAME.py | tee benchmarks/results/NAME.txt)")
    out = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(path, f"cannot be read ({e})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "metric" in rec:
                    bad = [k for k, kind in FIELDS.items() if not isinstance(rec.get(k), kind) or isinstance(rec.get(k), bool)]
                    if bad:
                        raise InputError(path, f"result {rec['metric']!r} lacks or has malformed {bad}; expected the "
                                               "fields of docs/design.md, section 7", line=lineno)
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
    p = ArgParser(prog="to_readme.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", help="README to update between <!-- table:benchmarks --> markers")
    p.add_argument("--results", nargs="+", type=Path, default=[RESULTS], metavar="FILE_OR_DIR",
                   help="saved benchmark outputs: files, or directories of *.txt (default benchmarks/results)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    records = rows(args.results)
    if not records:
        raise InputError(" ".join(map(str, args.results)), "no benchmark result lines (JSON with a \"metric\" key) found")
    text = table(records)
    print(text)
    if args.readme:
        replace_section(Path(args.readme), "benchmarks", text)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
