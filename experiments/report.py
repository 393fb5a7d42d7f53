"""Builds markdown result tables from run directories' final.json files, and writes them into the README.

  python experiments/report.py --runs runs/a runs/b ... [--protocol full] [--metrics hr@10,drr:ndcg@10]
                               [--part test] [--readme README.md --section NAME]

Each run directory holds a final.json (one seed, or ``--seeds N`` with ``test_ci95``). A row per run:
experiment name, seeds, then ``mean ± 95% half-width`` per metric. A metric is ``NAME@K`` of
``--protocol`` or ``PROTOCOL:NAME@K``; ``click:NAME@K`` / ``purchase:NAME@K`` read the per-event-type
metrics of event data (``by_event`` in final.json). With ``--readme`` the table replaces
the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` so README figures are never typed
by hand.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from jaxrec.cli import ArgParser, cli_main
from jaxrec.errors import InputError, read_json


def load_final(run_dir: Path) -> dict:
    path = Path(run_dir) / "final.json"
    if not path.is_file():
        raise InputError(path, "missing: the run has not finished")
    final = read_json(path)
    if not isinstance(final, dict) or not isinstance(final.get("exp"), str) or not isinstance(final.get("wall_s"), (int, float)):
        raise InputError(path, "malformed: expected the final.json of a run (an object with 'exp' and 'wall_s')")
    return final


def table(finals: list[tuple[str, dict]], protocol: str, metrics: list[str], part: str = "test") -> str:
    columns = [m.split(":", 1) if ":" in m else (protocol, m) for m in metrics]
    header = "| experiment | seeds | " + " | ".join(f"{p} {m}" for p, m in columns) + " | wall s / seed |"
    lines = [header, "|" + "---|" * (len(columns) + 3)]
    for label, f in finals:
        n = len(f.get("seeds", [None]))
        cells = []
        for p, m in columns:
            if p in f.get("by_event", {}).get(part, {}):
                values, ci = f["by_event"][part][p], f.get("by_event_ci95", {}).get(part, {}).get(p, {})
            else:
                values, ci = f.get(part, {}).get(p, {}), f.get(f"{part}_ci95", {}).get(p, {})
            if m not in values:
                cells.append("–")
            elif n > 1:
                cells.append(f"{values[m]:.4f} ± {ci.get(m, 0.0):.4f}")
            else:
                cells.append(f"{values[m]:.4f}")
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {f['wall_s'] / n:.1f} |")
    return "\n".join(lines)


def replace_section(readme: Path, name: str, text: str):
    if not readme.is_file():
        raise InputError(readme, "no such file; --readme names an existing README with table markers")
    src = readme.read_text()
    pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /table:{re.escape(name)} -->)", re.S)
    if not pattern.search(src):
        raise InputError(readme, f"no '<!-- table:{name} -->' ... '<!-- /table:{name} -->' markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), src))


def main_args(argv):
    p = ArgParser(prog="report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run directories (label=DIR to rename a row)")
    p.add_argument("--protocol", default="full")
    p.add_argument("--metrics", default="hr@10,ndcg@10")
    p.add_argument("--part", default="test", choices=("val", "test"))
    p.add_argument("--readme", help="README to update in place")
    p.add_argument("--section", help="table name between the README markers")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.readme and not args.section:
        raise InputError("--section", "needed with --readme")
    finals = []
    for spec in args.runs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        f = load_final(Path(path))
        finals.append((label or f["exp"], f))
    text = table(finals, args.protocol, args.metrics.split(","), args.part)
    print(text)
    if args.readme:
        replace_section(Path(args.readme), args.section, text)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
