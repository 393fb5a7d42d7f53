"""End-to-end runs of the sequential experiments (m3s_tdlambda, sqn, sasrec, gru4rec, popularity_seq) and
hand checks of their next-item protocol."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.sequential import configs, trainer as seq_trainer
from experiments.run import main
from jaxrec import config as C
from jaxrec.data.sequences import next_item_queries
from jaxrec.errors import ConfigError
from jaxrec.eval import next_item
from tests.helpers import REPO, make_interactions, synthetic_interactions, write_prepared

CHECKER = REPO.parent / "shared" / "tools" / "check_contracts.py"
USERS = ["--set", "data.split.scheme=users", "data.split.heldout_visible=5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=7),
                          tmp_path_factory.mktemp("seq") / "syn", positive_threshold=1.0)


def check_contract(run_dir):
    if not CHECKER.exists():
        return
    res = subprocess.run([sys.executable, str(CHECKER), "run", str(run_dir)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def final(run_dir) -> dict:
    out = json.loads((run_dir / "final.json").read_text())
    out.pop("wall_s")
    return out


class Interrupt(Exception):
    pass


def test_m3s_quick_end_to_end_and_exact_resume(data_dir, tmp_path, monkeypatch, capsys):
    args = ["--exp=m3s_tdlambda", "--quick", "--data", str(data_dir), *USERS, "eval.protocols=next_item,drr"]
    straight = tmp_path / "straight"
    assert main(args + ["--run-dir", str(straight)]) == 0
    check_contract(straight)
    f = final(straight)
    assert f["updates"] == 12 and f["samples"] > 0 and f["split"] == "users"
    assert set(f["test"]) == {"next_item", "drr"} and set(f["test"]["next_item"]) >= {"hr@5", "ndcg@40"}
    assert all(0.0 <= v <= 1.0 for v in f["test"]["next_item"].values())
    assert (straight / "plots" / "metrics.png").stat().st_size > 0

    resumed = tmp_path / "resumed"
    original = seq_trainer.SequentialTrainer.train

    def crashing(self, state, n_steps):
        if int(state.step) >= 7:
            raise Interrupt
        return original(self, state, n_steps)

    monkeypatch.setattr(seq_trainer.SequentialTrainer, "train", crashing)
    with pytest.raises(Interrupt):
        main(args + ["--run-dir", str(resumed)])
    monkeypatch.setattr(seq_trainer.SequentialTrainer, "train", original)
    capsys.readouterr()
    assert main(args + ["--run-dir", str(resumed)]) == 0
    assert "resuming from step 6" in capsys.readouterr().out
    assert final(resumed) == f
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
             for line in (straight / "metrics.jsonl").read_text().splitlines()]
    again = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
             for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert strip == again


def counting_make_train(traces: list):
    """``seq_trainer.make_train`` whose training step appends its model's repr to ``traces`` when traced."""
    real = seq_trainer.make_train

    def counting(m, network, *rest):
        init, train = real(m, network, *rest)

        def counted(*args):
            traces.append(repr(m))  # runs once per trace, never per call of the compiled step
            return train(*args)

        return init, counted

    return counting


@pytest.fixture(scope="module")
def sqn_quick(data_dir, tmp_path_factory):
    """The quick sqn run, shared by test_quick_runs_of_the_other_agents[sqn] and
    test_each_run_builds_and_traces_its_own_training_step: (its run directory, the models whose training
    step it traced, one entry per trace)."""
    traces = []
    run_dir = tmp_path_factory.mktemp("sqn") / "sqn"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seq_trainer, "make_train", counting_make_train(traces))
        assert main(["--exp=sqn", "--quick", "--data", str(data_dir), "--run-dir", str(run_dir), *USERS]) == 0
    return run_dir, traces


@pytest.mark.parametrize("exp", ["sqn", "sasrec", "gru4rec"])
def test_quick_runs_of_the_other_agents(exp, data_dir, tmp_path, request):
    if exp == "sqn":
        run_dir = request.getfixturevalue("sqn_quick")[0]
    else:
        run_dir = tmp_path / exp
        assert main([f"--exp={exp}", "--quick", "--data", str(data_dir), "--run-dir", str(run_dir), *USERS]) == 0
    check_contract(run_dir)
    f = final(run_dir)
    assert f["exp"] == exp and f["updates"] == 12 and f["samples"] > 0
    assert all(0.0 <= v <= 1.0 for v in f["test"]["next_item"].values())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss_sup"] for x in lines if "loss_sup" in x]
    assert len(losses) == 4 and all(np.isfinite(losses))


def _popularity_hits_by_hand(data_dir, ks=(5, 10), events=None, min_rating=None):
    """{k: HR@k} of popularity_seq on the users split's test users, computed query by query.

    ``events``: only targets whose event code is in it (a click or purchase group); ``min_rating``: only
    targets rated at least that."""
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.splits import user_split

    inter, _, _ = load_prepared(data_dir)
    split = user_split(inter, (0.8, 0.1, 0.1), seed=0)
    counts = np.bincount(inter.item[split.train], minlength=inter.n_items)
    hits = {k: 0 for k in ks}
    n = 0
    for u in np.unique(inter.user[split.test]):
        rows = np.flatnonzero(inter.user == u)
        items = list(inter.item[rows])
        for p in range(5, len(items)):  # the first 5 are visible context, every later row is a query
            seen = set(items[:p])
            if items[p] in seen or (events is not None and inter.event[rows[p]] not in events):
                continue
            if min_rating is not None and inter.rating[rows[p]] < min_rating:
                continue
            ranking = [i for i in np.argsort(-counts, kind="stable") if i not in seen]
            rank = ranking.index(items[p])
            n += 1
            for k in hits:
                hits[k] += rank < k
    assert n > 0
    return {k: hits[k] / n for k in hits}


def test_popularity_seq_matches_a_hand_computed_next_item_hr(data_dir, tmp_path):
    run_dir = tmp_path / "pop"
    assert main(["--exp=popularity_seq", "--data", str(data_dir), "--run-dir", str(run_dir), *USERS]) == 0
    check_contract(run_dir)
    f = final(run_dir)
    assert "by_event" not in f  # no event types in this data
    for k, hr in _popularity_hits_by_hand(data_dir).items():
        assert f["test"]["next_item"][f"hr@{k}"] == pytest.approx(hr)


def test_every_held_out_interaction_is_a_query_unless_relevant_only_is_asked(tmp_path):
    """The next-item protocol does not depend on the data's positive threshold (as the seed): with ratings
    1-5 and threshold 4 every held-out interaction is a query; eval_targets=relevant keeps rating >= 4."""
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=7),
                          tmp_path / "r4", positive_threshold=4.0)
    for targets, min_rating in (("all", None), ("relevant", 4.0)):
        run_dir = tmp_path / targets
        assert main(["--exp=popularity_seq", "--data", str(data), "--run-dir", str(run_dir), *USERS,
                     f"model.eval_targets={targets}"]) == 0
        f = final(run_dir)
        for k, hr in _popularity_hits_by_hand(data, min_rating=min_rating).items():
            assert f["test"]["next_item"][f"hr@{k}"] == pytest.approx(hr)
    assert _popularity_hits_by_hand(data) != _popularity_hits_by_hand(data, min_rating=4.0)


def test_event_data_reports_click_and_purchase_targets_apart(tmp_path):
    """On event data the final metrics also come per event type (SQN papers' click / purchase HR and NDCG),
    each equal to the hand-computed value on that group's targets, under by_event (val/test keep protocols)."""
    import dataclasses

    inter = synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=7)
    event = np.random.default_rng(3).choice(3, size=len(inter), p=[0.6, 0.2, 0.2]).astype(np.int8)
    ev = dataclasses.replace(inter, event=event, event_types=("view", "addtocart", "transaction"))
    data = write_prepared(ev, tmp_path / "ev", positive_threshold=1.0)
    run_dir = tmp_path / "pop"
    assert main(["--exp=popularity_seq", "--data", str(data), "--run-dir", str(run_dir), *USERS, "--seeds", "2"]) == 0
    check_contract(run_dir)
    f = final(run_dir)
    assert set(f["by_event"]["test"]) == set(f["by_event"]["val"]) == {"click", "purchase"}
    assert set(f["by_event_ci95"]["test"]["click"]) == set(f["by_event"]["test"]["click"])
    for group, codes in (("click", {0, 1}), ("purchase", {2})):
        for k, hr in _popularity_hits_by_hand(data, events=codes).items():
            assert f["by_event"]["test"][group][f"hr@{k}"] == pytest.approx(hr)
            assert f["seeds"][0]["by_event"]["test"][group][f"hr@{k}"] == pytest.approx(hr)
    for k, hr in _popularity_hits_by_hand(data).items():
        assert f["test"]["next_item"][f"hr@{k}"] == pytest.approx(hr)
    from experiments.report import table

    text = table([("pop", {**f, "wall_s": 1.0})], "next_item", ["hr@5", "click:hr@5", "purchase:hr@5"])
    assert f"{f['by_event']['test']['purchase']['hr@5']:.4f}" in text


def test_each_run_builds_and_traces_its_own_training_step(data_dir, sqn_quick, tmp_path, monkeypatch):
    """The run owns its trainer and so its compiled step: another run (another config, or the same one
    again) in the same process builds and traces its own (N seeds of one run trace it once:
    tests/test_seeds.py). The first run is the quick sqn run of test_quick_runs_of_the_other_agents."""
    traces = list(sqn_quick[1])
    monkeypatch.setattr(seq_trainer, "make_train", counting_make_train(traces))
    args = ["--exp=sqn", "--quick", "--data", str(data_dir), *USERS]
    assert len(traces) == 1
    assert main(args + ["model.lr=0.002", "--run-dir", str(tmp_path / "other")]) == 0
    assert len(traces) == 2 and traces[0] != traces[1]
    assert main(args + ["--run-dir", str(tmp_path / "again")]) == 0  # the same config, a new run
    assert len(traces) == 3 and traces[2] == traces[0]

    cfg = C.apply_overrides(configs.sqn_config(), list(configs.QUICK) + USERS[1:])
    from experiments.dataset import load_dataset

    data = load_dataset(C.apply_overrides(cfg, [f"data.path={data_dir}"]))
    a = seq_trainer.SequentialTrainer(cfg, data)
    b = seq_trainer.SequentialTrainer(C.apply_overrides(cfg, ["model.lr=0.002"]), data)
    assert a._train is not b._train and a._compiled is not b._compiled


def test_metrics_exclude_seen_items_by_hand():
    inter = make_interactions([(0, 0, 5, 0), (0, 1, 5, 1), (0, 2, 5, 2), (0, 3, 5, 3)], n_items=5)
    q = next_item_queries(inter, np.arange(4), np.array([3]), window=2)  # target 3, seen {0, 1, 2}
    scores = jnp.array([10.0, 9.0, 8.0, 7.0, 20.0])

    def score(windows):
        return jnp.broadcast_to(scores, (windows.shape[0], 5))

    ks = (1, 2, 5)
    m, users = next_item.next_item_metrics(score, q, ks, batch=4, exclude_seen=True)
    # Ranking without seen items: 4 (20), 3 (7): the target is second.
    assert users == 1
    assert (m["hr@1"], m["hr@2"], m["ndcg@2"]) == (0.0, 1.0, pytest.approx(1 / np.log2(3)))
    m, _ = next_item.next_item_metrics(score, q, ks, batch=4, exclude_seen=False)
    # Ranking over everything: 4, 0, 1, 2, 3: the target is fifth.
    assert (m["hr@2"], m["hr@5"], m["ndcg@5"]) == (0.0, 1.0, pytest.approx(1 / np.log2(6)))


def test_repeated_targets_are_left_out_when_seen_items_are_excluded():
    inter = make_interactions([(0, 0, 5, 0), (0, 1, 5, 1), (0, 0, 5, 2), (0, 2, 5, 3)], n_items=4)
    q = next_item_queries(inter, np.arange(4), np.array([1, 2, 3]), window=2)
    kept = next_item.drop_seen_targets(q)
    np.testing.assert_array_equal(kept.target, [1, 2])  # the second 0 was seen before


def test_event_groups_and_their_errors():
    inter = synthetic_interactions(n_users=4, n_items=10, per_user=(5, 6), seed=1)
    with pytest.raises(ConfigError, match="events source"):
        next_item.check_event_group(inter, "purchase", ("transaction",))
    import dataclasses

    ev = dataclasses.replace(inter, event=(np.arange(len(inter)) % 3).astype(np.int8),
                             event_types=("view", "addtocart", "transaction"))
    q = next_item_queries(ev, np.arange(len(ev)), np.arange(len(ev)), window=3)
    buy = next_item.event_subset(q, ev, "purchase", ("transaction",))
    click = next_item.event_subset(q, ev, "click", ("transaction",))
    assert (buy.event == 2).all() and (click.event != 2).all() and len(buy) + len(click) == len(q)
    with pytest.raises(ConfigError, match="purchase_events"):
        next_item.check_event_group(ev, "click", ("buy",))


def test_config_keys_and_defaults():
    cfg = configs.m3s_config()
    keys = {k for k, *_ in C.describe(cfg)}
    assert {"model.lam", "model.n_steps", "model.ssl", "model.negatives", "model.double_q", "train.steps"} <= keys
    assert all(doc for k, _, _, doc in C.describe(cfg) if k.startswith("model."))
    assert configs.sqn_config().model.n_steps == 1 and configs.sasrec_config().model.q_weight == 0
    assert configs.gru4rec_config().model.backbone == "gru"
    with pytest.raises(ConfigError):
        C.apply_overrides(cfg, ["model.batch_size=100"])  # not a multiple of the chunk


def test_default_batch_larger_than_the_training_data_trains(tmp_path):
    """A batch draws batch_size / chunk chunks with replacement, also from fewer training chunks, split into
    model.micro_batches slices (this used to fail: the update was traced on the data's first chunks)."""
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, seed=2), tmp_path / "d", positive_threshold=1.0)
    run = tmp_path / "run"
    assert main(["--exp=m3s_tdlambda", "--data", str(data), "--run-dir", str(run), *USERS, "model.dim=16",
                 "train.steps=2", "train.eval_every=2", "train.ckpt_every=2", "train.log_every=2"]) == 0
    assert json.loads((run / "final.json").read_text())["updates"] == 2


@pytest.mark.parametrize("scheme, cut", [("leave_last", True), ("users", False)])
def test_end_of_training_history_is_a_cut_under_temporal_splits(data_dir, scheme, cut):
    """Under a temporal split a user's training history continues in validation/test, so its end is a cut
    (bootstrap); under the user split the training part is the user's whole log, so it is an episode end.
    An explicit model.bootstrap_at_end wins either way."""
    from experiments.dataset import load_dataset

    from experiments.sequential import EXPERIMENTS

    exp = EXPERIMENTS[0]
    for explicit in (None, True, False):
        sets = [f"data.path={data_dir}", f"data.split.scheme={scheme}", *exp.quick]
        if explicit is not None:
            sets.append(f"model.bootstrap_at_end={str(explicit).lower()}")
        cfg = C.apply_overrides(exp.make_config(), sets)
        assert cfg.model.bootstrap_at_end is explicit
        trainer = seq_trainer.SequentialTrainer(cfg, load_dataset(cfg))
        assert trainer.cfg.bootstrap_at_end is (cut if explicit is None else explicit)
