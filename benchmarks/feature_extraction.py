"""Throughput and peak memory of ``data_prep/extract_features.py`` (text, a BERT-shaped model) against a
bare loop of the same model's forward pass.

  python benchmarks/feature_extraction.py [--quick] [--items N] [--batch-size B] [--repeats R] [--workdir DIR]

Methodology
-----------
1. Assets (no model hub): a random-weight BERT of realistic shape but small (4 layers, hidden 256, 4
   heads, FF 1024, 512 positions, a 3,000-word WordPiece vocabulary) saved with ``save_pretrained`` to a
   temp dir with its tokenizer; a prepared data dir of ``--items`` items (default 512; ``--quick`` 48)
   with titles and genres, and a csv of plots (40 to 200 pseudo-words each; ``--quick`` 10 to 40), all
   from ``np.random.default_rng(seed)``. Item text = title + genres + plot, as the extractor builds it.
2. Ours: the whole extractor, ``extract_features.main(--modality text --model DIR --src plots.csv
   --batch-size B --device cpu)`` called in-process: reading items.csv and the csv, loading the model by
   path and hashing its weights, tokenising per batch, the forward passes, streaming rows into the
   memory-mapped partial array (flushed per batch), publishing NAME.npy / mask / manifest.
3. Baseline: the same model, loaded once outside the timed region, run over the SAME batches (the
   extractor's own ``text_batches``: shortest texts first, fixed boundaries) pre-tokenised outside the
   timed region; timed = the bare loop of ``model(**batch).last_hidden_state[:, 0]`` to numpy. It is the
   floor any extractor needs, so the ratio ours / baseline says how much the rest costs (target >= 0.9).
4. Both under ``torch.inference_mode`` with the same threads (the cores this process may use), after an
   untimed warm-up forward. ``--repeats`` (default 3; ``--quick`` 1) alternate ours and the baseline;
   reported numbers are MEDIANS of items/s over repeats.
5. Peak RSS: the extractor run once more as its own process (``python data_prep/extract_features.py
   ...``), ``ru_maxrss`` of that child from ``os.wait4`` (Linux: KiB; reported in GB = 1e9 bytes). Its wall
   time (interpreter start and the torch/transformers imports included) is reported as ``cli_wall_s``.
   This parent imports only the standard library: Linux counts a parent's RSS at spawn time in the
   child's ``ru_maxrss``; model building and timing run in a separate ``--measure`` subprocess.
6. Output: the last line is one JSON object (docs/design.md, section 7): ``feature_extraction_items_per_s``, ratio =
   ours / baseline (> 1 would mean ours is faster), plus ``peak_rss_gb``, ``cli_wall_s`` and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device, load_note, non_negative, positive, work_parent  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402

EXTRACT = REPO / "data_prep" / "extract_features.py"
TARGET_RATIO = 0.9
BERT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, max_position_embeddings=512)
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


# ----------------------------------------------------------------------------------------------------
# The --measure subprocess: assets, then ours and the baseline timed side by side


def build_assets(work: Path, n_items: int, plot_words: tuple[int, int], seed: int) -> tuple[Path, Path, Path]:
    """(model dir, data dir, plots csv) under ``work``."""
    import numpy as np
    import pandas as pd
    import torch
    import transformers
    from transformers import BertConfig, BertModel, BertTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dor", "lin", "mar", "tes"]
    words = sorted({"".join(rng.choice(syllables, rng.integers(2, 4))) for _ in range(20_000)})[:3000]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "(", ")", "-", "'"]
    vocab = special + list("0123456789") + [g.lower() for g in GENRES] + words
    model_dir = work / "bert"
    model_dir.mkdir(parents=True)
    (work / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(dict.fromkeys(vocab)), **BERT)).save_pretrained(model_dir)
    BertTokenizer(str(work / "vocab.txt")).save_pretrained(model_dir)

    ids = rng.choice(10 * n_items, n_items, replace=False) + 1
    titles = [" ".join(rng.choice(words, rng.integers(1, 5))).title() + f" ({rng.integers(1930, 2001)})" for _ in ids]
    genres = ["|".join(rng.choice(GENRES, rng.integers(1, 4), replace=False)) for _ in ids]
    data = work / "data"  # a prepared data dir (docs/design.md, section 2): one user who rated every item
    data.mkdir()
    np.savez(data / "interactions.npz", user=np.zeros(n_items, np.int32), item=np.arange(n_items, dtype=np.int32),
             rating=np.full(n_items, 4, np.float32), order=np.arange(n_items, dtype=np.int64))
    (data / "meta.json").write_text(json.dumps({
        "name": "bench", "n_users": 1, "n_items": n_items, "n_interactions": n_items, "rating_min": 4.0,
        "rating_max": 4.0, "sources": [], "format_version": 1}))
    pd.DataFrame({"item": range(n_items), "original_id": ids, "title": titles, "genres": genres}).to_csv(data / "items.csv", index=False)
    plots = [" ".join(rng.choice(words, rng.integers(*plot_words))) + "." for _ in ids]
    csv = work / "plots.csv"
    pd.DataFrame({"movie_id": ids, "plot": plots}).to_csv(csv, index=False)
    return model_dir, data, csv


def measure(args) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    import transformers

    from data_prep import extract_features as xf

    work = Path(args.measure)
    model_dir, data, csv = build_assets(work, args.items, (10, 40) if args.quick else (40, 200), args.seed)
    argv = ["--data", str(data), "--modality", "text", "--model", str(model_dir), "--src", str(csv),
            "--batch-size", str(args.batch_size), "--device", "cpu", "--quiet"]

    # The baseline's inputs, prepared outside its timed region: the extractor's texts and batches.
    items = pd.read_csv(data / "items.csv", dtype=str, keep_default_na=False)
    texts, _ = xf.item_texts(items, csv)
    order = xf.text_batches(texts, args.batch_size)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    max_length = min(512, tok.model_max_length, model.config.max_position_embeddings)
    batches = [tok([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
               for rows in order]
    n = sum(len(rows) for rows in order)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    threads = len(os.sched_getaffinity(0))

    def baseline() -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = [model(**b).last_hidden_state[:, 0].numpy() for b in batches]
        wall = time.perf_counter() - t0
        assert sum(len(o) for o in out) == n
        return n / wall

    def ours(r: int) -> float:
        out = work / f"out-{r}"
        t0 = time.perf_counter()
        rc = xf.main(argv + ["--out", str(out)])
        wall = time.perf_counter() - t0
        if rc != 0:
            sys.exit(f"extractor failed with status {rc}")
        x = np.load(out / "text.npy")
        assert x.shape[0] == args.items and np.load(out / "text_mask.npy").sum() == n
        shutil.rmtree(out)
        return n / wall

    with torch.inference_mode():  # warm-up: first-call kernel setup is not what either side is about
        torch.set_num_threads(threads)
        model(**batches[0])
    load_note("before")
    results = {"ours": [], "baseline": []}
    for r in range(args.repeats):
        results["ours"].append(ours(r))
        results["baseline"].append(baseline())
        print(f"repeat {r + 1}/{args.repeats}: ours {results['ours'][-1]:.1f} items/s, "
              f"baseline {results['baseline'][-1]:.1f} items/s", flush=True)
    load_note("after")
    return {**results, "items": n, "tokens": tokens, "batches": len(order), "torch_threads": threads,
            "argv": argv, "model": f"BERT random weights, {BERT['num_hidden_layers']} layers, hidden {BERT['hidden_size']}, "
                                   f"FF {BERT['intermediate_size']}, vocab {model.config.vocab_size}"}


# ----------------------------------------------------------------------------------------------------
# The parent: standard library only


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of ``cmd``; exits with its log tail if it fails."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "CI": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    if proc.returncode != 0:
        sys.exit(f"command failed with status {proc.returncode}: {' '.join(cmd)}\n{log.read_text(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss: KiB on Linux


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked (InputError naming the flag) before anything is built or run."""
    p = ArgParser(prog="feature_extraction.py", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="48 short items, 1 repeat (a smoke test)")
    p.add_argument("--items", type=int, help="synthetic items (default 512; --quick 48)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, help="alternating runs of ours / baseline (default 3; --quick 1)")
    p.add_argument("--workdir", help="directory for the temp files (default: the system temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the measuring subprocess's work dir
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    args.items = positive("--items", args.items) or (48 if args.quick else 512)
    args.repeats = positive("--repeats", args.repeats) or (1 if args.quick else 3)
    positive("--batch-size", args.batch_size)
    non_negative("--seed", args.seed)
    if not args.measure:
        args.workdir = work_parent("--workdir", args.workdir)  # absolute: the children run in the repo root
    return args


def main_args(argv) -> None:
    args = parse_args(argv)
    if args.measure:
        (Path(args.measure) / "timing.json").write_text(json.dumps(measure(args)))
        return
    work = Path(tempfile.mkdtemp(prefix="feature_extraction-", dir=args.workdir))
    try:
        cmd = [sys.executable, __file__, "--measure", str(work), "--items", str(args.items), "--batch-size",
               str(args.batch_size), "--repeats", str(args.repeats), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
        run_child(cmd, work / "measure.log")
        print((work / "measure.log").read_text(errors="replace").rstrip())
        t = json.loads((work / "timing.json").read_text())
        cli = [sys.executable, str(EXTRACT), *t["argv"], "--out", str(work / "out-cli")]
        cli_wall, rss_gb = run_child(cli, work / "cli.log")
        print(f"extractor as its own process: {cli_wall:.2f} s wall (imports included), peak RSS {rss_gb:.3f} GB | "
              f"{(work / 'cli.log').read_text(errors='replace').strip().splitlines()[-1]}")
        ours, base = statistics.median(t["ours"]), statistics.median(t["baseline"])
        ratio = ours / base
        print(f"{t['items']} items, {t['tokens']:,} tokens, {t['batches']} batches of <= {args.batch_size}; "
              f"target ours/baseline >= {TARGET_RATIO}: {ratio:.3f} {'OK' if ratio >= TARGET_RATIO else 'MISSED'}"
              + (" [--quick: startup costs weigh more on few items; indicative only]" if args.quick else ""))
        print(json.dumps({
            "metric": "feature_extraction_items_per_s", "ours": round(ours, 2), "baseline": round(base, 2),
            "ratio": round(ratio, 3), "unit": "items/s", "device": device(),
            "ours_setting": "whole extractor (data, model load + hash, tokenise, forward, memmap, manifest)",
            "baseline_setting": "bare forward loop over the same pre-tokenised batches",
            "peak_rss_gb": round(rss_gb, 3), "cli_wall_s": round(cli_wall, 2), "items": t["items"], "tokens": t["tokens"],
            "batch_size": args.batch_size, "model": t["model"], "torch_threads": t["torch_threads"],
            "repeats": args.repeats, "ours_all": [round(x, 2) for x in t["ours"]],
            "baseline_all": [round(x, 2) for x in t["baseline"]], "target": TARGET_RATIO,
        }), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
