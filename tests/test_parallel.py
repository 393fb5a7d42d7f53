"""Data parallelism (jaxrec/parallel.py) on a CPU split into 4 devices: one update and whole runs equal one
device up to reduction order, gradients are not multiplied by the device count, and a run compiles its
training chunk once. Each check runs in a subprocess (the device count is fixed when JAX starts)."""
import json
import os
import subprocess
import sys

import pytest

from experiments.run import main
from tests.helpers import REPO, synthetic_interactions, write_prepared


def worker(*args) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu", "CI": "1"}
    res = subprocess.run([sys.executable, "-m", "tests.parallel_worker", *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    return out


def test_one_ddpg_update_on_four_devices_equals_one_device():
    r = worker("ddpg_update")
    # The minibatch really is split (XLA inserted all-reduces; the one-device program has none) ...
    assert r["all_reduces"] > 0 and r["all_reduces_one"] == 0 and r["out_devices"] == 4
    # ... and the update is the one-device update: same loss, gradient (not 4x), parameters.
    assert r["grad_norm_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert r["grad_diff"] < 1e-5 and r["loss_diff"] < 1e-5 and r["params_diff"] < 1e-5


def test_one_m3s_update_on_four_devices_equals_one_device():
    r = worker("sqn_update")
    assert r["all_reduces"] > 0 and r["out_devices"] == 4
    # Gradient: same norm and first moment (not 4x). Adam's first step moves each parameter by about
    # lr * g / |g|, so a parameter whose gradient is ~1e-8 (at Adam's eps) can move by ~1e-5 more or less
    # when the reduction order changes g in its last bits: parameters agree to 1e-4, not to the gradient's 1e-7.
    assert r["moment_ratio"] == pytest.approx(1.0, abs=1e-5) and r["grad_norm_diff"] < 1e-5
    assert r["loss_diff"] < 1e-5 and r["params_diff"] < 1e-4


def test_runs_on_four_devices_equal_one_device_and_compile_once(tmp_path):
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=3), tmp_path / "syn")
    r = worker("runs", data, tmp_path)
    for name in ("m3s", "ddpg"):
        assert r[f"{name}_metric_diff"] < 1e-4, name
        # Several chunks (log, eval, checkpoint points), one trace: the state's layout is pinned between chunks.
        assert r[f"{name}_chunks"] >= 4 and r[f"{name}_traces_1"] == 1 and r[f"{name}_traces_4"] == 1, (name, r)
    assert r["indivisible_rc"] == 2 and r["indivisible_left_nothing"]


def test_devices_refused_where_they_cannot_be_used(tmp_path, capsys):
    data = write_prepared(synthetic_interactions(n_users=30, n_items=20, per_user=(10, 20)), tmp_path / "syn")
    assert main(["--exp=popularity", "--data", str(data), "--devices", "2", "--run-dir", str(tmp_path / "p")]) == 2
    assert "popularity runs on one device" in capsys.readouterr().err
    too_many = ["--exp=sasrec", "--quick", "--data", str(data), "--devices", "64", "--run-dir", str(tmp_path / "s")]
    assert main(too_many) == 2
    assert "64 requested but only" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()
