"""Data parallelism (jaxrec/parallel.py) on a CPU split into 4 devices: one update and whole runs equal one
device up to reduction order, gradients are not multiplied by the device count, and a run compiles its
training chunk once. Each check runs in a subprocess (the device count is fixed when JAX starts)."""
import json
import os
import re
import subprocess
import sys

import pytest

from experiments.run import main
from tests.helpers import REPO, synthetic_interactions, write_prepared
from tests.parallel_worker import SEED_SPLITS


def worker(*args) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu", "CI": "1"}
    res = subprocess.run([sys.executable, "-m", "tests.parallel_worker", *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    # An abort's native stack frames ("@ 0x...") would push its reason out of the shown tail.
    assert res.returncode == 0, "\n".join(l for l in res.stderr.splitlines() if "@ 0x" not in l)[-3000:]
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


def test_seeds_split_over_devices_equal_one_device(tmp_path):
    """train.seed_devices: 4 vmapped seeds split over 2 devices (and DDPG's also over 4) give each seed's
    one-device metrics, the stack really lives on that many devices, the split program has no collectives (seeds
    never wait on each other) and traces once; a seed count the devices do not divide is refused before anything
    is written."""
    data = write_prepared(synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=3), tmp_path / "syn")
    r = worker("seed_runs", data, tmp_path)
    for name, splits in SEED_SPLITS.items():
        for devices in splits:
            assert r[f"{name}_metric_diff_{devices}"] < 1e-4, (name, devices, r)
            assert r[f"{name}_spans_{devices}"] == [devices], (name, devices, r)
            assert r[f"{name}_traces_{devices}"] == 1, (name, devices, r)
        assert r[f"{name}_spans_1"] == [1] and r[f"{name}_traces_1"] == 1, (name, r)
    assert r["collectives"] == [0] * sum(map(len, SEED_SPLITS.values())), r  # one check per split run
    assert r["indivisible_rc"] == 2 and r["indivisible_left_nothing"]


def test_seed_devices_refused_where_they_cannot_be_used(tmp_path, capsys):
    """train.seed_devices fails before anything is written: more devices than exist (with the CPU hint), a run
    of one seed, a fit-once baseline, and together with --devices."""
    data = write_prepared(synthetic_interactions(n_users=30, n_items=20, per_user=(10, 20)), tmp_path / "syn")
    base = ["--quick", "--data", str(data), "--quiet"]
    cases = [(["--exp=sasrec", "--seeds", "2", "--set", "train.seed_devices=64"],
              "train.seed_devices: 64 requested but only 1 devices exist (on a CPU: "
              "XLA_FLAGS=--xla_force_host_platform_device_count=64"),
             (["--exp=sasrec", "--devices", "2", "--seeds", "2", "--set", "train.seed_devices=2"],
              "train.seed_devices: splits the seeds over devices and --devices splits one seed's batch")]
    for i, (args, message) in enumerate(cases):
        assert main(args + base + ["--run-dir", str(tmp_path / f"r{i}")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / f"r{i}").exists()
    from experiments import loop
    from experiments.registry import EXPERIMENTS
    from jaxrec import config as C
    from jaxrec.errors import ConfigError

    cfg = C.apply_overrides(EXPERIMENTS["sasrec"].make_config(), ["train.seed_devices=2"])
    for n, batchable, seed_batch, why in ((1, True, 0, "this run trains one seed"),
                                          (4, True, 1, "train.seed_batch=1 trains the seeds one after another"),
                                          (4, False, 0, "sasrec trains its seeds one after another"),
                                          (5, True, 0, "2 does not divide the seed batches (5 states)"),
                                          (7, True, 4, "2 does not divide the seed batches (3, 4 states)")):
        c = C.apply_overrides(cfg, [f"train.seed_batch={seed_batch}"])
        with pytest.raises(ConfigError, match=re.escape(why)):
            loop.check_seed_batches(c, n, batchable)
    loop.check_seed_batches(C.apply_overrides(cfg, ["train.seed_batch=4"]), 8, True)  # 4 + 4: fine
