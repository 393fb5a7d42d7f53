"""data_prep/sasrec_order.py: recovers SASRec's renumbering of a data set from the data alone and counts where
the two orders differ (planted renumbering and swaps, hand-counted shares)."""
import json

import numpy as np
import pytest

from data_prep import sasrec_order
from tests.helpers import synthetic_interactions, write_prepared

SWAP_LAST = 7  # users whose last two items SASRec's copy swaps: validation and test targets differ
SWAP_EARLIER = 4  # users whose 2nd- and 3rd-to-last items it swaps: only the validation target differs


@pytest.fixture
def planted(tmp_path):
    inter = synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=5)
    data = write_prepared(inter, tmp_path / "data")
    rng = np.random.default_rng(0)
    new_user = rng.permutation(inter.n_users) + 1  # SASRec's ids: 1-based, shuffled
    new_item = rng.permutation(inter.n_items) + 1
    lines = []
    for u in range(inter.n_users):
        seq = inter.item[inter.user == u][np.argsort(inter.order[inter.user == u], kind="stable")].tolist()
        if u < SWAP_LAST:
            seq[-1], seq[-2] = seq[-2], seq[-1]
        elif u < SWAP_LAST + SWAP_EARLIER:
            seq[-2], seq[-3] = seq[-3], seq[-2]
        lines += [f"{new_user[u]} {new_item[i]}\n" for i in seq]
    order = rng.permutation(inter.n_users)  # SASRec's file lists users in its own order
    by_user = {}
    for line in lines:
        by_user.setdefault(int(line.split()[0]), []).append(line)
    sas = tmp_path / "ml.txt"
    sas.write_text("".join(line for u in order for line in by_user[new_user[u]]))
    return inter, data, sas, new_user, new_item


def test_renumbering_is_recovered_and_the_differences_counted(planted, tmp_path, capsys):
    inter, data, sas, new_user, new_item = planted
    report = sasrec_order.main_args(["--sasrec", str(sas), "--data", str(data), "--json", str(tmp_path / "r.json")])
    # write_prepared's original ids: user u -> u + 1, item i -> i + 100.
    assert report["user_map"] == {int(new_user[u]): u + 1 for u in range(inter.n_users)}
    assert report["item_map"] == {int(new_item[i]): i + 100 for i in range(inter.n_items)}
    assert report["users"] == inter.n_users and report["ratings"] == len(inter.user)
    assert report["test_target_differs"] == pytest.approx(SWAP_LAST / inter.n_users)
    assert report["validation_target_differs"] == pytest.approx((SWAP_LAST + SWAP_EARLIER) / inter.n_users)
    assert report["positions_differ"] == pytest.approx(2 * (SWAP_LAST + SWAP_EARLIER) / len(inter.user))
    assert json.loads((tmp_path / "r.json").read_text())["users"] == inter.n_users
    assert "matched: 60 of 60 users, 40 of 40 items" in capsys.readouterr().out


def test_other_data_is_refused_by_name(planted, tmp_path, capsys):
    inter, data, sas, _, _ = planted
    n = len(inter.user)
    short = tmp_path / "short.txt"
    short.write_text("".join(sas.read_text().splitlines(keepends=True)[:-1]))
    assert sasrec_order.main(["--sasrec", str(short), "--data", str(data)]) == 2
    assert f"{data}: {n:,} interactions against {n - 1:,} in {short}: not the same ratings" in capsys.readouterr().err
