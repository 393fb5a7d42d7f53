"""``--seeds N`` as one vmapped program: each seed's numbers equal its run alone, resume works per seed, and
the batch compiles once."""
import json
import shutil

import jax
import numpy as np
import pytest

from experiments.run import main
from jaxrec import seeds as seeds_lib
from tests.helpers import synthetic_interactions, write_prepared

# model.embed.seed=0: the seeds share one MF fit (the embedding stage), which keeps these runs short.
DDPG = ["--exp=ddpg_id", "--quick", "--set", "train.steps=40", "train.eval_every=20", "train.ckpt_every=20",
        "train.log_every=10", "model.agent.n_envs=4", "model.agent.batch_size=16", "model.agent.replay_capacity=256",
        "model.embed.seed=0"]
M3S = ["--exp=m3s_tdlambda", "--quick", "--set", "data.split.scheme=users", "data.split.heldout_visible=5"]
MF = ["--exp=mf", "--quick", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=3),
                          tmp_path_factory.mktemp("seeds") / "syn")


def numbers(run_dir):
    """What a seed's run measured (everything in final.json but its wall time)."""
    final = json.loads((run_dir / "final.json").read_text())
    return {k: final[k] for k in ("val", "test", "best_val", "updates")}


def assert_close(a, b, tol=1e-5):
    """Nested dicts of metrics equal to ``tol`` (the batched kernels may reduce in another order)."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_close(a[k], b[k], tol)
        else:
            assert a[k] == pytest.approx(b[k], abs=tol), k


CASES = {"ddpg_id": DDPG, "m3s_tdlambda": M3S, "mf": MF}
# Seeds in the vmapped batch: ddpg_id's batch also serves the resume test (a complete, a part-way and an
# unsaved seed) and the run-alone test (its third seed), two seeds show the others' batches equal their runs.
BATCHED = {"ddpg_id": 3, "m3s_tdlambda": 2, "mf": 2}


def counting_vmap_train(traces: list):
    """``seeds.vmap_train`` that appends to ``traces`` each time its program is traced."""
    original = seeds_lib.vmap_train

    def counting(train, *args, **kwargs):
        def traced(*a):
            traces.append(1)
            return train(*a)

        return original(traced, *args, **kwargs)

    return counting


@pytest.fixture(scope="module")
def together(data_dir, tmp_path_factory):
    """``together(exp)``: ``--seeds N`` of ``exp`` (``BATCHED``) trained as one vmapped program, run once per
    module: (its arguments, its run directory, how often the vmapped program was traced)."""
    done = {}

    def run(exp):
        if exp not in done:
            traces = []
            original = seeds_lib.vmap_train
            seeds_lib.vmap_train = counting_vmap_train(traces)
            try:
                out = tmp_path_factory.mktemp("together") / "run"
                args = ["--data", str(data_dir)] + CASES[exp]  # ends with --set: callers append overrides
                assert main(args + ["--seeds", str(BATCHED[exp]), "--run-dir", str(out)]) == 0
            finally:
                seeds_lib.vmap_train = original
            done[exp] = (args, out, len(traces))
        return done[exp]

    return run


@pytest.mark.parametrize("exp", list(CASES))
def test_vmapped_seeds_equal_runs_one_after_another(exp, together, tmp_path):
    args, run, traces = together(exp)
    n = BATCHED[exp]
    # Every chunk of the seeds ran one program, traced once (a seed loop would trace nothing here).
    assert traces == 1
    finals = [numbers(run / f"seed{s}") for s in range(n)]
    # train.seed_batch=1: the seeds run one after another, each exactly as `--seed S` alone runs it. Two of
    # them show the batch equals its seeds' runs (ddpg_id's third: test_a_seed_of_the_batch_equals_its_run_alone).
    sequential = tmp_path / "sequential"
    assert main(args + ["train.seed_batch=1", "--seeds", "2", "--run-dir", str(sequential)]) == 0
    for s in range(2):
        assert_close(finals[s], numbers(sequential / f"seed{s}"))
    # Different seeds learned different things (the batch is not one seed n times).
    assert len({json.dumps(f["val"], sort_keys=True) for f in finals}) == n
    agg = json.loads((run / "final.json").read_text())
    assert agg["seed"] == list(range(n))
    for proto, metrics in agg["test"].items():
        for name, mean in metrics.items():
            assert mean == pytest.approx(np.mean([f["test"][proto][name] for f in finals]), abs=1e-9)


def test_a_seed_of_the_batch_equals_its_run_alone(together, tmp_path):
    """ddpg_id: the run of one seed (its own embedding stage in its own directory) = that seed of the batch
    (its last seed, the one the sequential comparison above leaves out)."""
    args, run, _ = together("ddpg_id")
    alone = tmp_path / "alone"
    assert main(args + ["--seed", "2", "--run-dir", str(alone)]) == 0
    assert_close(numbers(run / "seed2"), numbers(alone))


def test_batched_run_resumes_seeds_at_different_steps(together, tmp_path, capsys):
    args, done, _ = together("ddpg_id")
    run = tmp_path / "run"
    shutil.copytree(done, run)
    before = [numbers(run / f"seed{s}") for s in range(3)]
    # A run killed mid-way: seed 0 complete, seed 1 checkpointed part-way, seed 2 with nothing saved at all.
    ckpts = sorted((run / "seed1" / "checkpoints").iterdir(), key=lambda p: int(p.name))
    assert len(ckpts) >= 2
    (run / "final.json").unlink()
    (run / "seed1" / "final.json").unlink()
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(run / "seed2")
    capsys.readouterr()
    assert main(args + ["--seeds", "3", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "seed0: already complete" in out and f"seed1: resuming from step {ckpts[-2].name}" in out
    for s in range(3):
        assert_close(numbers(run / f"seed{s}"), before[s])
    assert json.loads((run / "final.json").read_text())["seed"] == [0, 1, 2]


def test_stack_unstack_round_trip():
    states = [{"w": np.full((2, 3), float(i)), "step": np.int32(i)} for i in range(4)]
    stacked = seeds_lib.stack(states)
    assert stacked["w"].shape == (4, 2, 3) and stacked["step"].shape == (4,)
    back = seeds_lib.unstack(stacked, 4)
    for i in range(4):
        np.testing.assert_array_equal(back[i]["w"], states[i]["w"])
        assert int(back[i]["step"]) == i


def test_vmap_train_shares_data_and_maps_state():
    def train(state, data, n_steps):
        def body(s, _):
            return s + data, None

        state, _ = jax.lax.scan(body, state, None, length=n_steps)
        return state, {"sum": state.sum()}

    train_many = seeds_lib.vmap_train(train, n_shared=1)
    states = seeds_lib.stack([np.zeros(3, np.float32), np.ones(3, np.float32)])
    out, metrics = train_many(states, np.arange(3, dtype=np.float32), 2)
    np.testing.assert_array_equal(np.asarray(out), [[0, 2, 4], [1, 3, 5]])
    np.testing.assert_array_equal(np.asarray(metrics["sum"]), [6, 9])


def test_program_key_separates_what_changes_the_program():
    from experiments.registry import EXPERIMENTS
    from jaxrec import config as C

    m3s = EXPERIMENTS["m3s_tdlambda"].make_config()
    key = C.program_key(m3s)
    assert C.program_key(C.replace(m3s, "model.lam", 0.3)) == key
    assert C.program_key(C.replace(C.replace(m3s, "model.lr", 1e-2), "seed", 5)) == key
    assert C.program_key(C.replace(m3s, "model.window", 5)) != key
    # q_weight is traced, but 0 turns Q-learning off (SQNConfig.uses_q): another program.
    assert C.program_key(C.replace(m3s, "model.q_weight", 0.5)) == key
    assert C.program_key(C.replace(m3s, "model.q_weight", 0.0)) != key
    drr = EXPERIMENTS["ddpg_id"].make_config()
    assert C.program_key(C.replace(drr, "model.agent.sigma", 0.1)) == C.program_key(drr)
    assert C.program_key(C.replace(drr, "model.agent.n_envs", 8)) != C.program_key(drr)
    assert "model.agent.actor_lr" in C.traced_keys(drr) and "model.agent.n_envs" not in C.traced_keys(drr)


GRID_CASES = {
    "m3s_tdlambda": ("model.lam", ("0.0", "1.0"), M3S),
    "ddpg_id": ("model.agent.actor_lr", ("1e-4", "3e-3"), DDPG),
}


@pytest.mark.parametrize("exp", list(GRID_CASES))
def test_grid_points_of_traced_values_train_as_one_program(exp, data_dir, tmp_path, monkeypatch, capsys):
    """Two points that differ only in a traced hyper-parameter: one program (one trace), and each point's
    numbers are those of its own run.py run (the second point reads its value from its state, not from
    the trainer's config, which is the first point's)."""
    from experiments import ablate

    key, values, args = GRID_CASES[exp]
    base = [a for a in args[2:] if a != "--set"]  # the --quick settings of the runs, as --set overrides
    grid = ablate.Grid(exp, key, tuple((f"p{i}", (f"{key}={v}",)) for i, v in enumerate(values)), "traced grid")
    monkeypatch.setitem(ablate.GRIDS, "traced", grid)
    traces = []
    monkeypatch.setattr(seeds_lib, "vmap_train", counting_vmap_train(traces))
    out = tmp_path / "grid"
    metric = "drr:ndcg@10" if exp == "ddpg_id" else "next_item:ndcg@10"
    assert ablate.main(["--grid=traced", "--quick", "--data", str(data_dir), "--out", str(out), "--metrics", metric,
                        "--set", *base]) == 0
    assert "2 points x 1 seed(s) share one program" in capsys.readouterr().out
    assert len(traces) == 1
    points = [numbers(out / f"p{i}") for i in range(2)]
    assert points[0]["val"] != points[1]["val"]
    alone = tmp_path / "alone"
    assert main([f"--exp={exp}", "--quick", "--data", str(data_dir), "--run-dir", str(alone),
                 "--set", *base, f"{key}={values[1]}"]) == 0
    assert_close(points[1], numbers(alone))
