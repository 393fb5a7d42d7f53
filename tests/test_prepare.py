"""Tests for data_prep/prepare.py (docs/design.md, section 2).

Tiny hand-made inputs are written into tmp_path and every expected array is worked out by hand in
the comments. The CLI runs in-process (``main([...])``) with capsys reading stderr; one subprocess
test checks the script entry point (no traceback without --debug, one with it). The real-data tests
at the end skip cleanly when ../shared/data (or $JAXREC_SHARED_DATA) is absent.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import common
from data_prep.prepare import main
from jaxrec.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAXREC_SHARED_DATA") or REPO.parent / "shared" / "data")
CHECKER = SHARED_DATA.parent / "tools" / "check_contracts.py"


# ----------------------------------------------------------------------------------------------------
# Helpers


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def make_zip(path: Path, members: dict, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def load(d: Path):
    with np.load(d / "interactions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads((d / "meta.json").read_text())
    items = pd.read_csv(d / "items.csv", keep_default_na=False)
    users = pd.read_csv(d / "users.csv", keep_default_na=False, dtype=str)
    return arrays, meta, items, users


def prepare_ok(capsys, *argv):
    """Runs the CLI, expects success, returns (arrays, meta, items, users) of its --out."""
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    argv = [str(a) for a in argv]
    return load(Path(argv[argv.index("--out") + 1]))


def assert_arrays(arrays, **expected):
    for key, values in expected.items():
        assert arrays[key].tolist() == values, key
    assert arrays["user"].dtype == np.int32 and arrays["item"].dtype == np.int32
    assert arrays["rating"].dtype == np.float32 and arrays["order"].dtype == np.int64


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def assert_input_error(capsys, tmp_path, argv, expected):
    """Bad input: exit 2, exactly one stderr line matching ``expected`` (a regex), no traceback, and
    an existing output directory left byte for byte as it was (no temp dirs left beside it)."""
    out = tmp_path / "existing_out"
    out.mkdir()
    (out / "interactions.npz").write_bytes(b"previous npz bytes")
    (out / "meta.json").write_text('{"name": "previous"}\n')
    (out / "sub").mkdir()
    (out / "sub" / "note.txt").write_text("keep me")
    before = snapshot(out)
    rc, _, err = run(capsys, *argv, "--out", out)
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert re.fullmatch(expected, lines[0]), lines[0]
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".existing_out")] == []
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# Tiny MovieLens layouts

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")


def u_item_line(item_id, title, genres):
    flags = ["1" if g in genres else "0" for g in ML100K_GENRES]
    return "|".join([str(item_id), title, "01-Jan-1995", "", "http://example.org", *flags])


# Users 5, 7, 10 -> dense 0, 1, 2; items 100, 200, 300 -> dense 0, 1, 2 (item 400 and user 99 have
# no ratings). Sorted by (user, timestamp):
#   user 5:  item 100 r3 t900, item 200 r2 t950
#   user 7:  item 300 r1 t950
#   user 10: item 100 r5 t800, item 200 r4 t1000
U_DATA = "10\t200\t4\t1000\n5\t100\t3\t900\n10\t100\t5\t800\n7\t300\t1\t950\n5\t200\t2\t950\n"
U_ITEM = "\n".join([
    u_item_line(100, "Café Society (1995)", {"Action", "Comedy"}),
    u_item_line(200, "Alien: Resurrection (1997)", {"Horror", "Sci-Fi"}),
    u_item_line(300, "Zed (1990)", {"unknown"}),
    u_item_line(400, "Never Rated (1991)", {"Drama"}),
]) + "\n"
U_USER = "5|24|M|technician|85711\n7|53|F|other|94043\n10|23|M|writer|32067\n99|40|F|none|00000\n"


def ml100k_dir(root: Path, u_data: str = U_DATA) -> Path:
    d = root / "ml-100k"
    write(d / "u.data", u_data)
    write(d / "u.item", U_ITEM, "latin-1")
    write(d / "u.user", U_USER)
    return d


# Users 1, 2, 3 and items 10, 20, 30 -> dense 0, 1, 2. Sorted by (user, timestamp):
#   user 1: item 20 r3 t100, item 10 r5 t300;  user 2: item 30 r2 t200;  user 3: item 20 r4 t500
RATINGS_DAT = "3::20::4::500\n1::10::5::300\n1::20::3::100\n2::30::2::200\n"
# Titles with ':' inside, a Latin-1 'é', and one ending in ':' (so '::' and ':' run together).
MOVIES_DAT = ("10::Café: The Movie (1999)::Comedy\n20::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
              "30::Foo: (2000)::Drama\n31::Bar:::Drama\n")
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"


def ml1m_dir(root: Path, ratings: str = RATINGS_DAT) -> Path:
    d = root / "ml-1m"
    write(d / "ratings.dat", ratings)
    write(d / "movies.dat", MOVIES_DAT, "latin-1")
    write(d / "users.dat", USERS_DAT)
    return d


# Users 1, 2; items 3, 5 -> dense 0, 1. user 1: item 3 r0.5 t1112484676, item 5 r3.5 t1112486027;
# user 2: item 5 r5.0 t974820889.
RATINGS_CSV = "userId,movieId,rating,timestamp\n1,5,3.5,1112486027\n1,3,0.5,1112484676\n2,5,5.0,974820889\n"
MOVIES_CSV = 'movieId,title,genres\n3,"Heat, The (1995)",Action|Crime\n5,Amélie (2001),Comedy|Romance\n'


def ml20m_zip(path: Path, ratings: str = RATINGS_CSV) -> Path:
    return make_zip(path, {"ml-20m/ratings.csv": ratings, "ml-20m/movies.csv": MOVIES_CSV,
                           "__MACOSX/ml-20m/._ratings.csv": "junk"})


# ----------------------------------------------------------------------------------------------------
# MovieLens


def test_movielens_100k_layout(tmp_path, capsys):
    src = ml100k_dir(tmp_path)
    arrays, meta, items, users = prepare_ok(capsys, "movielens", "--variant", "ml-100k", "--src", src,
                                            "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 2, 2], item=[0, 1, 2, 0, 1], rating=[3, 2, 1, 5, 4],
                  order=[900, 950, 950, 800, 1000])
    assert items.to_dict("list") == {
        "item": [0, 1, 2], "original_id": [100, 200, 300],
        "title": ["Café Society (1995)", "Alien: Resurrection (1997)", "Zed (1990)"],
        "genres": ["Action|Comedy", "Horror|Sci-Fi", "unknown"],
    }
    assert users.to_dict("list") == {
        "user": ["0", "1", "2"], "original_id": ["5", "7", "10"], "age": ["24", "53", "23"],
        "gender": ["M", "F", "M"], "occupation": ["technician", "other", "writer"], "zip": ["85711", "94043", "32067"],
    }
    assert (meta["name"], meta["n_users"], meta["n_items"], meta["n_interactions"]) == ("out", 3, 3, 5)
    assert (meta["rating_min"], meta["rating_max"], meta["format_version"]) == (1.0, 5.0, 1)
    assert meta["order_kind"] == "timestamp" and meta["variant"] == "ml-100k"
    assert [Path(s["path"]).name for s in meta["sources"]] == ["u.data", "u.item", "u.user"]
    assert meta["sources"][0]["sha256"] == hashlib.sha256(U_DATA.encode()).hexdigest()


def test_movielens_100k_filtered_users_map_to_original_ids(tmp_path, capsys):
    # --min-user-interactions 2 drops user 7 (one rating), and with it item 300 (rated only by 7):
    # users 5, 10 -> dense 0, 1 and items 100, 200 -> dense 0, 1, with their own metadata rows.
    src = ml100k_dir(tmp_path)
    arrays, meta, items, users = prepare_ok(capsys, "movielens", "--variant", "ml-100k", "--src", src,
                                            "--min-user-interactions", 2, "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 1], item=[0, 1, 0, 1], rating=[3, 2, 5, 4], order=[900, 950, 800, 1000])
    assert items["original_id"].tolist() == [100, 200]
    assert items["title"].tolist() == ["Café Society (1995)", "Alien: Resurrection (1997)"]
    assert users[["user", "original_id", "age", "occupation"]].values.tolist() == [
        ["0", "5", "24", "technician"], ["1", "10", "23", "writer"]]
    assert meta["stats"]["rows_dropped_min_counts"] == 1


@pytest.mark.parametrize("variant", ["ml-1m", "ml-10m"])
def test_movielens_1m_layout(tmp_path, capsys, variant):
    src = ml1m_dir(tmp_path)
    arrays, meta, items, users = prepare_ok(capsys, "movielens", "--variant", variant, "--src", src,
                                            "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 2], item=[1, 0, 2, 1], rating=[3, 5, 2, 4], order=[100, 300, 200, 500])
    assert items.to_dict("list") == {
        "item": [0, 1, 2], "original_id": [10, 20, 30],
        "title": ["Café: The Movie (1999)", "Star Wars: Episode IV - A New Hope (1977)", "Foo: (2000)"],
        "genres": ["Comedy", "Action|Sci-Fi", "Drama"],
    }
    if variant == "ml-1m":
        assert users.to_dict("list") == {
            "user": ["0", "1", "2"], "original_id": ["1", "2", "3"], "gender": ["F", "M", "M"],
            "age": ["1", "56", "25"], "occupation": ["10", "16", "15"], "zip": ["48067", "70072", "55117"],
        }
    else:  # ml-10m has no users.dat
        assert users.columns.tolist() == ["user", "original_id"]


def test_movielens_title_ending_in_colon(tmp_path, capsys):
    # "31::Bar:::Drama" is title "Bar:" and genres "Drama" (splitting from the left would give
    # title "Bar" and genres ":Drama").
    src = ml1m_dir(tmp_path, ratings="1::31::4::10\n")
    _, _, items, _ = prepare_ok(capsys, "movielens", "--variant", "ml-1m", "--src", src, "--out", tmp_path / "out")
    assert items[["original_id", "title", "genres"]].values.tolist() == [[31, "Bar:", "Drama"]]


@pytest.mark.parametrize("variant", ["ml-20m", "ml-25m"])
def test_movielens_20m_csv_layout_in_zip(tmp_path, capsys, variant):
    src = ml20m_zip(tmp_path / f"{variant}.zip")
    arrays, meta, items, _ = prepare_ok(capsys, "movielens", "--variant", variant, "--src", src,
                                        "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1], item=[0, 1, 1], rating=[0.5, 3.5, 5.0],
                  order=[1112484676, 1112486027, 974820889])
    assert items.to_dict("list") == {"item": [0, 1], "original_id": [3, 5],
                                     "title": ["Heat, The (1995)", "Amélie (2001)"],
                                     "genres": ["Action|Crime", "Comedy|Romance"]}
    assert (meta["rating_min"], meta["rating_max"]) == (0.5, 5.0)
    [source] = meta["sources"]
    assert source["path"] == str(src) and source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert source["members"] == ["ml-20m/ratings.csv", "ml-20m/movies.csv"]


# ----------------------------------------------------------------------------------------------------
# Events (RetailRocket layout)

# Visitors 3, 7 -> dense 0, 1; items 55, 66 -> dense 0, 1. Sorted by (visitor, timestamp):
#   3: view 66 t900, view 55 t1500
#   7: view 55 t1000, view 55 t1001 (a repeated view), addtocart 55 t1002, transaction 55 t1003
EVENTS_CSV = ("timestamp,visitorid,event,itemid,transactionid\n1000,7,view,55,\n1001,7,view,55,\n"
              "1002,7,addtocart,55,\n1003,7,transaction,55,9\n900,3,view,66,\n1500,3,view,55,\n")


def test_events_default_weights_keep_repeats(tmp_path, capsys):
    src = write(tmp_path / "events.csv", EVENTS_CSV)
    arrays, meta, items, _ = prepare_ok(capsys, "events", "--src", src, "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 1, 1, 1], item=[1, 0, 0, 0, 0, 0], rating=[1, 1, 1, 1, 3, 5],
                  order=[900, 1500, 1000, 1001, 1002, 1003], event=[0, 0, 0, 0, 1, 2])
    assert arrays["event"].dtype == np.int8
    assert meta["event_types"] == ["view", "addtocart", "transaction"]
    assert meta["event_weights"] == {"view": 1.0, "addtocart": 3.0, "transaction": 5.0}
    assert meta["dedup"] == "none" and meta["positive_threshold"] == 1.0 and meta["order_kind"] == "timestamp"
    assert items["original_id"].tolist() == [55, 66]


def test_events_custom_weights_dedup_last_and_positives(tmp_path, capsys):
    src = write(tmp_path / "events.csv", EVENTS_CSV)
    # The weights' order fixes the codes: transaction=0, view=1, addtocart=2.
    arrays, meta, _, _ = prepare_ok(capsys, "events", "--src", src, "--weights", "transaction=10,view=0.5,addtocart=2",
                                    "--dedup", "last", "--out", tmp_path / "a")
    # "last" keeps visitor 7's latest row for item 55, the transaction.
    assert_arrays(arrays, user=[0, 0, 1], item=[1, 0, 0], rating=[0.5, 0.5, 10], order=[900, 1500, 1003],
                  event=[1, 1, 0])
    assert meta["event_types"] == ["transaction", "view", "addtocart"]
    # Rewards >= 3 with the default weights: only visitor 7's addtocart and transaction remain.
    arrays, meta, _, users = prepare_ok(capsys, "events", "--src", src, "--positive-threshold", 3,
                                        "--positives-only", "--out", tmp_path / "b")
    assert_arrays(arrays, user=[0, 0], item=[0, 0], rating=[3, 5], order=[1002, 1003], event=[1, 2])
    assert users["original_id"].tolist() == ["7"] and meta["stats"]["rows_dropped_not_positive"] == 4


def test_events_in_a_directory(tmp_path, capsys):
    write(tmp_path / "retailrocket" / "events.csv", EVENTS_CSV)
    arrays, _, _, _ = prepare_ok(capsys, "events", "--src", tmp_path / "retailrocket", "--out", tmp_path / "out")
    assert len(arrays["user"]) == 6


# ----------------------------------------------------------------------------------------------------
# Any table

# Users a, b -> dense 0, 1; items x, y, z -> dense 0, 1, 2. The pair (a, x) has three rows:
# score 3 at t10, score 5 at t20 and score 5 at t15. b's two rows tie at t7 and keep file order.
TABLE = [("a", "x", 3, 10), ("a", "y", 4, 5), ("a", "x", 5, 20), ("b", "x", 2, 7), ("a", "x", 5, 15), ("b", "z", 1, 7)]
TABLE_COLS = ["uid", "iid", "score", "ts"]
TABLE_ARGS = ["--user-col", "uid", "--item-col", "iid", "--rating-col", "score", "--time-col", "ts"]


def write_table(path: Path, rows=TABLE, columns=TABLE_COLS) -> Path:
    df = pd.DataFrame(rows, columns=columns)
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        df.to_parquet(path)
    elif suffix == ".npz":
        np.savez(path, **{c: np.asarray(df[c].tolist()) for c in df})  # strings as '<U' arrays, no pickles
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".npz"])
def test_table_layouts(tmp_path, capsys, suffix):
    src = write_table(tmp_path / f"t{suffix}")
    # Default dedup "last": (a, x) keeps score 5 at t20.
    arrays, meta, items, users = prepare_ok(capsys, "table", "--src", src, *TABLE_ARGS, "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 1], item=[1, 0, 0, 2], rating=[4, 5, 2, 1], order=[5, 20, 7, 7])
    assert items.to_dict("list") == {"item": [0, 1, 2], "original_id": ["x", "y", "z"]}
    assert users.to_dict("list") == {"user": ["0", "1"], "original_id": ["a", "b"]}
    assert meta["order_kind"] == "timestamp" and meta["dedup"] == "last"
    assert meta["sources"] == [{"path": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]


@pytest.mark.parametrize("policy, expected", [
    ("none", dict(user=[0, 0, 0, 0, 1, 1], item=[1, 0, 0, 0, 0, 2], rating=[4, 3, 5, 5, 2, 1], order=[5, 10, 15, 20, 7, 7])),
    ("first", dict(user=[0, 0, 1, 1], item=[1, 0, 0, 2], rating=[4, 3, 2, 1], order=[5, 10, 7, 7])),
    ("last", dict(user=[0, 0, 1, 1], item=[1, 0, 0, 2], rating=[4, 5, 2, 1], order=[5, 20, 7, 7])),
    # two rows score 5: the earlier by time (t15) is kept
    ("max", dict(user=[0, 0, 1, 1], item=[1, 0, 0, 2], rating=[4, 5, 2, 1], order=[5, 15, 7, 7])),
])
def test_table_dedup_policies(tmp_path, capsys, policy, expected):
    src = write_table(tmp_path / "t.csv")
    arrays, meta, _, _ = prepare_ok(capsys, "table", "--src", src, *TABLE_ARGS, "--dedup", policy, "--out", tmp_path / "out")
    assert_arrays(arrays, **expected)
    assert meta["stats"]["rows_dropped_duplicates"] == (0 if policy == "none" else 2)


def test_table_positives_only(tmp_path, capsys):
    # score >= 4 keeps (a, y, 4, t5), (a, x, 5, t20), (a, x, 5, t15); user b and item z vanish.
    src = write_table(tmp_path / "t.csv")
    arrays, meta, items, users = prepare_ok(capsys, "table", "--src", src, *TABLE_ARGS, "--dedup", "none",
                                            "--positive-threshold", 4, "--positives-only", "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 0], item=[1, 0, 0], rating=[4, 5, 5], order=[5, 15, 20])
    assert items["original_id"].tolist() == ["x", "y"] and users["original_id"].tolist() == ["a"]
    assert meta["positives_only"] is True and meta["positive_threshold"] == 4.0
    assert meta["stats"]["rows_dropped_not_positive"] == 3


def test_table_kcore_several_rounds_and_item_metadata(tmp_path, capsys):
    # min 2 per user and item. Round 1 drops items 11 and 15 (one row each); users 10 and 30 are
    # then left with one row each and go in round 2, taking item 13 with them. Survivors: users 20,
    # 40 and items 12, 14 -> dense 0, 1 (not a prefix of the original ids).
    rows = [(20, 12, 5, 1), (20, 14, 4, 2), (40, 12, 3, 3), (40, 14, 2, 4),
            (10, 11, 5, 5), (10, 13, 5, 6), (30, 13, 5, 7), (30, 15, 5, 8)]
    src = write_table(tmp_path / "t.csv", rows)
    meta_csv = write(tmp_path / "items.csv", 'item_id,Title,genres,extra\n11,Eleven,A,x\n12,Twelve,B,x\n13,Thirteen,C,x\n'
                                             '14,"Fourteen, with comma",D,x\n15,Fifteen,E,x\n16,Unused,F,x\n')
    arrays, meta, items, users = prepare_ok(capsys, "table", "--src", src, *TABLE_ARGS, "--items", meta_csv,
                                            "--min-user-interactions", 2, "--min-item-interactions", 2,
                                            "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1, 1], item=[0, 1, 0, 1], rating=[5, 4, 3, 2], order=[1, 2, 3, 4])
    assert items.to_dict("list") == {"item": [0, 1], "original_id": [12, 14],
                                     "title": ["Twelve", "Fourteen, with comma"], "genres": ["B", "D"]}
    assert users["original_id"].tolist() == ["20", "40"]
    assert meta["stats"]["rows_dropped_min_counts"] == 4
    assert [Path(s["path"]).name for s in meta["sources"]] == ["t.csv", "items.csv"]


def test_table_iso_datetimes(tmp_path, capsys):
    # 2020-01-01T00:00:00Z is 1577836800; a time without offset is UTC; +01:00 is one hour earlier.
    src = write(tmp_path / "t.csv", "user,item,when\n1,10,2020-01-01T00:00:10Z\n1,11,2020-01-01 00:00:05\n"
                                    "2,10,2020-01-01T01:00:00+01:00\n")
    arrays, meta, _, _ = prepare_ok(capsys, "table", "--src", src, "--user-col", "user", "--item-col", "item",
                                    "--time-col", "when", "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 1], item=[1, 0, 0], rating=[1, 1, 1], order=[1577836805, 1577836810, 1577836800])
    assert meta["order_kind"] == "timestamp"


def test_table_timezone_aware_parquet(tmp_path, capsys):
    when = pd.to_datetime(["2020-01-01 01:00:10", "2020-01-01 01:00:05"]).tz_localize("Europe/Berlin")
    src = tmp_path / "t.parquet"
    pd.DataFrame({"user": [1, 1], "item": [10, 11], "when": when}).to_parquet(src)
    arrays, _, _, _ = prepare_ok(capsys, "table", "--src", src, "--user-col", "user", "--item-col", "item",
                                 "--time-col", "when", "--out", tmp_path / "out")
    assert arrays["order"].tolist() == [1577836805, 1577836810] and arrays["item"].tolist() == [1, 0]


def test_table_order_col_and_file_order(tmp_path, capsys):
    src = write(tmp_path / "t.csv", "user,item,rank\n1,10,1\n1,11,0\n2,12,0\n")
    arrays, meta, _, _ = prepare_ok(capsys, "table", "--src", src, "--user-col", "user", "--item-col", "item",
                                    "--order-col", "rank", "--out", tmp_path / "a")
    assert_arrays(arrays, user=[0, 0, 1], item=[1, 0, 2], rating=[1, 1, 1], order=[0, 1, 0])
    assert meta["order_kind"] == "rank"
    # Neither --time-col nor --order-col: the file row is the order.
    arrays, meta, _, _ = prepare_ok(capsys, "table", "--src", src, "--user-col", "user", "--item-col", "item",
                                    "--out", tmp_path / "b")
    assert_arrays(arrays, user=[0, 0, 1], item=[0, 1, 2], order=[0, 1, 2])
    assert meta["order_kind"] == "rank"


def test_sasrec_lines_keep_their_order_and_the_last_line_is_the_test_target(tmp_path, capsys):
    """SASRec's ml-1m.txt format: 'user item' lines; a user's line order is its time (no timestamps), every
    line is an interaction, repeats are kept (--dedup none by default), and leave-last tests the last line."""
    src = write(tmp_path / "ml-1m.txt", "1 1\n1 2\n1 3\n2 4\n2 1\n2 4\n3 2\n3 1\n3 5\n")
    arrays, meta, _, _ = prepare_ok(capsys, "sasrec", "--src", src, "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 0, 1, 1, 1, 2, 2, 2], item=[0, 1, 2, 3, 0, 3, 1, 0, 4],
                  rating=[1] * 9, order=list(range(9)))
    assert meta["order_kind"] == "rank" and meta["dedup"] == "none" and meta["positive_threshold"] == 1.0
    assert meta["sources"] == [{"path": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.splits import leave_last_out

    inter, _, items = load_prepared(tmp_path / "out")
    split = leave_last_out(inter)
    # The original ids of each user's test and validation items: the file's last and second-to-last lines.
    item_ids = items["original_id"].to_numpy()
    assert item_ids[inter.item[split.test]].tolist() == [3, 4, 5]
    assert item_ids[inter.item[split.val]].tolist() == [2, 1, 1]


def test_error_sasrec_bad_line_is_named(tmp_path, capsys):
    src = write(tmp_path / "ml-1m.txt", "1 1\n1 2\n1 x\n")
    assert_input_error(capsys, tmp_path, ["sasrec", "--src", src],
                       f"error: {re.escape(str(src))}:3: expected two integer ids 'user item', got '1 x'")
    (tmp_path / "b").mkdir()
    src = write(tmp_path / "three.txt", "1 1\n1 2 7\n")
    assert_input_error(capsys, tmp_path / "b", ["sasrec", "--src", src],
                       f"error: {re.escape(str(src))}:2: expected two integer ids 'user item', got '1 2 7'")


SASREC_TEXT = "1 1\n1 2\n1 3\n2 4\n2 1\n"


def serve_sasrec_file(tmp_path, monkeypatch, text=SASREC_TEXT, good_digest=None):
    """Points the download at two file:// 'mirrors': the first missing, the second serving ``text``; the expected
    sha256 is ``text``'s unless ``good_digest`` is given. Returns the cache dir."""
    from data_prep import prepare

    served = write(tmp_path / "mirror" / "ml-1m.txt", text)
    missing = (tmp_path / "mirror" / "gone.txt").as_uri()
    monkeypatch.setattr(prepare, "SASREC_ML1M_URLS", (missing, served.as_uri()))
    monkeypatch.setattr(prepare, "SASREC_ML1M_SHA256", good_digest or hashlib.sha256(text.encode()).hexdigest())
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXREC_CACHE", str(cache))
    # The progress bar's lines would hide the one error line. (TQDM_DISABLE is read when tqdm is first imported,
    # which another test may have done already in this process.)
    import functools

    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, disable=True))
    return cache


def test_sasrec_without_src_downloads_the_checked_file_once(tmp_path, capsys, monkeypatch):
    cache = serve_sasrec_file(tmp_path, monkeypatch)
    arrays, meta, _, _ = prepare_ok(capsys, "sasrec", "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 0, 0, 1, 1], item=[0, 1, 2, 3, 0], order=list(range(5)))
    cached = cache / "sasrec-ml-1m.txt"
    assert cached.read_text() == SASREC_TEXT and not list(cache.glob("*.part"))
    assert meta["sources"][0]["path"] == str(cached)

    def no_network(*args, **kwargs):
        raise AssertionError("prepare.py downloaded a file it has in its cache")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    again, _, _, _ = prepare_ok(capsys, "sasrec", "--out", tmp_path / "out2")
    assert {k: v.tolist() for k, v in again.items()} == {k: v.tolist() for k, v in arrays.items()}


def test_error_sasrec_download_corrupt_or_unreachable(tmp_path, capsys, monkeypatch):
    wrong = "0" * 64
    cache = serve_sasrec_file(tmp_path, monkeypatch, good_digest=wrong)
    got = hashlib.sha256(SASREC_TEXT.encode()).hexdigest()
    part = re.escape(str(cache / "sasrec-ml-1m.txt.part"))
    assert_input_error(capsys, tmp_path, ["sasrec"], f"error: {part}: checksum mismatch: sha256 {got}, "
                       f"expected {wrong} \\(the download is corrupt; run again\\)")
    assert not (cache / "sasrec-ml-1m.txt").exists()

    from data_prep import prepare

    monkeypatch.setattr(prepare, "SASREC_ML1M_URLS", ((tmp_path / "a.txt").as_uri(), (tmp_path / "b.txt").as_uri()))
    (tmp_path / "c").mkdir()
    assert_input_error(capsys, tmp_path / "c", ["sasrec"],
                       "error: SASRec ml-1m.txt: download failed from every mirror: file://.*/a.txt \\(.*\\); "
                       "file://.*/b.txt \\(.*\\); pass --src with a local copy of SASRec's data/ml-1m.txt")


def test_table_blank_lines_are_skipped(tmp_path, capsys):
    src = write(tmp_path / "t.csv", "user,item\n1,10\n\n2,11\n\n")
    arrays, _, _, _ = prepare_ok(capsys, "table", "--src", src, "--user-col", "user", "--item-col", "item",
                                 "--out", tmp_path / "out")
    assert_arrays(arrays, user=[0, 1], item=[0, 1])


def test_matching_sha256_is_accepted(tmp_path, capsys):
    src = write_table(tmp_path / "t.csv")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    prepare_ok(capsys, "table", "--src", src, *TABLE_ARGS, "--sha256", digest.upper(), "--out", tmp_path / "out")


def test_success_replaces_existing_output(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    prepare_ok(capsys, "table", "--src", write_table(tmp_path / "t.csv"), *TABLE_ARGS, "--out", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["interactions.npz", "items.csv", "meta.json", "users.csv"]


# ----------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing overwritten


@pytest.mark.parametrize("case", ["headerless", "header", "after_blank_line"])
def test_error_non_numeric_value_names_line(tmp_path, capsys, case):
    if case == "headerless":  # u.data line 3
        src = ml100k_dir(tmp_path, "10\t200\t4\t1000\n5\t100\t3\t900\n10\t1x0\t5\t800\n")
        argv, label = ["movielens", "--variant", "ml-100k", "--src", src], src / "u.data"
        expected = f"error: {re.escape(str(label))}:3: column 'item' has non-numeric value '1x0', expected a number"
    else:  # t.csv: header on line 1, so the third data row is on line 4 (line 5 after a blank line)
        blank = "\n" if case == "after_blank_line" else ""
        label = write(tmp_path / "t.csv", f"uid,iid,score,ts\na,x,3,10\na,y,4,5\n{blank}a,z,abc,20\n")
        argv = ["table", "--src", label, *TABLE_ARGS]
        line = 5 if blank else 4
        expected = f"error: {re.escape(str(label))}:{line}: column 'score' has non-numeric value 'abc', expected a number"
    assert_input_error(capsys, tmp_path, argv, expected)


@pytest.mark.parametrize("case", ["ml-1m", "table", "events"])
def test_error_missing_value_names_line(tmp_path, capsys, case):
    if case == "ml-1m":  # ratings.dat line 2 has no rating
        src = ml1m_dir(tmp_path, "1::10::5::300\n1::20::::100\n")
        argv, label, line, col = ["movielens", "--variant", "ml-1m", "--src", src], src / "ratings.dat", 2, "rating"
    elif case == "table":  # line 3 (header + 2 rows) has no score
        label = write(tmp_path / "t.csv", "uid,iid,score,ts\na,x,3,10\na,y,,5\n")
        argv, line, col = ["table", "--src", label, *TABLE_ARGS], 3, "score"
    else:  # events line 4 has no item
        label = write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid\n1,7,view,55\n2,7,view,55\n3,7,view,\n")
        argv, line, col = ["events", "--src", label], 4, "itemid"
    expected = f"error: {re.escape(str(label))}:{line}: column '{col}' has a missing value, expected a number"
    assert_input_error(capsys, tmp_path, argv, expected)


def test_error_missing_id_in_table_names_line(tmp_path, capsys):
    label = write(tmp_path / "t.csv", "uid,iid,score,ts\na,x,3,10\n,y,4,5\n")
    assert_input_error(capsys, tmp_path, ["table", "--src", label, *TABLE_ARGS],
                       f"error: {re.escape(str(label))}:3: column 'uid' has a missing value, expected an id")


@pytest.mark.parametrize("case", ["table", "movielens_dir", "movielens_member", "items"])
def test_error_missing_file(tmp_path, capsys, case):
    if case == "table":
        missing = tmp_path / "nope.csv"
        argv, expected = ["table", "--src", missing, *TABLE_ARGS], f"error: {re.escape(str(missing))}: no such file"
    elif case == "movielens_dir":
        missing = tmp_path / "nowhere"
        argv = ["movielens", "--variant", "ml-100k", "--src", missing]
        expected = f"error: {re.escape(str(missing))}: no such file or directory"
    elif case == "movielens_member":  # a directory without ratings.dat
        d = tmp_path / "ml-1m"
        write(d / "movies.dat", MOVIES_DAT, "latin-1")
        argv = ["movielens", "--variant", "ml-1m", "--src", d]
        expected = f"error: {re.escape(str(d))}: missing file 'ratings.dat'"
    else:
        missing = tmp_path / "movies.dat"
        argv = ["table", "--src", write_table(tmp_path / "t.csv"), *TABLE_ARGS, "--items", missing]
        expected = f"error: {re.escape(str(missing))}: no such file"
    assert_input_error(capsys, tmp_path, argv, expected)


@pytest.mark.parametrize("case", ["table", "ml-20m", "events"])
def test_error_missing_column(tmp_path, capsys, case):
    if case == "table":
        label = write_table(tmp_path / "t.csv")
        argv = ["table", "--src", label, "--user-col", "uid", "--item-col", "iid", "--rating-col", "stars"]
        missing = "'stars'"
    elif case == "ml-20m":
        src = ml20m_zip(tmp_path / "ml-20m.zip", "userId,movieId,rating\n1,5,3.5\n")
        argv, label, missing = ["movielens", "--variant", "ml-20m", "--src", src], f"{src}!ml-20m/ratings.csv", "'timestamp'"
    else:
        label = write(tmp_path / "events.csv", "timestamp,visitorid,itemid\n1,7,55\n")
        argv, missing = ["events", "--src", label], "'event'"
    assert_input_error(capsys, tmp_path, argv, f"error: {re.escape(str(label))}: missing column {missing}; the columns are .*")


@pytest.mark.parametrize("case", ["u.data", "csv", "csv_header_only", "npz"])
def test_error_empty_file(tmp_path, capsys, case):
    if case == "u.data":
        src = ml100k_dir(tmp_path, "")
        argv, label, what = ["movielens", "--variant", "ml-100k", "--src", src], src / "u.data", "file is empty, expected rows"
    elif case == "csv":
        label = write(tmp_path / "t.csv", "")
        argv, what = ["table", "--src", label, *TABLE_ARGS], "file is empty, expected a header and rows"
    elif case == "csv_header_only":
        label = write(tmp_path / "t.csv", "uid,iid,score,ts\n")
        argv, what = ["table", "--src", label, *TABLE_ARGS], "file has no data rows, expected rows after the header"
    else:
        label = tmp_path / "t.npz"
        np.savez(label, uid=np.array([], str), iid=np.array([], str))
        argv, what = ["table", "--src", label, "--user-col", "uid", "--item-col", "iid"], "table has no rows, .*"
    assert_input_error(capsys, tmp_path, argv, f"error: {re.escape(str(label))}: {what}")


def test_error_truncated_zip(tmp_path, capsys):
    good = ml20m_zip(tmp_path / "good.zip").read_bytes()
    src = tmp_path / "ml-20m.zip"
    src.write_bytes(good[: len(good) // 2])
    assert_input_error(capsys, tmp_path, ["movielens", "--variant", "ml-20m", "--src", src],
                       f"error: {re.escape(str(src))}: not a readable zip archive .*truncated or corrupt")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_error_corrupt_zip_member(tmp_path, capsys, compression):
    # Flip bytes in the middle of ratings.csv's data: the CRC (or the deflate stream) fails.
    src = make_zip(tmp_path / "ml-20m.zip", {"ml-20m/ratings.csv": RATINGS_CSV * 50, "ml-20m/movies.csv": MOVIES_CSV},
                   compression)
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("ml-20m/ratings.csv")
    data = bytearray(src.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    src.write_bytes(bytes(data))
    assert_input_error(capsys, tmp_path, ["movielens", "--variant", "ml-20m", "--src", src],
                       f"error: {re.escape(str(src))}: corrupt zip archive: member ml-20m/ratings.csv cannot be read .*")


def test_error_sha256_mismatch(tmp_path, capsys):
    src = write_table(tmp_path / "t.csv")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    wrong = "0" * 64
    assert_input_error(capsys, tmp_path, ["table", "--src", src, *TABLE_ARGS, "--sha256", wrong],
                       f"error: {re.escape(str(src))}: checksum mismatch: sha256 {digest}, expected {wrong}")


def test_error_bad_archive_in_cache_needs_no_network(tmp_path, capsys, monkeypatch):
    # A well-formed zip with the wrong content: only the md5 check can tell.
    cache = tmp_path / "cache"
    cache.mkdir()
    files = ml100k_dir(tmp_path / "src")
    make_zip(cache / "ml-100k.zip", {f"ml-100k/{p.name}": p.read_bytes() for p in files.iterdir()})
    md5 = hashlib.md5((cache / "ml-100k.zip").read_bytes()).hexdigest()
    monkeypatch.setenv("JAXREC_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("prepare.py tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    archive = re.escape(str(cache / "ml-100k.zip"))
    assert_input_error(capsys, tmp_path, ["movielens", "--variant", "ml-100k"],
                       f"error: {archive}: checksum mismatch: md5 {md5}, expected 0e33842e24a9c977be4e0107933c0723 "
                       f"\\(delete {archive} to download it again\\)")


def test_error_unknown_event_type_names_line(tmp_path, capsys):
    src = write(tmp_path / "events.csv", EVENTS_CSV.replace("1002,7,addtocart", "1002,7,click"))
    assert_input_error(capsys, tmp_path, ["events", "--src", src],
                       f"error: {re.escape(str(src))}:4: unknown event type 'click', expected one of view, "
                       f"addtocart, transaction \\(set --weights\\)")


@pytest.mark.parametrize("weights, part", [
    ("view=1,addtocart=x", "addtocart=x"), ("view", "view"), ("=3", "=3"), ("view=nan", "view=nan"),
    ("view=1,,transaction=5", ""),
])
def test_error_bad_weights(tmp_path, capsys, weights, part):
    src = write(tmp_path / "events.csv", EVENTS_CSV)
    assert_input_error(capsys, tmp_path, ["events", "--src", src, "--weights", weights],
                       f"error: --weights: {re.escape(repr(part))} is not NAME=NUMBER; expected e\\.g\\. "
                       "view=1,addtocart=3,transaction=5")


def test_error_weights_name_twice(tmp_path, capsys):
    src = write(tmp_path / "events.csv", EVENTS_CSV)
    assert_input_error(capsys, tmp_path, ["events", "--src", src, "--weights", "view=1,view=2"],
                       "error: --weights: event type 'view' is given twice; expected each type once")


@pytest.mark.parametrize("case, line, what", [
    ("first_row_extra_field", 1, "too many fields, expected 4 fields"),
    ("later_row_extra_field", 3, "5 fields, expected 4"),
    ("ml1m_single_colon", 2, "expected 4 '::'-separated fields \\(user::item::rating::timestamp\\)"),
    ("ml1m_movies_short_row", 2, "expected 3 '::'-separated fields \\(original_id::title::genres\\)"),
])
def test_error_malformed_rows(tmp_path, capsys, case, line, what):
    if case.startswith("ml1m"):
        ratings = "1::10::5::300\n1:20::3::100\n" if case == "ml1m_single_colon" else RATINGS_DAT
        src = ml1m_dir(tmp_path, ratings)
        if case == "ml1m_movies_short_row":
            write(src / "movies.dat", "10::Heat (1995)::Action\n20::No genres (1990)\n")
        label = src / ("ratings.dat" if case == "ml1m_single_colon" else "movies.dat")
        argv = ["movielens", "--variant", "ml-1m", "--src", src]
    else:
        if case == "first_row_extra_field":
            rows = "5\t100\t3\t900\t7\n5\t200\t2\t950\n"
        else:
            rows = "5\t100\t3\t900\n5\t200\t2\t950\n7\t1\t1\t1\t1\n"
        src = ml100k_dir(tmp_path, rows)
        argv, label = ["movielens", "--variant", "ml-100k", "--src", src], src / "u.data"
    assert_input_error(capsys, tmp_path, argv, f"error: {re.escape(str(label))}:{line}: malformed row: {what}")


def test_error_rating_out_of_range(tmp_path, capsys):
    src = ml100k_dir(tmp_path, "5\t100\t3\t900\n5\t200\t9\t950\n")
    label = re.escape(str(src / "u.data"))
    assert_input_error(capsys, tmp_path, ["movielens", "--variant", "ml-100k", "--src", src],
                       f"error: {label}:2: column 'rating' has value 9, expected a value in \\[0.5, 5\\]")


def test_error_bad_datetime_names_line(tmp_path, capsys):
    src = write(tmp_path / "t.csv", "user,item,when\n1,10,2020-01-01T00:00:10Z\n1,11,2020-13-45\n")
    argv = ["table", "--src", src, "--user-col", "user", "--item-col", "item", "--time-col", "when"]
    assert_input_error(capsys, tmp_path, argv, f"error: {re.escape(str(src))}:3: column 'when' has '2020-13-45', "
                                               "expected a number or an ISO 8601 date-time")


@pytest.mark.parametrize("argv, expected", [
    (["table", "--src", "t.csv"], "error: prepare.py table: the following arguments are required: --user-col, --item-col"),
    (["table", "--src", "t.csv", "--user-col", "u", "--item-col", "i", "--dedup", "median"],
     "error: --dedup: invalid choice: 'median' .*"),
    (["table", "--src", "t.csv", "--user-col", "u", "--item-col", "i", "--positive-threshold", "nan"],
     "error: --positive-threshold: nan is not a finite number"),
])
def test_error_bad_flags_are_one_line(tmp_path, capsys, argv, expected):
    assert_input_error(capsys, tmp_path, argv, expected)


def test_error_when_nothing_survives_filtering(tmp_path, capsys):
    src = write_table(tmp_path / "t.csv")
    assert_input_error(capsys, tmp_path, ["table", "--src", src, *TABLE_ARGS, "--min-user-interactions", 10],
                       "error: --out: no interactions left after filtering; .*")


def test_script_exit_status_and_traceback_only_with_debug(tmp_path):
    missing = tmp_path / "nope.csv"
    cmd = [sys.executable, "data_prep/prepare.py", "table", "--src", str(missing), "--user-col", "u",
           "--item-col", "i", "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: {missing}: no such file"]
    r = subprocess.run(cmd + ["--debug"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in r.stderr and "InputError" in r.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# Real data (../shared/data, see its PROVENANCE.md)

needs_ml1m = pytest.mark.skipif(not (SHARED_DATA / "ml-1m" / "derived" / "ml-1m_ratings_ordered.npz").is_file(),
                                reason=f"real ML-1M data not found under {SHARED_DATA}")
needs_ml100k = pytest.mark.skipif(not (SHARED_DATA / "ml-100k" / "u.data").is_file(),
                                  reason=f"real ML-100K data not found under {SHARED_DATA}")


def check_contracts(d: Path):
    if not CHECKER.is_file():
        return
    r = subprocess.run([sys.executable, str(CHECKER), "data", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@needs_ml1m
def test_real_ml1m_ordered_table(tmp_path, capsys):
    ml1m = SHARED_DATA / "ml-1m"
    out = tmp_path / "ml-1m"
    arrays, meta, items, _ = prepare_ok(
        capsys, "table", "--src", ml1m / "derived" / "ml-1m_ratings_ordered.npz", "--user-col", "user_id",
        "--item-col", "movie_id", "--rating-col", "rating", "--order-col", "order_in_user",
        "--items", ml1m / "movies.dat", "--out", out)
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (6040, 3706, 1_000_209)
    assert np.bincount(arrays["rating"].astype(int), minlength=6)[1:].tolist() == [56174, 107557, 261197, 348971, 226310]
    assert meta["order_kind"] == "rank"
    # User 1 (dense 0) watched 3186, 1721, 1022, 1270, 2340 first (PROVENANCE.md).
    first = arrays["item"][arrays["user"] == 0][:5]
    assert items["original_id"].to_numpy()[first].tolist() == [3186, 1721, 1022, 1270, 2340]
    assert items.loc[items["original_id"] == 1, "title"].item() == "Toy Story (1995)"
    assert (items["title"] != "").all()
    check_contracts(out)


@needs_ml100k
def test_real_ml100k_directory_and_zip(tmp_path, capsys):
    src = SHARED_DATA / "ml-100k"
    out = tmp_path / "from-dir"
    arrays, meta, items, users = prepare_ok(capsys, "movielens", "--variant", "ml-100k", "--src", src, "--out", out)
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (943, 1682, 100_000)
    assert np.bincount(arrays["rating"].astype(int), minlength=6)[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    assert all(s.get("known_good") for s in meta["sources"])
    # The file's first line, 196 242 3 881250949: ids 1..943 and 1..1682 are all present, so the
    # dense ids are 195 and 241.
    assert users["original_id"][195] == "196" and items["original_id"][241] == 242
    assert items["title"][241] == "Kolya (1996)" and items["genres"][241] == "Comedy"
    hit = (arrays["user"] == 195) & (arrays["item"] == 241) & (arrays["order"] == 881250949)
    assert hit.sum() == 1 and arrays["rating"][hit].item() == 3.0
    assert arrays["order"].min() == 874724710 and arrays["order"].max() == 893286638
    check_contracts(out)

    archive = tmp_path / "ml-100k.zip"
    make_zip(archive, {f"ml-100k/{p.name}": p.read_bytes() for p in src.iterdir() if p.is_file()})
    zipped, zmeta, zitems, zusers = prepare_ok(capsys, "movielens", "--variant", "ml-100k", "--src", archive,
                                               "--out", tmp_path / "from-zip")
    for key in ("user", "item", "rating", "order"):
        np.testing.assert_array_equal(zipped[key], arrays[key])
    pd.testing.assert_frame_equal(zitems, items)
    pd.testing.assert_frame_equal(zusers, users)
    assert zmeta["sources"][0]["path"] == str(archive)
    check_contracts(tmp_path / "from-zip")


def test_error_in_npz_names_the_row(tmp_path, capsys):
    # npz and parquet have no lines: the error names the 0-based row instead.
    src = tmp_path / "t.npz"
    np.savez(src, uid=np.array([1, 2, 3]), iid=np.array([4, 5, 6]), score=np.array([1.0, np.nan, 3.0]))
    argv = ["table", "--src", src, "--user-col", "uid", "--item-col", "iid", "--rating-col", "score"]
    assert_input_error(capsys, tmp_path, argv,
                       f"error: {re.escape(str(src))}: column 'score' has a missing value at row 1, expected a number")


# ----------------------------------------------------------------------------------------------------
# Big numeric tables are read chunk by chunk (data_prep.common._read_numeric_chunked): the frame, or
# the error, must be exactly what the whole-file parse gives. Sampling 2 rows instead of 10,000 puts
# the odd values of these small files after the sample.


def read_twice(monkeypatch, data, **kw):
    """(frame with the chunked path allowed, frame with it off, whether the chunked read was kept).

    ``data``: a path, or a function opening a fresh file object. A frame is an ``InputError`` when
    reading raised one."""
    sep = kw.pop("sep", ",")

    def read(sniff_rows):
        monkeypatch.setattr(common, "_SNIFF_ROWS", sniff_rows)
        try:
            return common.read_delimited(data() if callable(data) else data, "t", sep, **kw)
        except InputError as e:
            return e
    calls = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: calls.append(k.get("low_memory")) or real(*a, **k))
    whole = read(0)
    calls.clear()
    chunked = read(2)
    return chunked, whole, calls[-1:] == [True]


def assert_same_read(chunked, whole):
    if isinstance(whole, InputError):
        assert isinstance(chunked, InputError) and str(chunked) == str(whole)
    else:
        pd.testing.assert_frame_equal(chunked, whole, check_exact=True)
        assert list(chunked.dtypes) == list(whole.dtypes) and chunked.index.equals(whole.index)


HEAD = "u,i,r,t\n1,10,3.5,100\n2,11,4,101\n"


@pytest.mark.parametrize("tail, kept", [
    ("3,12,2.5,102\n", True),                      # all numeric: the chunked read is kept
    ("\n3,12,2.5,102\n\n", False),                 # blank lines: rows of NaN, so 'u' is float64
    ("3,12,,102\n", True),                         # a missing float: NaN either way
    ("3,12,inf,102\n", True),
    ("3.0,12,2.5,102\n", False),                   # "3.0": a whole-file parse makes 'u' float64
    ("1e3,12,2.5,102\n", False),
    (",12,2.5,102\n", False),                      # a missing int: 'u' becomes float64
    ("18446744073709551615,12,2.5,102\n", False),  # uint64
    ("x,12,2.5,102\n", False),                     # a string id: all values strings
    ("3,12,abc,102\n", False),                     # a non-numeric float: all values strings
    ("3,12,2.5,102,9\n", False),                   # too many fields: the same error and line
])
def test_chunked_read_equals_whole_file_parse(tmp_path, monkeypatch, tail, kept):
    path = write(tmp_path / "t.csv", HEAD + tail)
    chunked, whole, used = read_twice(monkeypatch, path)
    assert_same_read(chunked, whole)
    assert used == kept


def test_chunked_read_of_file_objects_and_headerless_files(tmp_path, monkeypatch):
    text = "1\t10\t3\t100\n\n2\t11\t4.5\t101\n3\t12\t2\t102\n"
    path = write(tmp_path / "u.data", text)
    archive = make_zip(tmp_path / "a.zip", {"d/u.data": text})
    names = ["user", "item", "rating", "timestamp"]
    for data in (path, lambda: open(path, "rb"), lambda: zipfile.ZipFile(archive).open("d/u.data")):
        chunked, whole, used = read_twice(monkeypatch, data, sep="\t", header=False, names=names)
        assert_same_read(chunked, whole)
        assert used


@pytest.mark.parametrize("odd", [None, "7.0", "x"])
def test_chunked_read_of_a_big_file_rejects_chunks_of_mixed_types(tmp_path, monkeypatch, odd):
    # 400k rows, 6.4 MB: from a file object pandas converts ~131k rows per chunk, from a path of over
    # 5 MB (pandas >= 3.1) it parses byte ranges in parallel; each chunk gets its own dtypes. An int
    # column with "7.0" (or a string) in the last chunk only: int64 + float64 (or + str) chunks,
    # which must not pass for the whole-file parse (float64, or all strings).
    rows = 400_000
    body = "".join(f"{k % 97},{k % 89},{k % 10 / 2 + 0.5},{1_000_000 + k}\n" for k in range(rows))
    path = write(tmp_path / "t.csv", "u,i,r,t\n" + body + ("" if odd is None else f"{odd},1,2.5,7\n"))
    assert path.stat().st_size > 6e6
    for data in (path, lambda: open(path, "rb")):
        chunked, whole, used = read_twice(monkeypatch, data)
        assert used == (odd is None)
        assert_same_read(chunked, whole)
    if odd is not None:
        assert whole["u"].dtype == np.float64 if odd == "7.0" else pd.api.types.is_string_dtype(whole["u"])


def test_error_after_the_sample_rows_names_its_line(tmp_path, capsys, monkeypatch):
    # Line 5 (header, then the 4th row) is past a 2-row sample: the chunked read fails ('abc'), or
    # is kept with a NaN (the missing rating), and either way the error names the line.
    monkeypatch.setattr(common, "_SNIFF_ROWS", 2)
    argv = ["--user-col", "u", "--item-col", "i", "--rating-col", "r", "--time-col", "t"]
    src = write(tmp_path / "a" / "bad.csv", HEAD + "3,12,2.5,102\n4,13,abc,103\n")
    assert_input_error(capsys, tmp_path / "a", ["table", "--src", src, *argv],
                       f"error: {re.escape(str(src))}:5: column 'r' has non-numeric value 'abc', expected a number")
    src = write(tmp_path / "b" / "missing.csv", HEAD + "3,12,2.5,102\n4,13,,103\n")
    assert_input_error(capsys, tmp_path / "b", ["table", "--src", src, *argv],
                       f"error: {re.escape(str(src))}:5: column 'r' has a missing value, expected a number")


@pytest.mark.parametrize("kind", ["blocks", "chains"])
def test_synthetic_source_writes_the_planted_data_reproducibly(tmp_path, kind):
    """``prepare.py synthetic``: the generator's rows exactly (no download, no dedup of revisited items), the
    same seed gives identical files, another seed other data, and a bad flag one error line."""
    from data_prep import synthetic
    from data_prep.prepare import main as prepare_main
    from jaxrec.data.prepared import load_prepared

    args = ["synthetic", "--kind", kind, "--users", "50"]
    assert prepare_main(args + ["--out", str(tmp_path / "a")]) == 0
    assert prepare_main(args + ["--out", str(tmp_path / "b")]) == 0
    assert prepare_main(args + ["--seed", "1", "--out", str(tmp_path / "c")]) == 0
    inter, meta, _ = load_prepared(tmp_path / "a")
    rows = (synthetic.planted_blocks if kind == "blocks" else synthetic.planted_chains)(n_users=50, seed=0)[0]
    assert len(inter) == len(rows) and meta["synthetic"] == {"kind": kind, "users": 50, "seed": 0}
    np.testing.assert_array_equal(np.sort(inter.rating), np.sort(rows[:, 2].astype(np.float32)))
    assert (tmp_path / "a" / "interactions.npz").read_bytes() == (tmp_path / "b" / "interactions.npz").read_bytes()
    assert (tmp_path / "a" / "interactions.npz").read_bytes() != (tmp_path / "c" / "interactions.npz").read_bytes()
    assert prepare_main(["synthetic", "--users", "0", "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()
