import numpy as np
import pytest

from experiments.recommend import main, recommend
from experiments.run import main as run_main
from tests.helpers import synthetic_interactions, write_prepared


@pytest.fixture(scope="module")
def popularity_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    inter = synthetic_interactions(n_users=50, n_items=30)
    data = write_prepared(inter, root / "data")
    assert run_main(["--exp=popularity", "--data", str(data), "--run-dir", str(root / "run"),
                     "--set", "data.split.scheme=leave_last"]) == 0
    return inter, root / "run"


def test_recommend_excludes_history_and_ranks_by_popularity(popularity_run):
    inter, run = popularity_run
    from jaxrec.data.splits import leave_last_out

    split = leave_last_out(inter)
    counts = np.bincount(inter.item[split.train], minlength=inter.n_items)
    seen = set(inter.item[inter.user == 3])
    expected = [i for i in np.argsort(-counts, kind="stable") if i not in seen][:4]
    out = recommend(run, "4", 4)  # write_prepared maps user u to original id u + 1
    assert out["item"].tolist() == expected
    assert out["original_id"].tolist() == [i + 100 for i in expected]
    assert not set(out["item"]) & seen


def test_recommend_bad_input(popularity_run, tmp_path, capsys):
    _, run = popularity_run
    assert main(["--run-dir", str(run), "--user", "nobody"]) == 2
    assert "no user with original id 'nobody'" in capsys.readouterr().err
    assert main(["--run-dir", str(tmp_path), "--user", "1"]) == 2
    assert "config.json: missing" in capsys.readouterr().err
