"""Every entry point answers bad input with ONE line ``error: WHERE: ...`` on stderr and exit status 2, never
a traceback, before any long work, and without touching what existed before.

``CORPUS`` is the table of malformed inputs: one row per case, over every entry point. Most rows call the
script's ``main(argv)`` in-process (fast); at least one row per script runs it as a subprocess, to prove
that nothing else (a traceback, a usage text, a warning) reaches the terminal. Every row runs with the
working directory in a scratch tree of inputs, which must be byte-identical afterwards, with no file or
directory added (outputs with relative default paths would land there too).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, synthetic_interactions, write_features, write_prepared


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    script: str
    argv: tuple[str, ...]
    """Arguments; ``{name}`` is replaced by the path of ``name`` in the scratch tree (see ``world``)."""
    expect: tuple[str, ...]
    """Substrings of the error line (formatted like ``argv``): the file, line or flag it must name."""
    subprocess: bool = False
    xfail: str | None = None
    """Known gaps outside this change (strict: the mark must go once they are fixed)."""


def case(id, script, argv, *expect, sub=False, xfail=None):
    return Case(id, script, tuple(argv), tuple(expect), sub, xfail)


DDPG, SQN, SQN_MEM = "benchmarks/ddpg_throughput.py", "benchmarks/sqn_throughput.py", "benchmarks/sqn_memory.py"
PREP_SPEED, FEAT_BENCH = "benchmarks/prepare_speed.py", "benchmarks/feature_extraction.py"
MM, TO_README = "benchmarks/multimodal_overhead.py", "benchmarks/to_readme.py"
SWEEP, SCALING = "benchmarks/seed_sweep.py", "benchmarks/scaling.py"
SEQ_MEM, SEQ_SPEED = "benchmarks/seq_plus_memory.py", "benchmarks/seq_plus_speed.py"
REPORT, ABLATE, RECOMMEND, RUN = "experiments/report.py", "experiments/ablate.py", "experiments/recommend.py", "experiments/run.py"
CURVES = "experiments/curves.py"
PREPARE, EXTRACT = "data_prep/prepare.py", "data_prep/extract_features.py"

CORPUS = [
    # benchmarks/ddpg_throughput.py
    case("ddpg-no-data", DDPG, ["--data", "{nodata}", "--quick"], "{nodata}: no such data directory", sub=True),
    case("ddpg-garbage-npz", DDPG, ["--data", "{garbage}"], "{garbage}/interactions.npz: not a readable .npz"),
    case("ddpg-no-meta", DDPG, ["--data", "{nometa}"], "{nometa}/meta.json: missing"),
    case("ddpg-repeats-0", DDPG, ["--data", "{data}", "--repeats", "0"], "--repeats: 0, expected a positive"),
    case("ddpg-settings-not-int", DDPG, ["--data", "{data}", "--settings", "1,x"], "--settings: '1,x'"),
    case("ddpg-unknown-baseline", DDPG, ["--data", "{data}", "--baselines", "seed,fast"], "--baselines: 'seed,fast'"),
    case("ddpg-unknown-flag", DDPG, ["--bogus"], "unrecognized arguments: --bogus"),
    # benchmarks/seed_sweep.py
    case("sweep-no-data", SWEEP, ["--data", "{nodata}", "--quick"], "{nodata}: no such data directory", sub=True),
    case("sweep-one-seed", SWEEP, ["--seeds", "1"], "--seeds: 1, expected at least 2"),
    case("sweep-unknown-exp", SWEEP, ["--exps", "ddpg_id,nope"], "--exps: 'nope': unknown"),
    case("sweep-bad-key", SWEEP, ["--data", "{data}", "--set", "model.bogus=1"], "--set model.bogus: unknown key"),
    case("sweep-fit-once", SWEEP, ["--data", "{data}", "--exps", "popularity"], "--exps: popularity does not train seeds"),
    case("sweep-seed-devices-0", SWEEP, ["--seed-devices", "0"], "--seed-devices: 0, expected a positive"),
    case("sweep-seed-devices-indivisible", SWEEP, ["--seeds", "4", "--seed-devices", "3"],
         "--seed-devices: 3 does not divide --seeds 4"),
    # benchmarks/scaling.py
    case("scaling-no-data", SCALING, ["--data", "{nodata}", "--quick"], "{nodata}: no such data directory", sub=True),
    case("scaling-one-count", SCALING, ["--devices", "1"], "--devices: [1], expected at least two"),
    case("scaling-not-parallel", SCALING, ["--exps", "popularity"], "--exps: 'popularity': not a data-parallel"),
    case("scaling-devices-not-int", SCALING, ["--devices", "1,two"], "--devices: '1,two'"),
    # benchmarks/sqn_throughput.py
    case("sqn-meta-not-json", SQN, ["--data", "{badmeta}"], "{badmeta}/meta.json:2: not valid JSON", sub=True),
    case("sqn-threads", SQN, ["--data", "{data}", "--torch-threads", "many"], "--torch-threads: 'many'"),
    case("sqn-repeats-negative", SQN, ["--data", "{data}", "--repeats", "-1"], "--repeats: -1"),
    case("sqn-no-npz", SQN, ["--data", "{nonpz}"], "{nonpz}/interactions.npz: missing"),
    # benchmarks/sqn_memory.py (a standard-library parent: these checks import no numpy)
    case("sqn-memory-no-meta", SQN_MEM, ["--data", "{nometa}"], "{nometa}/meta.json: missing", sub=True),
    case("sqn-memory-steps-0", SQN_MEM, ["--data", "{data}", "--steps", "0"], "--steps: 0, expected a positive"),
    case("sqn-memory-meta-no-n-users", SQN_MEM, ["--data", "{metakeys}"], "{metakeys}/meta.json: 'n_users' missing"),
    # benchmarks/seq_plus_memory.py (standard-library parent, as sqn_memory)
    case("seq-memory-no-meta", SEQ_MEM, ["--data", "{nometa}"], "{nometa}/meta.json: missing", sub=True),
    case("seq-memory-steps-0", SEQ_MEM, ["--data", "{data}", "--steps", "0"], "--steps: 0, expected a positive"),
    case("seq-memory-unknown-exp", SEQ_MEM, ["--data", "{data}", "--exps", "sasrec_plus,sasrec"], "--exps: sasrec: expected"),
    # benchmarks/seq_plus_speed.py
    case("seq-speed-no-data", SEQ_SPEED, ["--data", "{nodata}", "--quick"], "{nodata}: no such data directory", sub=True),
    case("seq-speed-repeats-0", SEQ_SPEED, ["--data", "{data}", "--repeats", "0"], "--repeats: 0, expected a positive"),
    case("seq-speed-unknown-exp", SEQ_SPEED, ["--data", "{data}", "--exps", "sasrec"], "--exps: sasrec: expected"),
    # benchmarks/prepare_speed.py
    case("prepare-speed-rows-0", PREP_SPEED, ["--rows", "0"], "--rows: 0, expected a positive"),
    case("prepare-speed-workdir-file", PREP_SPEED, ["--quick", "--workdir", "{a_file}"], "--workdir: {a_file} exists and is not a directory", sub=True),
    case("prepare-speed-seed-negative", PREP_SPEED, ["--seed", "-3"], "--seed: -3"),
    # benchmarks/feature_extraction.py
    case("feature-bench-batch-0", FEAT_BENCH, ["--batch-size", "0"], "--batch-size: 0, expected a positive"),
    case("feature-bench-items-not-int", FEAT_BENCH, ["--items", "many"], "--items: invalid int value: 'many'"),
    case("feature-bench-repeats-negative", FEAT_BENCH, ["--quick", "--repeats", "-1"], "--repeats: -1", sub=True),
    # benchmarks/multimodal_overhead.py
    case("mm-no-features", MM, ["--data", "{data}", "--features", "{nofeatures}"], "{nofeatures}/manifest.json: missing"),
    case("mm-unknown-modality", MM, ["--data", "{data}", "--features", "{features}", "--modalities", "text,nope"],
         "{features}/manifest.json: no modality 'nope'"),
    case("mm-garbage-npz", MM, ["--data", "{garbage}", "--features", "{features}"], "{garbage}/interactions.npz: not a readable"),
    case("mm-steps-0", MM, ["--steps", "0"], "--steps: 0, expected a positive", sub=True),
    # benchmarks/to_readme.py
    case("to-readme-missing-results", TO_README, ["--results", "{nodata}.txt"], "{nodata}.txt: no such results file", sub=True),
    case("to-readme-incomplete-result", TO_README, ["--results", "{results_bad}"], "{results_bad}:2: result 'x' lacks", "'ours'"),
    case("to-readme-no-markers", TO_README, ["--results", "{results_good}", "--readme", "{readme}"],
         "{readme}: no '<!-- table:benchmarks -->'"),
    case("to-readme-missing-readme", TO_README, ["--results", "{results_good}", "--readme", "{nodata}.md"], "{nodata}.md: no such file"),
    # experiments/report.py
    case("report-no-final", REPORT, ["--runs", "{norun}"], "{norun}/final.json: missing", sub=True),
    # experiments/curves.py
    case("curves-no-metrics", CURVES, ["--runs", "a={norun}", "--out", "{new_out}.png"], "{norun}: no metrics.jsonl", sub=True),
    case("curves-ref-not-number", CURVES, ["--runs", "a={run}", "--ref", "pub=high", "--out", "{new_out}.png"],
         "--ref: pub=high: not a number"),
    case("curves-metric-no-protocol", CURVES, ["--runs", "a={run}", "--metric", "ndcg@10", "--out", "{new_out}.png"],
         "--metric: 'ndcg@10': expected PROTOCOL/METRIC"),
    case("curves-run-without-label", CURVES, ["--runs", "{run}", "--out", "{new_out}.png"], "--runs: '"),
    case("report-no-markers", REPORT, ["--runs", "{run}", "--readme", "{readme}", "--section", "results"],
         "{readme}: no '<!-- table:results -->'"),
    case("report-final-not-json", REPORT, ["--runs", "{badfinal}"], "{badfinal}/final.json:1: not valid JSON"),
    case("report-bad-part", REPORT, ["--runs", "{run}", "--part", "train"], "--part: invalid choice: 'train'"),
    case("report-readme-without-section", REPORT, ["--runs", "{run}", "--readme", "{readme}"], "--section: needed with --readme"),
    # experiments/ablate.py
    case("ablate-unknown-grid", ABLATE, ["--grid=nope"], "--grid: unknown grid 'nope'"),
    case("ablate-modalities-without-features", ABLATE, ["--grid=modalities"], "--features: the modalities grid"),
    case("ablate-bad-set-key", ABLATE, ["--grid=lambda", "--data", "{data}", "--out", "{new_out}", "--set", "bogus=1"],
         "--set bogus: unknown key"),
    case("ablate-seeds-0", ABLATE, ["--grid=lambda", "--data", "{data}", "--out", "{new_out}", "--seeds", "0"], "--seeds: must be >= 1"),
    case("ablate-seeds-not-int", ABLATE, ["--grid=lambda", "--seeds", "two"], "--seeds: invalid int value: 'two'", sub=True),
    case("ablate-no-data", ABLATE, ["--grid=lambda", "--data", "{nodata}", "--out", "{new_out}"], "{nodata}: no such data directory"),
    case("ablate-no-features", ABLATE, ["--grid=modalities", "--features", "{nofeatures}", "--data", "{data}"],
         "{nofeatures}/manifest.json: missing"),
    # experiments/recommend.py
    case("recommend-unknown-user", RECOMMEND, ["--run-dir", "{run}", "--user", "nobody"], "{data}/users.csv: no user with original id 'nobody'"),
    case("recommend-no-run", RECOMMEND, ["--run-dir", "{nodata}", "--user", "1"], "{nodata}/config.json: missing", sub=True),
    case("recommend-k-0", RECOMMEND, ["--run-dir", "{run}", "--user", "1", "--k", "0"], "--k: must be >= 1"),
    case("recommend-config-not-json", RECOMMEND, ["--run-dir", "{badcfg}", "--user", "1"], "{badcfg}/config.json:1: not valid JSON"),
    # experiments/run.py
    case("run-bad-set-key", RUN, ["--exp=popularity", "--data", "{data}", "--run-dir", "{new_out}", "--set", "bogus=1"],
         "--set bogus: unknown key"),
    case("run-seeds-0", RUN, ["--exp=popularity", "--data", "{data}", "--run-dir", "{new_out}", "--seeds", "0"], "--seeds: must be >= 1", sub=True),
    case("run-unknown-exp", RUN, ["--exp=nope"], "--exp: unknown experiment 'nope'"),
    case("run-sequence-mode-bidirectional", RUN, ["--exp=sasrec_plus", "--data", "{data}", "--run-dir", "{new_out}", "--set",
                                                  "model.causal=false"], "model.causal: sequence mode"),
    case("run-no-data", RUN, ["--exp=popularity", "--data", "{nodata}", "--run-dir", "{new_out}"], "{nodata}: no such data directory"),
    case("run-seeds-not-int", RUN, ["--exp=popularity", "--seeds", "two"], "--seeds: invalid int value: 'two'"),
    case("run-garbage-npz", RUN, ["--exp=popularity", "--data", "{garbage}", "--run-dir", "{new_out}"], "{garbage}/interactions.npz: not a readable"),
    # experiments/run.py, several processes: refused before JAX joins (or waits for) any other process
    case("run-process-id-out-of-range", RUN, ["--exp=m3s_tdlambda", "--quick", "--data", "{data}", "--run-dir", "{new_out}",
                                              "--devices", "2", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                                              "--process-id", "2"], "--process-id: 2 is not a process id of 2 processes (0..1)"),
    case("run-process-id-negative", RUN, ["--exp=m3s_tdlambda", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                                          "--process-id", "-1"], "--process-id: -1 is not a process id"),
    case("run-num-processes-without-coordinator", RUN, ["--exp=m3s_tdlambda", "--quick", "--data", "{data}", "--run-dir",
                                                        "{new_out}", "--num-processes", "2", "--process-id", "0"],
         "--coordinator: not given", "no cluster JAX can detect"),
    case("run-num-processes-0", RUN, ["--exp=m3s_tdlambda", "--coordinator", "127.0.0.1:1", "--num-processes", "0",
                                      "--process-id", "0"], "--num-processes: 0, expected a positive"),
    case("run-coordinator-without-port", RUN, ["--exp=m3s_tdlambda", "--coordinator", "localhost", "--num-processes", "2",
                                               "--process-id", "0"], "--coordinator: 'localhost', expected HOST:PORT"),
    case("run-process-id-not-int", RUN, ["--exp=m3s_tdlambda", "--process-id", "one"], "--process-id: invalid int value: 'one'"),
    case("run-devices-not-multiple-of-processes", RUN, ["--exp=m3s_tdlambda", "--quick", "--data", "{data}", "--run-dir",
                                                        "{new_out}", "--devices", "3", "--coordinator", "127.0.0.1:1",
                                                        "--num-processes", "2", "--process-id", "1"],
         "--devices: 3 does not split over 2 processes", sub=True),
    case("run-default-devices-over-processes", RUN, ["--exp=m3s_tdlambda", "--quick", "--data", "{data}", "--run-dir",
                                                     "{new_out}", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                                                     "--process-id", "0"], "--devices: 1 does not split over 2 processes"),
    # data_prep/prepare.py
    case("prepare-missing-column", PREPARE, ["table", "--src", "{csv_nocol}", "--user-col", "user", "--item-col", "item",
                                             "--rating-col", "rating", "--time-col", "timestamp", "--out", "{prepared_out}"],
         "{csv_nocol}: missing column 'timestamp'"),
    case("prepare-non-numeric-rating", PREPARE, ["table", "--src", "{csv_badrating}", "--user-col", "user", "--item-col", "item",
                                                 "--rating-col", "rating", "--time-col", "timestamp", "--out", "{prepared_out}"],
         "{csv_badrating}:4: column 'rating' has non-numeric value 'abc'", sub=True),
    case("prepare-flag-not-int", PREPARE, ["table", "--src", "{csv_badrating}", "--user-col", "user", "--item-col", "item",
                                           "--min-user-interactions", "five", "--out", "{prepared_out}"],
         "--min-user-interactions: invalid int value: 'five'"),
    case("prepare-no-src", PREPARE, ["events", "--src", "{nodata}.csv", "--out", "{prepared_out}"], "{nodata}.csv: no such file"),
    # data_prep/extract_features.py
    case("extract-unknown-modality", EXTRACT, ["--data", "{data}", "--modality", "video", "--model", "metadata", "--out", "{features}"],
         "--modality: invalid choice: 'video'", sub=True),
    case("extract-features-of-another-dataset", EXTRACT, ["--data", "{other}", "--modality", "meta", "--model", "metadata",
                                                          "--out", "{features}"],
         "{features}/manifest.json: holds features of another data set"),
    case("extract-no-data", EXTRACT, ["--data", "{nodata}", "--modality", "meta", "--model", "metadata", "--out", "{new_out}"],
         "{nodata}: no such data directory"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths of the scratch tree: good and malformed prepared data, features, a finished run, and so on."""
    from experiments.run import main as run_main

    root = tmp_path_factory.mktemp("cli_errors")
    inter = synthetic_interactions(n_users=50, n_items=30)
    w = {"root": root, "data": write_prepared(inter, root / "data")}
    w["other"] = write_prepared(synthetic_interactions(n_users=40, n_items=30, seed=1), root / "other", name="other")
    w["garbage"] = write_prepared(inter, root / "garbage")
    (w["garbage"] / "interactions.npz").write_bytes(b"this is not a zip archive\n" * 8)
    w["nometa"] = write_prepared(inter, root / "nometa")
    (w["nometa"] / "meta.json").unlink()
    w["nonpz"] = write_prepared(inter, root / "nonpz")
    (w["nonpz"] / "interactions.npz").unlink()
    w["badmeta"] = write_prepared(inter, root / "badmeta")
    (w["badmeta"] / "meta.json").write_text('{"n_users": 50,\n')
    w["metakeys"] = write_prepared(inter, root / "metakeys")
    (w["metakeys"] / "meta.json").write_text('{"name": "x", "n_items": 30}\n')
    rng = np.random.default_rng(0)
    w["features"] = write_features(root / "features", w["data"],
                                   {"text": (rng.standard_normal((30, 8)), np.ones(30, bool), "text")})
    w["run"] = root / "run"
    assert run_main(["--exp=popularity", "--data", str(w["data"]), "--run-dir", str(w["run"]),
                     "--set", "data.split.scheme=leave_last"]) == 0
    for name, file, text in (("norun", None, None), ("badfinal", "final.json", "{not json"), ("badcfg", "config.json", "{oops")):
        w[name] = root / name
        w[name].mkdir()
        if file:
            (w[name] / file).write_text(text)
    w["readme"] = root / "README.md"
    w["readme"].write_text("# A README\n\nwithout any table markers\n")
    w["results_good"] = root / "results_good.txt"
    w["results_good"].write_text('{"metric": "m", "ours": 2, "baseline": 1, "ratio": 2, "unit": "s", "device": "cpu"}\n')
    w["results_bad"] = root / "results_bad.txt"
    w["results_bad"].write_text('a log line\n{"metric": "x", "baseline": 1, "ratio": 1, "unit": "s", "device": "cpu"}\n')
    w["a_file"] = root / "a_file"
    w["a_file"].write_text("not a directory\n")
    w["csv_nocol"] = root / "nocol.csv"
    w["csv_nocol"].write_text("user,item,rating\n1,1,4\n1,2,5\n")
    w["csv_badrating"] = root / "badrating.csv"
    w["csv_badrating"].write_text("user,item,rating,timestamp\n1,1,4,10\n1,2,5,11\n2,1,abc,12\n")
    w["prepared_out"] = write_prepared(inter, root / "prepared_out")  # an existing --out: must stay as it is
    # Paths that must not exist (before or after).
    w["nodata"], w["nofeatures"], w["new_out"] = root / "nodata", root / "nofeatures", root / "new_out"
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256 of its bytes) and directory under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def module_of(script: str):
    return importlib.import_module(script[:-3].replace("/", "."))


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
                               for c in CORPUS])
def test_bad_input_gives_one_error_line_and_status_2(c: Case, world, capsys, monkeypatch):
    fmt = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fmt) for a in c.argv]
    before = snapshot(world["root"])
    monkeypatch.chdir(world["root"])
    if c.subprocess:
        res = subprocess.run([sys.executable, str(REPO / c.script), *argv], cwd=world["root"], capture_output=True,
                             text=True, timeout=300)
        rc, err = res.returncode, res.stderr
    else:
        rc = module_of(c.script).main(argv)
        err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for e in c.expect:
        assert e.format(**fmt) in lines[0], (e.format(**fmt), lines[0])
    assert rc == 2, (rc, err)
    assert snapshot(world["root"]) == before, "an existing input or output was modified, or something was created"


def test_corpus_covers_every_entry_point():
    scripts = {DDPG, SQN, SQN_MEM, SEQ_MEM, SEQ_SPEED, SWEEP, SCALING, PREP_SPEED, FEAT_BENCH, MM, TO_README, REPORT, CURVES, ABLATE, RECOMMEND, RUN, PREPARE, EXTRACT}
    bench = {f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("*.py") if p.name not in ("__init__.py", "common.py")}
    assert bench <= scripts, bench - scripts
    live = [c for c in CORPUS if not c.xfail]
    assert len(live) >= 30
    assert {c.script for c in live} == scripts
    assert {c.script for c in live if c.subprocess} == scripts  # each script once as its own process
    assert len({c.id for c in CORPUS}) == len(CORPUS)


def test_small_benchmark_parents_import_no_numpy():
    """prepare_speed, sqn_memory and feature_extraction measure their children's peak RSS, which counts the
    parent's memory at spawn time: their parents (input checks included) stay standard-library only."""
    code = ("import sys, benchmarks.prepare_speed, benchmarks.sqn_memory, benchmarks.seq_plus_memory, "
            "benchmarks.feature_extraction as f; "
            "assert benchmarks.sqn_memory.main(['--data', 'no/such/dir']) == 2; assert f.main(['--items', '0']) == 2; "
            "assert benchmarks.seq_plus_memory.main(['--data', 'no/such/dir']) == 2; "
            "print(sorted(m for m in ('numpy', 'pandas', 'jax', 'torch', 'data_prep.common', 'jaxrec.data.interactions') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


