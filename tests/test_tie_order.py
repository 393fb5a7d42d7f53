"""data_prep/tie_order.py: same-second ties of a log against a prepared order, on a log with a planted tie order."""
import json

import numpy as np
import pytest

from data_prep import prepare, tie_order


def planted_log(tmp_path, n_users=40, n_items=60, seed=0):
    """ratings.dat whose ties follow one global ranking of the items (as ML-1M's lines do), its lines in a
    per-user shuffled order (ratings.dat is not time-sorted), and the same ratings as a csv."""
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n_items)  # the global order of ties
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, size=rng.integers(12, 25), replace=False)
        seconds = np.sort(rng.choice(1000, size=len(items) // 3 + 1, replace=False))
        t = seconds[np.sort(rng.integers(0, len(seconds), size=len(items)))]
        by_time = np.lexsort((rank[items], t))  # time, then the global order within a second
        items, t = items[by_time], t[by_time]
        # ratings.dat's lines are not time-sorted: random line positions, except that the lines of one second
        # keep the global order among themselves.
        key = rng.random(len(items))
        for second in np.unique(t):
            group = np.flatnonzero(t == second)
            key[group] = np.sort(key[group])
        rows += [(u, int(items[k]) + 1, int(rng.integers(1, 6)), int(t[k])) for k in np.argsort(key)]
    d = tmp_path / "log"
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (d / "ratings.csv").write_text("user,item,rating,ts\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return d, np.array(rows)


def test_majority_consistency_hand_computed():
    # Pair {1, 2} seen three times (twice ascending), pair {3, 4} once (not counted): 2 of 3 agree with the
    # majority; three random directions agree with theirs E[max(X, 3 - X)] = (3 + 3*2 + 3*2 + 3) / 8 = 2.25 of 3.
    share, chance, n = tie_order.majority_consistency(np.array([1, 1, 2, 3]), np.array([2, 2, 1, 4]))
    assert (share, chance, n) == (pytest.approx(2 / 3), pytest.approx(0.75), 3)


def test_line_order_against_stable_and_shuffled_preparations(tmp_path):
    log_dir, rows = planted_log(tmp_path)
    # Prepared with the timestamps: prepare.py's stable sort keeps the log's line order within a second.
    stable = tmp_path / "stable"
    prepare.prepare(["table", "--src", str(log_dir / "ratings.csv"), "--user-col", "user", "--item-col", "item",
                     "--rating-col", "rating", "--time-col", "ts", "--out", str(stable)])
    r = tie_order.main_args(["--log", str(log_dir / "ratings.dat"), "--data", str(stable),
                             "--json", str(tmp_path / "r.json")])
    assert r == json.loads((tmp_path / "r.json").read_text())
    assert r["users"] == 40 and r["users_left_out"] == 0 and r["ratings"] == len(rows)
    assert r["positions_differ"] == 0 and r["test_target_differs"] == 0 and r["validation_target_differs"] == 0
    assert r["tied"] > 0.5
    assert r["log_line_order"]["consistency"] == 1.0 == r["data_order"]["consistency"]
    assert r["log_line_order"]["consistency_if_random"] < 0.9

    # Prepared from a per-user rank that orders each second's ties at random (the shared ML-1M order's kind).
    rng = np.random.default_rng(1)
    u, i, rating, t = rows.T
    order = np.lexsort((rng.random(len(rows)), t, u))
    rank = np.empty(len(rows), np.int64)
    for user in np.unique(u):
        mine = order[u[order] == user]
        rank[mine] = np.arange(len(mine))
    np.savez(tmp_path / "shuffled.npz", user=u, item=i, rating=rating, rank=rank)
    shuffled = tmp_path / "shuffled"
    prepare.prepare(["table", "--src", str(tmp_path / "shuffled.npz"), "--user-col", "user", "--item-col", "item",
                     "--rating-col", "rating", "--order-col", "rank", "--out", str(shuffled)])
    r = tie_order.main_args(["--log", str(log_dir), "--data", str(shuffled)])
    assert 0.2 < r["positions_differ"] < 0.9
    assert r["log_line_order"]["consistency"] == 1.0
    data = r["data_order"]
    assert abs(data["consistency"] - data["consistency_if_random"]) < 0.1 < 1.0 - data["consistency"]


def test_bad_log_line_named(tmp_path, capsys):
    log_dir, _ = planted_log(tmp_path, n_users=3)
    lines = (log_dir / "ratings.dat").read_text().splitlines()
    lines[4] = "2::17::4"
    (log_dir / "ratings.dat").write_text("\n".join(lines) + "\n")
    assert tie_order.main(["--log", str(log_dir / "ratings.dat"), "--data", str(tmp_path)]) == 2
    assert "ratings.dat:5: column 'timestamp' has a missing value" in capsys.readouterr().err


def test_prepare_ties_shuffle(tmp_path):
    """--ties shuffle: each second's ratings in a seeded random order (time order kept, the same seed the same
    order, another seed another), which removes the log's global tie order; meta.json records the policy."""
    log_dir, rows = planted_log(tmp_path)
    from jaxrec.data.prepared import load_prepared

    def prepared(name, *extra):
        out = tmp_path / name
        prepare.prepare(["table", "--src", str(log_dir / "ratings.csv"), "--user-col", "user", "--item-col", "item",
                         "--rating-col", "rating", "--time-col", "ts", "--out", str(out), *extra])
        inter, meta, _ = load_prepared(out)
        return out, inter, meta

    _, file_order, meta = prepared("file")
    assert meta["ties"] == "file" and "ties_seed" not in meta
    out, a, meta = prepared("a", "--ties", "shuffle", "--ties-seed", "3")
    assert meta["ties"] == "shuffle" and meta["ties_seed"] == 3
    _, b, _ = prepared("b", "--ties", "shuffle", "--ties-seed", "3")
    _, c, _ = prepared("c", "--ties", "shuffle", "--ties-seed", "4")
    assert np.array_equal(a.item, b.item) and not np.array_equal(a.item, c.item)
    for inter in (a, c):  # the same rows, users and times; only the order within a second moved
        assert np.array_equal(inter.user, file_order.user) and np.array_equal(inter.order, file_order.order)
        assert not np.array_equal(inter.item, file_order.item)
    r = tie_order.main_args(["--log", str(log_dir), "--data", str(out)])
    assert r["positions_differ"] > 0.2 and r["log_line_order"]["consistency"] == 1.0
    assert abs(r["data_order"]["consistency"] - r["data_order"]["consistency_if_random"]) < 0.1


def test_original_ids_of_a_prepared_directory(tmp_path):
    """common.original_ids: the log's own ids per prepared interaction; without users.csv an error naming the
    directory when required (tie_order.py), the dense ids otherwise (sasrec_order.py)."""
    from data_prep.common import original_ids
    from jaxrec.data.prepared import load_prepared
    from jaxrec.errors import InputError

    log_dir, rows = planted_log(tmp_path, n_users=5)
    out = tmp_path / "prepared"
    prepare.prepare(["table", "--src", str(log_dir / "ratings.csv"), "--user-col", "user", "--item-col", "item",
                     "--rating-col", "rating", "--time-col", "ts", "--out", str(out)])
    inter, _, items = load_prepared(out)
    user, item = original_ids(out, inter, items, required=True)
    assert user.dtype == item.dtype == np.int64
    assert sorted(zip(user.tolist(), item.tolist())) == sorted(map(tuple, rows[:, :2].tolist()))
    assert (user[1:] >= user[:-1]).all()  # in the prepared (user, time) order, not the log's line order

    (out / "users.csv").unlink()
    with pytest.raises(InputError, match="needs items.csv and users.csv"):
        original_ids(out, inter, items, required=True)
    user, item = original_ids(out, inter, items, required=False)
    assert user.tolist() == np.asarray(inter.user).tolist() and item.tolist() == np.asarray(inter.item).tolist()
