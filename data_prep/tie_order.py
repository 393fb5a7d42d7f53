"""Same-second ties: how a prepared data set orders the ratings a log gives one timestamp, against the log's lines.

  python data_prep/tie_order.py --log ml-1m.zip --data data/ml-1m                  # MovieLens ratings.dat
  python data_prep/tie_order.py --log ratings.csv --user-col user_id --item-col movie_id --time-col timestamp \
      --data data/ml-1m [--json report.json]

MovieLens timestamps are whole seconds and most ML-1M ratings share their second with other ratings of the same
user (users rated pages of films at once). What decides the order of such ties decides each user's training
sequence and, under leave-last, which film is the validation and which the test target. SASRec's ``ml-1m.txt``,
which BERT4Rec's and SASRec+'s published numbers use, sorts each user's ratings by timestamp with a stable sort,
so ties keep ``ratings.dat``'s line order; ``prepare.py`` does the same with ``ratings.dat`` (``--time-col``).
Over the users whose rated items agree in the log and in ``--data``, this prints:

* ``tied``: the share of ratings that share their second with another rating of the same user;
* ``positions_differ``: the share of sequence positions where ``--data``'s order differs from the log's line
  order among ties (timestamp, then line);
* ``validation_target_differs`` / ``test_target_differs``: the share of users whose second-to-last / last item
  differs between the two orders;
* ``consistency`` of each order: for every two films adjacent in a user's sequence and rated in the same second,
  whether the order puts them the same way round as most users whose sequences hold the same adjacent tied pair
  do (pairs seen in at least two users), beside ``consistency_if_random``, what ties ordered at random would
  give. An order that follows one fixed ranking of the films within every second scores 1: a regularity a
  next-item model can learn, which a random or per-user arbitrary tie order does not have.

A user whose items differ between the two (a filtered or different data set) is left out and counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path

import numpy as np

from data_prep.common import Source, numeric_column, original_ids, require_columns
from data_prep.prepare import _read_ratings_double_colon, read_any_table
from jaxrec.cli import cli_main
from jaxrec.data.prepared import load_prepared
from jaxrec.errors import InputError


def read_log(path: Path, user_col: str | None, item_col: str | None, time_col: str | None):
    """(user, item, timestamp) int64 arrays of a rating log in its line order: MovieLens ``ratings.dat`` (the
    file, its directory or its zip) unless the three column names are given for a table."""
    if user_col or item_col or time_col:
        if not (user_col and item_col and time_col):
            raise InputError("--user-col/--item-col/--time-col", "give all three for a table log, or none for ratings.dat")
        df, label, header_lines = read_any_table(path)
        require_columns(df, [user_col, item_col, time_col], label)
        cols = [user_col, item_col, time_col]
    else:
        src = Source(path)
        plain_file = src.zip is None and path.is_file()  # a '::' file of any name, or ratings.dat in a dir/zip
        handle = str(path) if plain_file else src.find("ratings.dat")
        df = _read_ratings_double_colon(src, handle)
        cols, label, header_lines = ["user", "item", "timestamp"], src.label(handle), 0
    return tuple(numeric_column(df, c, label, header_lines, integer=True).astype(np.int64) for c in cols)


def majority_consistency(first: np.ndarray, second: np.ndarray) -> tuple[float, float, int]:
    """(consistency, its expectation under random tie order, pair occurrences) of ordered pairs ``first`` ->
    ``second`` (adjacent tied items): each unordered pair's occurrences agree with its majority direction."""
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    key = lo * (max(int(hi.max(initial=0)), 0) + 1) + hi
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    ascending = np.bincount(inverse, weights=(first < second).astype(np.float64), minlength=len(counts))
    seen = counts >= 2
    n = int(counts[seen].sum())
    if n == 0:
        return float("nan"), float("nan"), 0
    agree = np.maximum(ascending, counts - ascending)[seen].sum()
    # E[max(X, k - X)] for X ~ Binomial(k, 1/2): the agreement of k directions drawn at random.
    expected = {k: sum(comb(k, j) * max(j, k - j) for j in range(k + 1)) / 2 ** k  # exact Python integers
                for k in map(int, np.unique(counts[seen]))}
    chance = sum(expected[int(k)] for k in counts[seen])
    return float(agree / n), float(chance / n), n


def tie_report(log_user, log_item, log_time, data_user, data_item) -> dict:
    """The report (module docstring) of a log (original ids, line order) against a prepared order (original
    ids, rows in each user's sequence order)."""
    line = np.arange(len(log_user))
    by_log = np.lexsort((line, log_time, log_user))  # each user's ratings by time, ties in line order
    lu, li, lt = log_user[by_log], log_item[by_log], log_time[by_log]
    # Each prepared row's timestamp, looked up by (user, item) in the log (first occurrence if repeated).
    key_log = lu * (int(max(li.max(), data_item.max())) + 1) + li
    key_data = data_user * (int(max(li.max(), data_item.max())) + 1) + data_item
    sort_log = np.argsort(key_log, kind="stable")
    pos = np.searchsorted(key_log[sort_log], key_data)
    found = (pos < len(key_log)) & (key_log[sort_log][np.minimum(pos, len(key_log) - 1)] == key_data)
    dt = np.where(found, lt[sort_log][np.minimum(pos, len(key_log) - 1)], -1)
    users_log, start_log, n_log = np.unique(lu, return_index=True, return_counts=True)
    users_data, start_data, n_data = np.unique(data_user, return_index=True, return_counts=True)
    common, ia, ib = np.intersect1d(users_log, users_data, return_indices=True)
    kept, dropped = [], 0
    for u, a, b in zip(common, ia, ib):
        s_log = slice(start_log[a], start_log[a] + n_log[a])
        s_data = slice(start_data[b], start_data[b] + n_data[b])
        if n_log[a] == n_data[b] and found[s_data].all() and np.array_equal(np.sort(li[s_log]), np.sort(data_item[s_data])):
            kept.append((s_log, s_data))
        else:
            dropped += 1
    if not kept:
        raise InputError("--data", "no user has the same items in the log and in the prepared data")
    rows_log = np.concatenate([np.arange(s.start, s.stop) for s, _ in kept])
    rows_data = np.concatenate([np.arange(s.start, s.stop) for _, s in kept])
    seq_user = lu[rows_log]
    same_user = seq_user[1:] == seq_user[:-1]
    tied_next = same_user & (lt[rows_log][1:] == lt[rows_log][:-1])
    tied = np.zeros(len(rows_log), bool)
    tied[1:] |= tied_next
    tied[:-1] |= tied_next
    last = np.array([s.stop - 1 for s, _ in kept]), np.array([s.stop - 1 for _, s in kept])
    two = np.array([s.stop - s.start >= 2 for s, _ in kept])  # users with a second-to-last item
    report = {
        "users": len(kept), "users_left_out": dropped, "ratings": int(len(rows_log)),
        "tied": float(tied.mean()),
        "positions_differ": float(np.mean(li[rows_log] != data_item[rows_data])),
        "test_target_differs": float(np.mean(li[last[0]] != data_item[last[1]])),
        "validation_target_differs": float(np.mean((li[last[0] - 1] != data_item[last[1] - 1])[two])),
    }
    for name, items, times in (("log_line_order", li[rows_log], lt[rows_log]),
                               ("data_order", data_item[rows_data], dt[rows_data])):
        adjacent = same_user & (times[1:] == times[:-1])
        share, chance, n = majority_consistency(items[:-1][adjacent], items[1:][adjacent])
        report[name] = {"consistency": share, "consistency_if_random": chance, "tied_adjacent_pairs_counted": n}
    return report


def main_args(argv) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True, help="the rating log in its original line order: MovieLens ratings.dat "
                                               "(file, directory or zip) or a csv/tsv/parquet/npz table")
    p.add_argument("--user-col", help="table log: user column")
    p.add_argument("--item-col", help="table log: item column")
    p.add_argument("--time-col", help="table log: timestamp column")
    p.add_argument("--data", required=True, help="a prepared data directory (prepare.py) of the same log")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    log_user, log_item, log_time = read_log(Path(args.log), args.user_col, args.item_col, args.time_col)
    inter, _, items = load_prepared(args.data)
    data_user, data_item = original_ids(args.data, inter, items, required=True)
    report = tie_report(log_user, log_item, log_time, data_user, data_item)
    print(f"users compared: {report['users']:,} ({report['users_left_out']:,} left out: different items), "
          f"{report['ratings']:,} ratings")
    print(f"ratings sharing their second with another of the user's: {report['tied']:.3f}")
    print(f"positions where --data's order differs from the log's line order: {report['positions_differ']:.3f}")
    print(f"users whose validation target differs: {report['validation_target_differs']:.3f}; "
          f"test target: {report['test_target_differs']:.3f}")
    for name in ("log_line_order", "data_order"):
        r = report[name]
        print(f"{name}: tied adjacent pairs ordered as most users order them: {r['consistency']:.3f} "
              f"(random tie order: {r['consistency_if_random']:.3f}; {r['tied_adjacent_pairs_counted']:,} pairs)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
