"""Lower-bound reference for ``benchmarks/prepare_speed.py``: read the CSV with pandas, count per user and item.

  python benchmarks/baselines/pandas_groupby.py FILE.csv

What it is: a plain ``pandas.read_csv(FILE)`` (C parser, default dtypes) followed by
``groupby('user').size()`` and ``groupby('item').size()``: the minimum any preparation pipeline has to do
(parse every row once and count rows per user and per item, which a k-core filter needs). It does no
validation, no dedup, no k-core iteration, no id densification, no sorting and writes nothing.

What it is not: a competitor or an alternative implementation of ``data_prep/prepare.py table``. Its time
and peak memory are a floor, so ``prepare_speed.py`` reports ratios (baseline / ours) that are expected to
be below 1; how far below 1 shows how much the full pipeline costs on top of parsing the file.

Prints one line ``{"rows", "users", "items", "seconds"}`` (seconds measured inside this process, imports
excluded; the benchmark itself times the whole process from the outside).
"""
from __future__ import annotations

import json
import sys
import time

import pandas as pd


def count(path: str) -> dict:
    """Rows, distinct users and distinct items of the CSV at ``path`` (columns ``user`` and ``item``)."""
    df = pd.read_csv(path)
    per_user = df.groupby("user").size()
    per_item = df.groupby("item").size()
    return {"rows": int(len(df)), "users": int(len(per_user)), "items": int(len(per_item))}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = count(argv[0])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
