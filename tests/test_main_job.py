"""The README's main job, offline variant: prepare MovieLens from a local copy, extract weight-free text and
metadata features, run ddpg_multimodal (here --quick on ML-100K, the same commands as the README's ML-1M)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

SHARED_DATA = Path(os.environ.get("JAXREC_SHARED_DATA") or REPO.parent / "shared" / "data")
ML100K = SHARED_DATA / "ml-100k"


def _run(*args):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "CI": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="the real ML-100K is not beside the repository")
def test_offline_main_job_chain(tmp_path):
    data, feats, run = tmp_path / "ml-100k", tmp_path / "features", tmp_path / "run"
    _run("data_prep/prepare.py", "movielens", "--variant", "ml-100k", "--src", str(ML100K), "--out", str(data),
         "--positive-threshold", "4")
    _run("data_prep/extract_features.py", "--data", str(data), "--modality", "text", "--model", "tfidf-svd:32",
         "--out", str(feats))
    _run("data_prep/extract_features.py", "--data", str(data), "--modality", "meta", "--model", "metadata", "--out", str(feats))
    manifest = json.loads((feats / "manifest.json").read_text())
    assert {k: v["items_present"] for k, v in manifest["modalities"].items()} == {"text": 1682, "meta": 1682}
    _run("experiments/run.py", "--exp=ddpg_multimodal", "--quick", "--data", str(data), "--features", str(feats),
         "--run-dir", str(run))
    final = json.loads((run / "final.json").read_text())
    assert final["exp"] == "ddpg_multimodal" and set(final["test"]) == {"drr", "full"}
    assert 0.0 < final["test"]["full"]["hr@10"] <= 1.0
