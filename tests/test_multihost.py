"""Several hosts, on one machine: two processes with 2 CPU devices each, joined by ``jax.distributed``
(``--coordinator`` on a free local port; gloo collectives between the processes), train one run over the
4 devices of both (``--devices 4``). Its numbers equal those of one process over 4 devices, process 0
alone writes the run directory (every metric line once, one ``final.json``, progress on its stdout only),
both take part in the orbax checkpoints, and launching the same command again resumes from the last
checkpoint, then reports the run complete. Every process is a subprocess with a timeout: a hang (a missing
barrier, a collective only one process entered) fails the test instead of blocking it."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from jaxrec import parallel
from jaxrec.errors import ConfigError
from tests.helpers import REPO, synthetic_interactions, write_prepared

ARGS = ["--exp=m3s_tdlambda", "--quick", "--devices", "4", "--quiet",
        "--set", "data.split.scheme=users", "data.split.heldout_visible=5"]
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, devices: int, tmp_path, name: str, script: str = "experiments/run.py") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", CI="1")
    out, err = (open(tmp_path / f"{name}.{s}", "w") for s in ("out", "err"))
    with out, err:
        return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=env, stdout=out, stderr=err)


_GLOO = "[Gloo] Rank # is connected to # peer ranks. Expected number of connected peer ranks is : #"


def _gloo_piece(line: str) -> bool:
    """Whether ``line`` is (a piece of) gloo's connection message, numbers written as ``#``."""
    piece = re.sub(r"\d+", "#", line.strip())
    return bool(piece) and (piece in _GLOO or "peer ranks" in piece)


def wait(procs: dict[str, subprocess.Popen], tmp_path) -> dict[str, str]:
    """Each process's stdout (without gloo's connection lines); fails on a timeout or a nonzero status."""
    try:
        for p in procs.values():
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    out = {}
    for name, p in procs.items():
        err = (tmp_path / f"{name}.err").read_text()
        assert p.returncode == 0, (name, p.returncode, err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        lines = (tmp_path / f"{name}.out").read_text().splitlines()
        # gloo prints "[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks is : N"
        # from its own threads; another write can split it anywhere, leaving a piece on a line of its own (seen
        # in CI: a bare "3"). A line that is a piece of that message is dropped; jaxrec's own lines are kept.
        out[name] = "\n".join(line for line in lines if not _gloo_piece(line))
    return out


def two_processes(data, run_dir, tmp_path, tag: str, extra=None) -> dict[str, subprocess.Popen]:
    coordinator = f"127.0.0.1:{free_port()}"
    args = ARGS + ["--data", str(data), "--run-dir", str(run_dir), "--coordinator", coordinator, "--num-processes", "2"]
    return {f"{tag}{i}": start(args + ["--process-id", str(i)], 2, tmp_path, f"{tag}{i}") for i in range(2)}


def metrics(final: dict) -> dict:
    return {(part, p, m): v for part in ("val", "test") for p, ms in final[part].items() for m, v in ms.items()}


def test_two_processes_equal_one_write_once_and_resume(tmp_path):
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=3), tmp_path / "syn")
    run, ref = tmp_path / "run", tmp_path / "ref"
    # The one-process reference trains beside the two processes (the machine's cores overlap their start-up).
    procs = {"ref": start(ARGS + ["--data", str(data), "--run-dir", str(ref)], 4, tmp_path, "ref"),
             **two_processes(data, run, tmp_path, "a")}
    out = wait(procs, tmp_path)

    final, one = (json.loads((d / "final.json").read_text()) for d in (run, ref))
    got, want = metrics(final), metrics(one)
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in got) < 1e-4
    assert final["updates"] == one["updates"] == 12
    # Process 0 wrote each metric line once (the same lines as one process writes), nothing else wrote.
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], sorted(r)) for r in lines] == [(r["step"], sorted(r)) for r in ref_lines]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "final.json", "metrics.jsonl", "plots"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["12", "6"]
    assert (run / "plots" / "metrics.png").is_file()
    assert out["a0"].count("run directory:") == 1 and out["a0"].count("step 12: val") == 1
    assert out["a1"] == "", out["a1"]  # progress lines: process 0 only

    # Interrupted after its last checkpoint (final.json lost): both processes restore it and finish the run.
    (run / "final.json").unlink()
    out = wait(two_processes(data, run, tmp_path, "b"), tmp_path)
    assert out["b0"].count("resuming from step 12") == 1 and out["b1"] == "", out
    resumed = json.loads((run / "final.json").read_text())
    assert metrics(resumed) == got
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] == lines

    # Complete: nothing is trained or written again.
    before = (run / "final.json").read_bytes()
    out = wait(two_processes(data, run, tmp_path, "c"), tmp_path)
    assert out["c0"].count("already complete") == 1 and out["c1"] == "", out
    assert (run / "final.json").read_bytes() == before


def test_an_ablation_grid_over_two_processes(tmp_path):
    """``ablate.py`` takes the same flags: the lambda grid (its four points one vmapped program) over 2 processes
    x 2 devices gives the table of one process over 4 devices, and process 0 alone writes it."""
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=4), tmp_path / "syn")
    args = ["--grid=lambda", "--quick", "--devices", "4", "--data", str(data), "--metrics", "ndcg@10",
            "--set", "data.split.scheme=users", "data.split.heldout_visible=5"]
    coordinator = f"127.0.0.1:{free_port()}"
    procs = {"ref": start(args + ["--out", str(tmp_path / "ref")], 4, tmp_path, "ref", "experiments/ablate.py"),
             **{f"g{i}": start(args + ["--out", str(tmp_path / "grid"), "--coordinator", coordinator, "--num-processes",
                                       "2", "--process-id", str(i)], 2, tmp_path, f"g{i}", "experiments/ablate.py")
                for i in range(2)}}
    out = wait(procs, tmp_path)

    def table(d):
        rows = (tmp_path / d / "table.csv").read_text().splitlines()
        return [r.split(",")[:-1] for r in rows]  # without wall_s

    got, want = table("grid"), table("ref")
    assert got[0] == want[0] and len(got) == len(want) == 5  # header + 4 points
    for g, w in zip(got[1:], want[1:]):
        assert g[:3] == w[:3]
        assert max(abs(float(a) - float(b)) for a, b in zip(g[3:], w[3:])) < 1e-4, (g, w)
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert out["g0"].count("wrote ") == 1 and out["g1"] == "", out["g1"]


def test_processes_resolved_from_flags_or_environment(monkeypatch):
    monkeypatch.setattr(parallel, "cluster_detected", lambda: False)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert parallel.resolve_processes(environ={}) is None  # nothing asked: one process, JAX left alone
    assert parallel.resolve_processes(environ=env) == parallel.Processes("10.0.0.1:1234", 4, 3)
    # Flags win over the environment; one process needs no coordinator.
    assert parallel.resolve_processes(None, 2, 1, environ=env) == parallel.Processes("10.0.0.1:1234", 2, 1)
    assert parallel.resolve_processes(None, 1, 0, environ={}) is None
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES: 'four' is not an integer"):
        parallel.resolve_processes(environ={**env, "JAX_NUM_PROCESSES": "four"})
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID: 4 is not a process id of 4 processes"):
        parallel.resolve_processes(environ={**env, "JAX_PROCESS_ID": "4"})
    with pytest.raises(ConfigError, match="--coordinator: not given"):
        parallel.resolve_processes(auto=True, environ={})
    # Where JAX detects the cluster (SLURM, Open MPI, Cloud TPU), missing values are left to it.
    monkeypatch.setattr(parallel, "cluster_detected", lambda: True)
    assert parallel.resolve_processes(auto=True, environ={}) == parallel.Processes()
    assert parallel.resolve_processes(None, 2, None, environ={}) == parallel.Processes(None, 2, None)


def test_ddpg_seeds_over_two_processes(tmp_path):
    """``ddpg_id`` with ``--seeds 2`` (the parallel users sharded, the seeds one after another or vmapped, the
    embedding stage first) over 2 processes x 2 devices: each seed's numbers equal one process over 4 devices,
    and process 0 alone writes the seed directories, the aggregate and the embedding stage."""
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=5), tmp_path / "syn")
    args = ["--exp=ddpg_id", "--quick", "--seeds", "2", "--devices", "4", "--quiet", "--data", str(data),
            "--set", "data.split.scheme=users", "data.split.heldout_visible=5", "model.agent.n_envs=4",
            "train.steps=60", "train.eval_every=30", "train.ckpt_every=30", "train.log_every=30"]
    coordinator = f"127.0.0.1:{free_port()}"
    procs = {"ref": start(args + ["--run-dir", str(tmp_path / "ref")], 4, tmp_path, "ref"),
             **{f"d{i}": start(args + ["--run-dir", str(tmp_path / "run"), "--coordinator", coordinator,
                                       "--num-processes", "2", "--process-id", str(i)], 2, tmp_path, f"d{i}")
                for i in range(2)}}
    out = wait(procs, tmp_path)
    ref, run = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("ref", "run"))
    assert [s["seed"] for s in run["seeds"]] == [s["seed"] for s in ref["seeds"]] == [0, 1]
    for got, want in zip(run["seeds"], ref["seeds"]):
        assert got["updates"] == want["updates"] > 0
        g, w = metrics(got), metrics(want)
        assert g.keys() == w.keys() and max(abs(g[k] - w[k]) for k in g) < 1e-4
    assert metrics(run["seeds"][0]) != metrics(run["seeds"][1])  # two seeds, not one run twice
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert sorted(p.name for p in (tmp_path / "run" / "embeddings").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "embeddings").iterdir())
    assert out["d0"].count("run directory:") == 1 and out["d1"] == "", out["d1"]
