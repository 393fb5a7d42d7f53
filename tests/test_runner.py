"""End-to-end tests of experiments/run.py and the harness on small generated data."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import registry
from experiments.trainer import Experiment, StandardEvaluation
from experiments.run import main
from jaxrec import config as C
from jaxrec.baselines import broadcast_scores
from jaxrec.data.splits import train_view
from jaxrec.eval.stats import aggregate_seeds, t975
from tests.helpers import REPO, synthetic_interactions, write_prepared

CHECKER = REPO.parent / "shared" / "tools" / "check_contracts.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(synthetic_interactions(n_users=80, n_items=50), tmp_path_factory.mktemp("data") / "syn")


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def check_contract(kind, target):
    if not CHECKER.exists():
        return
    res = subprocess.run([sys.executable, str(CHECKER), kind, str(target)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_list(capsys):
    rc, out, _ = _run(["--exp=list"], capsys)
    assert rc == 0 and out.startswith("popularity")


def test_popularity_end_to_end_hand_checked(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc, _, err = _run(["--exp=popularity", "--data", str(data_dir), "--run-dir", str(run_dir), "--set",
                       "data.split.scheme=leave_last", "data.relevant_threshold=4", "eval.protocols=full"], capsys)
    assert rc == 0, err
    final = json.loads((run_dir / "final.json").read_text())
    check_contract("run", run_dir)
    assert (run_dir / "plots" / "metrics.png").stat().st_size > 0
    assert (run_dir / "config.json").exists() and (run_dir / "checkpoints").is_dir()
    # Recompute HR@10 of the test part by hand: the most-popular training items, minus what each user saw.
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.splits import leave_last_out

    inter, _, _ = load_prepared(data_dir)
    split = leave_last_out(inter)
    counts = np.bincount(inter.item[split.train], minlength=inter.n_items)
    ranking = np.argsort(-counts, kind="stable")
    hits, users = 0, 0
    for row in split.test:
        u = inter.user[row]
        if inter.rating[row] < 4:
            continue  # not relevant at threshold 4
        seen = set(inter.item[(inter.user == u) & ~np.isin(np.arange(len(inter)), split.test)])
        top = [i for i in ranking if i not in seen][:10]
        hits += inter.item[row] in top
        users += 1
    assert final["eval_users"]["test"]["full"] == users
    assert final["test"]["full"]["hr@10"] == pytest.approx(hits / users)


def test_quick_and_set_and_seeds(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "seeds"
    rc, _, err = _run(["--exp=popularity", "--quick", "--data", str(data_dir), "--run-dir", str(run_dir), "--seeds", "3",
                       "--set", "data.split.scheme=users", "data.split.heldout_visible=5"], capsys)
    assert rc == 0, err
    final = json.loads((run_dir / "final.json").read_text())
    assert len(final["seeds"]) == 3 and final["seed"] == [0, 1, 2]
    # Popularity does not depend on the learner seed, and the split seed is fixed: zero spread.
    assert final["test_ci95"]["full"]["ndcg@10"] == 0.0
    assert final["test"]["full"] == final["seeds"][0]["test"]["full"]
    check_contract("run", run_dir)


@pytest.mark.parametrize("argv, message", [
    (["--exp=nope"], "error: --exp: unknown experiment 'nope'"),
    (["--exp=popularity", "--set", "train.stepz=3"], "error: --set train.stepz: unknown key (did you mean train.steps?)"),
    (["--exp=popularity", "--set", "eval.batch_users=many"], "error: --set eval.batch_users: 'many' is not an integer"),
    (["--exp=popularity", "--data", "/nonexistent/dir"], "error: /nonexistent/dir: no such data directory"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    rc, _, err = _run(argv + ["--run-dir", str(tmp_path / "r")], capsys)
    assert rc == 2
    assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1


def test_existing_run_with_other_config_is_refused_and_kept(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _run(["--exp=popularity", "--data", str(data_dir), "--run-dir", str(run_dir)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    rc, _, err = _run(["--exp=popularity", "--data", str(data_dir), "--run-dir", str(run_dir), "--set", "eval.ks=5,10",
                       "eval.select=ndcg@5"], capsys)
    assert rc == 2 and "different config (eval.ks" in err
    assert before == {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# Resume: a small trainer with real jitted, keyed updates, interrupted and resumed.


class Interrupt(Exception):
    pass


class ToyTrainer(StandardEvaluation):
    crash_after: int | None = None
    poison_after: int | None = None  # a chunk ending past this step returns a NaN in `poison`
    poison: str = "w"

    def __init__(self, cfg, data):
        train = train_view(data.inter, data.split)
        self.counts = jnp.asarray(np.bincount(train.item, minlength=data.inter.n_items), jnp.float32)
        self.n_items = data.inter.n_items

    def init(self, key):
        return {"w": jnp.zeros(self.n_items), "key": jax.random.key_data(key), "step": jnp.int32(0)}

    def train(self, state, n_steps):
        if self.crash_after is not None and int(state["step"]) >= self.crash_after:
            raise Interrupt
        state, logs = _toy_chunk(state, self.counts, n_steps)
        if self.poison_after is not None and int(state["step"]) > self.poison_after:
            if self.poison == "loss":
                logs = {"loss": float("inf")}
            else:
                state = {**state, "w": state["w"].at[3].set(jnp.nan)}
        return state, logs

    def score_fn(self, state, view):
        return lambda users, context: broadcast_scores(state["w"], context)

    def counters(self, state):
        return {"env_steps": int(state["step"]), "updates": int(state["step"])}


@jax.jit
def _toy_step(state, counts):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
    noise = jax.random.normal(key, state["w"].shape)
    w = 0.9 * state["w"] + 0.1 * (counts + 3.0 * noise)
    return {**state, "w": w, "step": state["step"] + 1}, jnp.mean(noise)


def _toy_chunk(state, counts, n_steps):
    def body(s, _):
        return _toy_step(s, counts)

    state, losses = jax.lax.scan(body, state, None, length=n_steps)
    return state, {"loss": float(losses.mean())}


@pytest.fixture
def toy_experiment(monkeypatch):
    def make_config():
        return C.Config(exp="toy", train=C.TrainConfig(steps=40, eval_every=10, ckpt_every=10, log_every=5))

    exp = Experiment("toy", "test-only trainer", make_config, lambda cfg, data: ToyTrainer(cfg, data))
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", exp)
    yield exp
    ToyTrainer.crash_after = ToyTrainer.poison_after = None
    ToyTrainer.poison = "w"


def _final_without_wall(run_dir):
    final = json.loads((run_dir / "final.json").read_text())
    final.pop("wall_s")
    return final


def _metric_lines_without_wall(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("wall_s")
    return lines


def test_resume_after_interruption_gives_the_same_final(toy_experiment, data_dir, tmp_path, capsys):
    args = ["--exp=toy", "--data", str(data_dir)]
    straight = tmp_path / "straight"
    assert _run(args + ["--run-dir", str(straight)], capsys)[0] == 0

    resumed = tmp_path / "resumed"
    ToyTrainer.crash_after = 25  # dies inside the chunk after step 25: last checkpoint is step 20
    with pytest.raises(Interrupt):
        main(args + ["--run-dir", str(resumed)])
    assert not (resumed / "final.json").exists()
    ToyTrainer.crash_after = None
    rc, out, err = _run(args + ["--run-dir", str(resumed)], capsys)
    assert rc == 0, err
    assert "resuming from step 20" in out
    assert _final_without_wall(resumed) == _final_without_wall(straight)
    assert _metric_lines_without_wall(resumed) == _metric_lines_without_wall(straight)
    check_contract("run", resumed)
    # A third run of the same command is a no-op that keeps the result.
    assert _run(args + ["--run-dir", str(resumed)], capsys)[0] == 0
    assert _final_without_wall(resumed) == _final_without_wall(straight)


@pytest.mark.parametrize("poison,quantity", [("w", "state['w']"), ("loss", "loss=inf")])
def test_divergence_stops_with_one_line_exit_3_and_keeps_the_last_good_checkpoint(
        toy_experiment, data_dir, tmp_path, capsys, poison, quantity):
    args = ["--exp=toy", "--data", str(data_dir)]
    straight = tmp_path / "straight"
    assert _run(args + ["--run-dir", str(straight)], capsys)[0] == 0
    run_dir = tmp_path / "run"
    ToyTrainer.poison_after, ToyTrainer.poison = 25, poison  # the chunk ending at step 30 diverges
    rc, _, err = _run(args + ["--run-dir", str(run_dir)], capsys)
    assert rc == 3
    assert err.count("\n") == 1 and err.startswith(f"error: {run_dir}: training diverged at step 30: {quantity} ")
    assert "the last good checkpoint (step 20) is kept" in err
    assert not (run_dir / "final.json").exists()
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    assert max(json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()) == 25
    # Nothing good was lost: once the cause is removed, the same command resumes from step 20 and ends
    # exactly where an undisturbed run ends.
    ToyTrainer.poison_after = None
    rc, out, err = _run(args + ["--run-dir", str(run_dir)], capsys)
    assert rc == 0 and "resuming from step 20" in out, err
    assert _final_without_wall(run_dir) == _final_without_wall(straight)


@pytest.mark.parametrize("exp,override", [("mf", "model.lr=1e30"), ("ddpg_id", "model.agent.critic_lr=1e30"),
                                          ("sqn", "model.lr=1e30")])
def test_real_diverging_configs_exit_3_without_traceback(data_dir, tmp_path, exp, override):
    res = subprocess.run([sys.executable, "experiments/run.py", f"--exp={exp}", "--quick", "--data", str(data_dir),
                          "--run-dir", str(tmp_path / "run"), "--set", override, "train.log_every=50"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 3, res.stderr[-2000:]
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "training diverged at step" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated", "all"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(toy_experiment, data_dir, tmp_path, capsys, damage):
    args = ["--exp=toy", "--data", str(data_dir)]
    straight = tmp_path / "straight"
    assert _run(args + ["--run-dir", str(straight)], capsys)[0] == 0
    run_dir = tmp_path / "run"
    ToyTrainer.crash_after = 25  # checkpoints at steps 10 and 20 exist when it dies
    with pytest.raises(Interrupt):
        main(args + ["--run-dir", str(run_dir)])
    ToyTrainer.crash_after = None
    steps = ["10", "20"] if damage == "all" else ["20"]
    for step in steps:
        for f in (run_dir / "checkpoints" / step).rglob("*"):
            if f.is_file():
                f.write_bytes(b"not a checkpoint" if damage != "truncated" else f.read_bytes()[: len(f.read_bytes()) // 3])
    rc, out, err = _run(args + ["--run-dir", str(run_dir)], capsys)
    assert rc == 0, err
    for step in steps:
        assert f"warning: checkpoint {step} cannot be read" in err
        assert (run_dir / "checkpoints.unreadable" / step).is_dir()  # moved aside, not deleted
    assert ("resuming from step 10" in out) == (damage != "all")
    assert _final_without_wall(run_dir) == _final_without_wall(straight)
    assert _metric_lines_without_wall(run_dir) == _metric_lines_without_wall(straight)


def test_seeds_reproduce_and_differ(toy_experiment, data_dir, tmp_path, capsys):
    finals = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert _run(["--exp=toy", "--data", str(data_dir), "--seed", str(seed), "--run-dir", str(tmp_path / name)], capsys)[0] == 0
        finals[name] = _final_without_wall(tmp_path / name)
    assert finals["a"] == finals["b"]
    assert finals["a"]["val"] != finals["c"]["val"] or finals["a"]["best_val"] != finals["c"]["best_val"]


def test_aggregate_seeds_ci95_by_hand():
    finals = [{"exp": "x", "seed": s, "wall_s": 1.0, "env_steps": 0, "updates": 0,
               "val": {"full": {"hr@1": v}}, "test": {"full": {"hr@1": v}}} for s, v in enumerate([0.1, 0.2, 0.3])]
    agg = aggregate_seeds(finals)
    assert agg["test"]["full"]["hr@1"] == pytest.approx(0.2)
    # sd = 0.1, n = 3: half-width = t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735
    assert agg["test_ci95"]["full"]["hr@1"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-6)
    # Exact quantiles (published tables, 5 significant digits), including dof that no short table lists.
    for dof, q in {1: 12.706, 2: 4.3027, 4: 2.7764, 11: 2.2010, 13: 2.1604, 39: 2.0227, 1000: 1.9623}.items():
        assert t975(dof) == pytest.approx(q, abs=6e-4), dof


def test_cli_subprocess_prints_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "experiments/run.py", "--exp=popularity", "--set", "bogus=1",
                          "--run-dir", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("error: --set bogus: unknown key") and "Traceback" not in res.stderr


def test_progress_bars_on_stderr_unless_quiet_or_ci(data_dir, tmp_path, capsys, monkeypatch):
    """Pretraining, training chunks (rate, ETA, best validation metric) and evaluation draw bars on stderr; the
    log lines on stdout and the results are the same with and without them."""
    monkeypatch.delenv("CI", raising=False)
    args = ["--exp=ddpg_id", "--quick", "--data", str(data_dir)]
    rc, out, err = _run(args + ["--run-dir", str(tmp_path / "bars")], capsys)
    assert rc == 0
    for bar in ("pretrain embeddings", "train (seed 0)", "best val ndcg@10=", "val drr", "test full", "step/s"):
        assert bar in err, bar
    rc, out_quiet, err_quiet = _run(args + ["--run-dir", str(tmp_path / "quiet"), "--quiet"], capsys)
    assert rc == 0 and err_quiet == ""
    assert _final_without_wall(tmp_path / "bars")["test"] == _final_without_wall(tmp_path / "quiet")["test"]
    from experiments.progress import Bars

    monkeypatch.setenv("CI", "1")
    assert Bars(quiet=False).quiet and Bars(quiet=False).bar(3, "x").disable


def test_unknown_protocol_is_refused_naming_it_and_the_allowed_ones(toy_experiment, data_dir, tmp_path, capsys,
                                                                    monkeypatch):
    rc, _, err = _run(["--exp=popularity", "--data", str(data_dir), "--run-dir", str(tmp_path / "a"), "--set",
                       "eval.protocols=next_item"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "eval.protocols: unknown protocol 'next_item' for experiment popularity; allowed: full, drr, cold_start" in err
    # A protocol the experiment lists but its trainer cannot score: refused before the run directory is written.
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", dataclasses.replace(toy_experiment, protocols=("full", "next_item")))
    rc, _, err = _run(["--exp=toy", "--data", str(data_dir), "--run-dir", str(tmp_path / "b"), "--set",
                       "eval.protocols=next_item"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "unknown protocol 'next_item' for ToyTrainer (experiment toy); it provides: full, drr, cold_start" in err
    assert not (tmp_path / "b").exists()


def test_a_run_from_before_a_new_option_resumes_at_its_default(data_dir, tmp_path, capsys):
    """An option added after a run started is missing from its config.json: left at its default the run
    resumes (nothing rewritten), set to anything else it is refused as a different config."""
    run_dir = tmp_path / "run"
    args = ["--exp=popularity", "--data", str(data_dir), "--run-dir", str(run_dir)]
    assert _run(args, capsys)[0] == 0
    cfg_path = run_dir / "config.json"
    saved = json.loads(cfg_path.read_text())
    del saved["eval"]["drr_ideal"]  # as if the key did not exist when the run started
    cfg_path.write_text(json.dumps(saved))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    rc, out, err = _run(args, capsys)
    assert rc == 0 and "already complete" in out + err
    assert before == {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    rc, _, err = _run(args + ["--set", "eval.drr_ideal=k"], capsys)
    assert rc == 2 and "different config (eval.drr_ideal: 'true' there, 'k' now" in err
    # Not finished yet (interrupted before final.json): it resumes too, and its config.json stays as it was.
    (run_dir / "final.json").unlink()
    rc, out, err = _run(args, capsys)
    assert rc == 0 and (run_dir / "final.json").exists(), err
    assert json.loads(cfg_path.read_text()) == saved


def test_seed_scheduling_does_not_make_another_config(data_dir, tmp_path, capsys):
    """train.seed_batch / train.seed_devices choose how seeds run, not what they compute: a run resumes, and
    seeds run as separate processes are aggregated on their parent, under other values of them; a setting that
    changes results is still refused."""
    run_dir = tmp_path / "run"
    args = ["--exp=sasrec", "--quick", "--data", str(data_dir), "--seeds", "2", "--run-dir", str(run_dir)]
    assert _run(args, capsys)[0] == 0
    final = (run_dir / "final.json").read_bytes()
    rc, out, err = _run(args + ["--set", "train.seed_batch=1"], capsys)
    assert rc == 0 and "already complete" in out + err, err
    assert (run_dir / "final.json").read_bytes() == final
    rc, _, err = _run(args + ["--set", "model.lr=0.5"], capsys)
    assert rc == 2 and "different config (model.lr" in err


# Early stopping (train.patience): validation values scripted by seed and step, so the stopping step is known.
SCRIPT = {0: {10: 0.1, 20: 0.3, 30: 0.2, 40: 0.25, 50: 0.3, 60: 0.5, 70: 0.6, 80: 0.7},  # best 20, stops at 50
          1: {10: 0.4, 20: 0.1, 30: 0.2, 40: 0.3, 50: 0.9, 60: 0.9, 70: 0.9, 80: 0.9}}  # best 10, stops at 40


def _scripted_evaluate(trainer, state, data, cfg, part, bars=None):
    """A validation value per (seed, step) of ``state``; the test part reports the tested state's step / 100."""
    step = int(np.asarray(state["step"]))
    value = SCRIPT[cfg.seed][step] if part == "val" else step / 100
    return {"full": {"ndcg@10": value}}, {"full": 10}


class ToySeedsTrainer(ToyTrainer):
    """The toy trainer with seeds trained as one vmapped program (``run_seeds_together``)."""

    def can_train_seeds(self):
        return True

    def train_seeds(self, states, n_steps):
        def one(state):
            state, losses = jax.lax.scan(lambda s, _: _toy_step(s, self.counts), state, None, length=n_steps)
            return state, {"loss": losses.mean()}

        return jax.vmap(one)(states)


@pytest.fixture
def stopping_experiment(monkeypatch):
    from experiments import loop

    def make_config():
        return C.Config(exp="toy", train=C.TrainConfig(steps=80, eval_every=10, ckpt_every=10, log_every=5,
                                                       patience=3))

    exp = Experiment("toy", "test-only trainer", make_config, lambda cfg, data: ToySeedsTrainer(cfg, data))
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", exp)
    monkeypatch.setattr(loop, "evaluate", _scripted_evaluate)
    monkeypatch.setattr(loop, "evaluate_groups", lambda *a, **k: {})
    yield exp
    ToyTrainer.crash_after = None


def _val_steps(run_dir):
    return [x["step"] for x in _metric_lines_without_wall(run_dir) if "val" in x]


def test_early_stopping_after_patience_validations_tests_the_best_state(stopping_experiment, data_dir, tmp_path,
                                                                        capsys):
    args = ["--exp=toy", "--data", str(data_dir)]
    run_dir = tmp_path / "stop"
    rc, out, err = _run(args + ["--run-dir", str(run_dir)], capsys)
    assert rc == 0, err
    final = json.loads((run_dir / "final.json").read_text())
    # Best at step 20 (0.3); 30, 40 and 50 (0.3 again: not better) are three validations without a better one.
    assert final["stopped_at"] == 50 and final["updates"] == 50
    assert final["best_val"] == {"ndcg@10": 0.3} and final["test"]["full"]["ndcg@10"] == 0.2
    assert _val_steps(run_dir) == [10, 20, 30, 40, 50]
    assert "step 50: stopping early" in out
    assert max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == 50
    check_contract("run", run_dir)

    full = tmp_path / "full"
    assert _run(args + ["--run-dir", str(full), "--set", "train.patience=0"], capsys)[0] == 0
    final = json.loads((full / "final.json").read_text())
    assert "stopped_at" not in final and final["updates"] == 80 and final["test"]["full"]["ndcg@10"] == 0.8


def test_early_stopping_resumes_with_the_count_of_the_checkpoint(stopping_experiment, data_dir, tmp_path, capsys):
    """A run killed at step 35 resumes from step 30 with one validation without improvement already counted
    (recounted from the metric lines) and stops at 50, as the run that was not interrupted."""
    args = ["--exp=toy", "--data", str(data_dir)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run(args + ["--run-dir", str(straight)], capsys)[0] == 0
    ToyTrainer.crash_after = 35
    with pytest.raises(Interrupt):
        main(args + ["--run-dir", str(resumed)])
    ToyTrainer.crash_after = None
    rc, out, err = _run(args + ["--run-dir", str(resumed)], capsys)
    assert rc == 0 and "resuming from step 30" in out, err
    assert _final_without_wall(resumed) == _final_without_wall(straight)
    assert _metric_lines_without_wall(resumed) == _metric_lines_without_wall(straight)


def test_seeds_trained_together_stop_one_by_one_as_they_would_alone(stopping_experiment, data_dir, tmp_path, capsys):
    args = ["--exp=toy", "--data", str(data_dir)]
    together = tmp_path / "together"
    rc, out, err = _run(args + ["--seeds", "2", "--run-dir", str(together)], capsys)
    assert rc == 0, err
    assert "(vmapped)" in out  # one program for both seeds
    for seed, stop, best in ((0, 50, 20), (1, 40, 10)):
        alone = tmp_path / f"alone{seed}"
        assert _run(args + ["--seed", str(seed), "--run-dir", str(alone)], capsys)[0] == 0
        final = _final_without_wall(together / f"seed{seed}")
        assert final["stopped_at"] == stop and final["updates"] == stop
        assert final["test"]["full"]["ndcg@10"] == best / 100
        assert final == _final_without_wall(alone)
        assert _metric_lines_without_wall(together / f"seed{seed}") == _metric_lines_without_wall(alone)
