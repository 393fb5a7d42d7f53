"""A prepared data set's order against SASRec's file of the same ratings (SASRec's own user and item numbers).

  python data_prep/sasrec_order.py --sasrec ml-1m.txt --data data/ml-1m-5core [--json report.json]

SASRec's ``ml-1m.txt``, on which SASRec, BERT4Rec and SASRec+ report ML-1M, renumbers users and items and keeps
no timestamps, so it cannot be compared with ``ratings.dat`` line by line. The numbering is recovered from the
data itself: a user is matched to the user of ``--data`` whose items have the same popularities (the sorted
interaction counts of its items, which renumbering leaves alone), and an item to the item that the same matched
users have. On ML-1M (``--data`` prepared with ``--min-item-interactions 5 --min-user-interactions 5``, SASRec's
item set) every one of the 6,040 users and 3,416 items matches exactly one. Then it prints, over the matched
users, the share of sequence positions where the two orders differ and the share of users whose validation
(second-to-last) or test (last) item differs: how far ``--data``'s order is from the one the published numbers
were measured on. ``--json`` also writes the report and the two numberings (SASRec's id -> original id).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.common import original_ids
from data_prep.prepare import read_sasrec
from jaxrec.cli import cli_main
from jaxrec.data.prepared import load_prepared
from jaxrec.errors import InputError


def _unique_matches(keys_a: dict, keys_b: dict) -> dict:
    """{b: a} for each b whose key is the key of exactly one a (and of no other b)."""
    by_key = collections.defaultdict(list)
    for a, key in keys_a.items():
        by_key[key].append(a)
    count_b = collections.Counter(keys_b.values())
    return {b: by_key[key][0] for b, key in keys_b.items() if len(by_key[key]) == 1 and count_b[key] == 1}


def match_ids(data_user, data_item, sas_user, sas_item) -> tuple[dict, dict]:
    """(user map, item map), each {SASRec id: --data id}, of two renumberings of one set of interactions."""
    data = pd.DataFrame({"u": data_user, "i": data_item})
    sas = pd.DataFrame({"u": sas_user, "i": sas_item})

    def popularity_key(df):
        pop = df["i"].map(df.groupby("i").size())
        return df.assign(p=pop).groupby("u")["p"].apply(lambda s: tuple(sorted(s))).to_dict()

    users = _unique_matches(popularity_key(data), popularity_key(sas))
    sas = sas[sas["u"].isin(users)]
    holders_sas = sas.assign(u=sas["u"].map(users)).groupby("i")["u"].apply(frozenset).to_dict()
    holders_data = data[data["u"].isin(set(users.values()))].groupby("i")["u"].apply(frozenset).to_dict()
    return users, _unique_matches(holders_data, holders_sas)


def order_report(data_user, data_item, data_rank, sas_user, sas_item, sas_rank) -> dict:
    """Matched ids and how ``--data``'s order (``data_rank`` within each user) differs from SASRec's."""
    users, items = match_ids(data_user, data_item, sas_user, sas_item)
    sas = pd.DataFrame({"u": pd.Series(sas_user).map(users), "i": pd.Series(sas_item).map(items), "sas": sas_rank})
    sas = sas.dropna().astype(np.int64)
    data = pd.DataFrame({"u": data_user, "i": data_item, "data": data_rank})
    both = data.merge(sas, on=["u", "i"])
    # Users whose items all matched: compare each one's two sequences position by position.
    size = both.groupby("u").size()
    full = size.index[size.to_numpy() == data.groupby("u").size().reindex(size.index).to_numpy()]
    both = both[both["u"].isin(full)]
    for col in ("data", "sas"):  # ranks within the user, 0..n-1 (a k-core leaves gaps in an original rank)
        both[col] = both.groupby("u")[col].rank(method="first").astype(np.int64) - 1
    n = both["u"].map(both.groupby("u").size())
    by_data = both.set_index(["u", "data"])["i"].sort_index()
    by_sas = both.set_index(["u", "sas"])["i"].sort_index()
    by_sas.index = by_data.index

    def differs(from_end: int) -> float:
        at = both.loc[n - 1 - both["data"] == from_end, ["u", "data"]]
        eligible = at["u"].isin(size.index[size.to_numpy() > from_end])
        keys = list(map(tuple, at[eligible].to_numpy()))
        return float((by_data.loc[keys].to_numpy() != by_sas.loc[keys].to_numpy()).mean()) if keys else 0.0

    return {"users": len(full), "users_in_data": int(len(np.unique(data_user))),
            "users_in_sasrec": int(len(np.unique(sas_user))), "items_matched": len(items),
            "items_in_sasrec": int(len(np.unique(sas_item))), "ratings": int(len(both)),
            "positions_differ": float((by_data.to_numpy() != by_sas.to_numpy()).mean()),
            "validation_target_differs": differs(1), "test_target_differs": differs(0),
            "user_map": {int(k): int(v) for k, v in users.items()}, "item_map": {int(k): int(v) for k, v in items.items()}}


def main_args(argv) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sasrec", required=True, help="SASRec's file: 'user item' lines, each user's in time order")
    p.add_argument("--data", required=True, help="a prepared data directory (prepare.py) of the same interactions")
    p.add_argument("--json", help="also write the report and the id maps here")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    sas = read_sasrec(Path(args.sasrec))
    inter, _, items = load_prepared(args.data)
    n = len(inter.user)
    if len(sas.user) != n:
        raise InputError(args.data, f"{n:,} interactions against {len(sas.user):,} in {args.sasrec}: not the "
                                    "same ratings (SASRec's ml-1m.txt is ML-1M with items and users of >= 5 ratings)")
    # Original ids where prepare.py recorded them, so the maps read as SASRec id -> the log's id.
    data_user, data_item = original_ids(args.data, inter, items, required=False)
    report = order_report(data_user, data_item, np.asarray(inter.order), sas.user, sas.item, sas.order)
    print(f"matched: {report['users']:,} of {report['users_in_sasrec']:,} users, {report['items_matched']:,} of "
          f"{report['items_in_sasrec']:,} items ({report['ratings']:,} ratings compared)")
    print(f"positions where --data's order differs from SASRec's: {report['positions_differ']:.3f}")
    print(f"users whose validation target differs: {report['validation_target_differs']:.3f}; "
          f"test target: {report['test_target_differs']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
