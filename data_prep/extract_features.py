"""Extracts per-item features of one modality into a features directory (docs/design.md, section 3).

  python data_prep/extract_features.py --data DIR --modality text|image|audio|meta
      --model HUB_ID_OR_PATH|tfidf-svd:DIM|metadata [--src MEDIA_DIR_OR_CSV] --out FEATURES_DIR
      [--name NAME] [--pooling cls|mean] [--batch-size N] [--device cpu|cuda|auto] [--max-length N]
      [--note TEXT] [--restart] [--quiet] [--debug]

What each item is made of (items are matched by the ``original_id`` column of the data's items.csv):
- text: title and genres from items.csv, plus a longer text from ``--src`` (a csv/tsv with an id
  column ``original_id``, ``movie_id`` or ``item`` and a text column ``plot``, ``text`` or
  ``description``), encoded by a BERT-style model, or by ``tfidf-svd:DIM`` (TF-IDF, then a truncated
  SVD to DIM dimensions, rows L2-normalised: no model weights needed);
- image: ``--src`` holds ``ORIGINAL_ID.jpg|jpeg|png`` (a poster) or a folder ``ORIGINAL_ID/`` of
  frames (features averaged over the frames), encoded by a ViT-style model;
- audio: ``--src`` holds ``ORIGINAL_ID.wav|flac|mp3|ogg``, encoded by an AST-style model over
  windows of its input length (features averaged over the windows);
- meta (``--model metadata``): genres multi-hot and the release year from the title (standardised,
  plus a has-year flag).
Items without the media get a zero row and mask False.

Output: ``OUT/NAME.npy``, ``OUT/NAME_mask.npy`` and this modality's entry in ``OUT/manifest.json``
(other modalities already in OUT are kept; NAME defaults to the modality). Model extraction streams
into ``OUT/.partial/`` batch by batch, so an interrupted run resumes where it stopped when re-run with
the same arguments, and gives the same bytes as an uninterrupted one (``--restart`` discards the
partial state instead). Bad input exits 2 with one line ``error: FILE[:LINE]: ...``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.common import file_digest, read_delimited, require_columns
from jaxrec.cli import ArgParser, cli_main
from data_prep.encoders import AUDIO_SUFFIXES, IMAGE_SUFFIXES, one_line, load_encoder
from jaxrec.errors import InputError
from jaxrec.features.store import FORMAT_VERSION, MANIFEST, array_path, check_name, mask_path, read_manifest

TEXT_ID_COLUMNS = ("original_id", "movie_id", "item")
TEXT_COLUMNS = ("plot", "text", "description")
NO_GENRES = ("", "(no genres listed)")
YEAR_RE = re.compile(r"\((\d{4})\)\s*$")
TFIDF_RE = re.compile(r"tfidf-svd:(\d+)")


# ----------------------------------------------------------------------------------------------------
# The prepared data


def read_data(data_dir) -> tuple[Path, str, int, pd.DataFrame]:
    """(meta.json path, its sha256, n_items, items frame of strings) of a prepared data directory."""
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(d, "no such data directory; prepare it first with data_prep/prepare.py")
    meta_path, items_path = d / "meta.json", d / "items.csv"
    for f in (meta_path, items_path):
        if not f.is_file():
            raise InputError(f, "missing; expected a prepared data directory (data_prep/prepare.py)")
    try:
        n_items = json.loads(meta_path.read_text(encoding="utf-8"))["n_items"]
    except json.JSONDecodeError as e:
        raise InputError(meta_path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    except (KeyError, TypeError, UnicodeDecodeError):
        raise InputError(meta_path, "has no n_items; expected the meta.json of a prepared data directory") from None
    # Strings throughout: ids are matched as text (a media file name, a csv cell), and titles stay as
    # written (no "NA" turned into a missing value), as load_prepared reads them.
    try:
        items = pd.read_csv(items_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(items_path, f"not a readable items table ({one_line(e)}); expected the items.csv of prepare.py") from None
    require_columns(items, ["item", "original_id"], str(items_path))
    if len(items) != n_items or not (items["item"].to_numpy() == np.arange(n_items).astype(str)).all():
        raise InputError(items_path, f"expected {n_items} rows listing items 0..{n_items - 1} in order (meta.json n_items)")
    return meta_path, file_digest(meta_path), n_items, items


def file_record(path) -> dict:
    return {"path": str(path), "sha256": file_digest(path)}


# ----------------------------------------------------------------------------------------------------
# What each item is made of


def genre_words(genres: str) -> list[str]:
    return [g.strip() for g in genres.split("|") if g.strip() not in NO_GENRES]


def read_text_table(path: Path) -> tuple[pd.DataFrame, str, str]:
    """(frame, id column, text column) of a ``--src`` table of long texts keyed by original id."""
    if not path.is_file():
        raise InputError(path, "no such file; --src for text is a csv/tsv of item texts")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    df = read_delimited(path, str(path), sep=sep, dtype=str)
    lower = {str(c).strip().lower(): c for c in df.columns}
    id_col = next((lower[c] for c in TEXT_ID_COLUMNS if c in lower), None)
    text_col = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
    if id_col is None or text_col is None:
        raise InputError(path, f"needs an id column ({' or '.join(TEXT_ID_COLUMNS)}) and a text column "
                               f"({' or '.join(TEXT_COLUMNS)}); the columns are {list(map(str, df.columns))}")
    ids = df[id_col].fillna("").str.strip()
    dup = ids.duplicated() & (ids != "")
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise InputError(path, f"id {ids.iloc[i]!r} appears twice (rows {int(np.argmax((ids == ids.iloc[i]).to_numpy())) + 1} "
                               f"and {i + 1} of the table), expected one text per item")
    return df.assign(**{id_col: ids}), id_col, text_col


def item_texts(items: pd.DataFrame, src: Path | None) -> tuple[list[str], dict]:
    """Per item: title, genres as words, and the ``--src`` text when given ('' when there is nothing)."""
    n = len(items)
    titles = items["title"].str.strip() if "title" in items else pd.Series([""] * n)
    genres = [", ".join(genre_words(g)) for g in items["genres"]] if "genres" in items else [""] * n
    extra = [""] * n
    source = {"fields": [c for c in ("title", "genres") if c in items]}
    if src is not None:
        df, id_col, text_col = read_text_table(src)
        texts = dict(zip(df[id_col], df[text_col].fillna("").str.strip()))
        extra = [texts.get(oid, "") for oid in items["original_id"].str.strip()]
        matched = sum(1 for oid in items["original_id"].str.strip() if oid in texts)
        if matched == 0:
            raise InputError(src, f"no id in column {id_col!r} matches an item's original_id in items.csv "
                                  f"(ids here: {list(df[id_col][:3])}, items: {list(items['original_id'][:3])})")
        source["csv"] = {**file_record(src), "id_column": str(id_col), "text_column": str(text_col),
                         "rows": len(df), "items_matched": matched}
        source["fields"].append(str(text_col))
    out = [". ".join(p for p in (t, g, x) if p) for t, g, x in zip(titles, genres, extra)]
    return out, source


def find_media(src: Path | None, items: pd.DataFrame, modality: str) -> tuple[dict[int, object], dict]:
    """({item: payload}, source record) for media files named by original id under ``src``.

    Image payloads are lists of files (one poster, or a folder's frames in name order); audio payloads
    one file. The record's sha256 covers the names and bytes of every file used, so a partial
    extraction is never resumed over changed media.
    """
    if src is None:
        raise InputError("--src", f"--modality {modality} needs --src, a directory of media files named by original id")
    if not src.is_dir():
        raise InputError(src, f"no such directory; --src for {modality} is a directory of media files named by original id")
    suffixes = IMAGE_SUFFIXES if modality == "image" else AUDIO_SUFFIXES
    item_of = {oid.strip(): i for i, oid in enumerate(items["original_id"])}
    found: dict[int, object] = {}
    names: dict[int, str] = {}
    unmatched = 0
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in suffixes:
            key, payload = entry.stem, ([entry] if modality == "image" else entry)
        elif entry.is_dir() and modality == "image":
            frames = sorted(f for f in entry.iterdir()
                            if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith("."))
            if not frames:
                continue
            key, payload = entry.name, frames
        else:
            continue
        item = item_of.get(key)
        if item is None:
            unmatched += 1
            continue
        if item in found:
            raise InputError(src, f"two media for original id {key}: {names[item]} and {entry.name}; expected one")
        found[item], names[item] = payload, entry.name
    if not found:
        raise InputError(src, f"no {'/'.join(suffixes)} file or frames folder is named by an item's original id "
                              f"(e.g. {items['original_id'].iloc[0]}{suffixes[0]}); expected media named by original id")
    h = hashlib.sha256()
    n_files = 0
    for item in sorted(found):
        for f in (found[item] if modality == "image" else [found[item]]):
            h.update(f"{f.relative_to(src)}\0{file_digest(f)}\n".encode())
            n_files += 1
    source = {"path": str(src), "files": n_files, "items_matched": len(found), "unmatched_entries": unmatched,
              "sha256": h.hexdigest()}
    return found, source


# ----------------------------------------------------------------------------------------------------
# Weight-free extractors


def tfidf_svd(texts: list[str], dim: int) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(features [n, dim], mask, sha256 of the fitted vocabulary/idf/components, info).

    TF-IDF (sublinear tf, English stop words, terms in >= 2 texts) of the non-empty texts, then
    TruncatedSVD with ARPACK from a seeded start vector (deterministic), rows L2-normalised. A text
    with no term of the vocabulary carries no information: mask False, zero row.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    rows = np.flatnonzero([bool(t) for t in texts])
    vec = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2, dtype=np.float64)
    try:
        x = vec.fit_transform([texts[i] for i in rows])
    except ValueError as e:  # empty vocabulary
        raise InputError("--model", f"tfidf-svd: {e}; expected item texts sharing words") from None
    if dim >= min(x.shape):
        raise InputError("--model", f"tfidf-svd:{dim} needs fewer dimensions than both the texts ({x.shape[0]}) "
                                    f"and the vocabulary ({x.shape[1]} terms)")
    svd = TruncatedSVD(n_components=dim, algorithm="arpack", random_state=0)
    z = svd.fit_transform(x)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    has_terms = np.diff(x.indptr) > 0
    features = np.zeros((len(texts), dim), np.float32)
    features[rows[has_terms]] = z[has_terms]
    mask = np.zeros(len(texts), bool)
    mask[rows[has_terms]] = True
    h = hashlib.sha256()
    h.update(json.dumps(sorted(vec.vocabulary_.items())).encode())
    h.update(np.ascontiguousarray(vec.idf_, np.float64).tobytes())
    h.update(np.ascontiguousarray(svd.components_, np.float64).tobytes())
    info = {"vectorizer": "TfidfVectorizer(sublinear_tf=True, stop_words='english', min_df=2)",
            "svd": "TruncatedSVD(algorithm='arpack', random_state=0)", "vocabulary": len(vec.vocabulary_),
            "explained_variance_ratio": round(float(svd.explained_variance_ratio_.sum()), 6),
            "normalised": "l2 rows"}
    return features, mask, h.hexdigest(), info


def metadata_features(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """(features [n, n_genres + 2], mask, column names, info): genres multi-hot (sorted genre names),
    the release year parsed from a title ending in "(YYYY)" standardised over the items that have one,
    and a has-year flag. Items with neither genres nor a year get mask False and a zero row."""
    if "genres" not in items and "title" not in items:
        raise InputError("items.csv", "has no title or genres column; --modality meta needs them")
    n = len(items)
    per_item = [genre_words(g) for g in items["genres"]] if "genres" in items else [[] for _ in range(n)]
    vocab = sorted({g for gs in per_item for g in gs})
    col = {g: j for j, g in enumerate(vocab)}
    features = np.zeros((n, len(vocab) + 2), np.float32)
    for i, gs in enumerate(per_item):
        features[i, [col[g] for g in gs]] = 1.0
    titles = items["title"] if "title" in items else pd.Series([""] * n)
    years = titles.str.extract(YEAR_RE, expand=False).astype(float).to_numpy()
    has_year = ~np.isnan(years)
    mean = float(years[has_year].mean()) if has_year.any() else 0.0
    std = float(years[has_year].std()) if has_year.sum() > 1 else 0.0
    std = std if std > 0 else 1.0
    features[has_year, len(vocab)] = ((years[has_year] - mean) / std).astype(np.float32)
    features[has_year, len(vocab) + 1] = 1.0
    mask = features.any(axis=1)
    columns = [f"genre:{g}" for g in vocab] + ["year_z", "has_year"]
    return features, mask, columns, {"year_mean": mean, "year_std": std, "items_with_year": int(has_year.sum())}


# ----------------------------------------------------------------------------------------------------
# Output: partial state, then the features directory


@contextlib.contextmanager
def _flock(path: Path, blocking: bool, busy: str = ""):
    """An exclusive advisory lock on ``path`` (a directory, or a file created if need be), held for the block."""
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(path, busy) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def check_out(out: Path, meta_sha: str) -> dict | None:
    """The manifest already in ``out`` (None if there is none), refusing one of another data set."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory; --out is a features directory")
    if not (out / MANIFEST).exists():
        return None
    manifest = read_manifest(out / MANIFEST)
    if manifest["data_meta_sha256"] != meta_sha:
        raise InputError(out / MANIFEST, "holds features of another data set (its data_meta_sha256 differs from this "
                                         "data's meta.json); use another --out")
    return manifest


def _write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class Partial:
    """``OUT/.partial/NAME.npy`` (float32 [n_items, dim]) and ``NAME_done.npy`` (bool [n_items]) as
    memory maps, and ``NAME.json``: the arguments that determine the values. Whole batches are written,
    the features flushed before their done flags, so after a kill every item marked done has its final
    row on disk (the others are computed again, with the same batches, to the same bytes)."""

    def __init__(self, out: Path, name: str, n_items: int, dim: int, record: dict, restart: bool):
        from numpy.lib.format import open_memmap

        self.dir = out / ".partial"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.array_file, self.done_file = self.dir / f"{name}.npy", self.dir / f"{name}_done.npy"
        self.args_file = self.dir / f"{name}.json"
        if restart:
            for f in (self.array_file, self.done_file, self.args_file):
                f.unlink(missing_ok=True)
        hint = "re-run with the same arguments to resume, or add --restart to start over"
        if self.args_file.exists():
            try:
                previous = json.loads(self.args_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(self.args_file, "unreadable partial state; add --restart to start over") from None
            if previous != record:
                keys = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
                raise InputError(self.args_file, f"partial extraction made with different arguments ({', '.join(keys)} "
                                                 f"differ); {hint}")
            try:
                self.array = open_memmap(self.array_file, mode="r+")
                self.done = open_memmap(self.done_file, mode="r+")
            except (OSError, ValueError) as e:
                raise InputError(self.array_file, f"unreadable partial state ({e}); add --restart to start over") from None
            if self.array.shape != (n_items, dim) or self.done.shape != (n_items,):
                raise InputError(self.array_file, "partial state has the wrong shape; add --restart to start over")
        else:
            self.array = open_memmap(self.array_file, mode="w+", dtype=np.float32, shape=(n_items, dim))
            self.done = open_memmap(self.done_file, mode="w+", dtype=np.bool_, shape=(n_items,))
            _write_json(self.args_file, record)  # last: without it the arrays above count as absent

    def write(self, rows: np.ndarray, values: np.ndarray):
        self.array[rows] = values
        self.array.flush()
        self.done[rows] = True
        self.done.flush()

    def close(self):
        del self.array, self.done

    def cleanup(self):
        for f in (self.done_file, self.args_file):
            f.unlink(missing_ok=True)


def publish(out: Path, name: str, array_file: Path, mask: np.ndarray, entry: dict, meta_sha: str, n_items: int):
    """Moves ``array_file`` and the mask into ``out`` as NAME.npy / NAME_mask.npy and merges ``entry``
    into out/manifest.json (written to a temp file and renamed), keeping the other modalities."""
    # Two extractions into one OUT merge one after the other. The lock is on the directory itself: a
    # lock file would have to stay (unlinking it lets a waiter and a newcomer both hold "the" lock).
    with _flock(out, blocking=True):
        manifest = check_out(out, meta_sha) or {"format_version": FORMAT_VERSION, "data_meta_sha256": meta_sha,
                                                "n_items": n_items, "modalities": {}}
        staged_mask = array_file.with_name(f"{name}_mask.npy")
        np.save(staged_mask, mask)
        entry["array_sha256"] = file_digest(array_file)
        manifest["modalities"][name] = entry
        # Renames, manifest last: a crash in between leaves arrays whose hash the old manifest does not
        # match, which load_features refuses, never a directory it would misread.
        os.replace(array_file, array_path(out, name))
        os.replace(staged_mask, mask_path(out, name))
        _write_json(out / MANIFEST, manifest)


# ----------------------------------------------------------------------------------------------------
# Running a model


def batches(items: np.ndarray, batch_size: int, key=None) -> list[np.ndarray]:
    """``items`` (sorted by ``key`` when given, a stable sort) cut at fixed boundaries into batches.

    The batches depend only on the items, the key and the batch size, so a resumed run recomputes
    exactly the batches an uninterrupted one would (padding, hence the floats, depends on them)."""
    items = np.asarray(items, np.int64)
    if key is not None:
        items = items[np.argsort(np.asarray([key(i) for i in items]), kind="stable")]
    return [items[s:s + batch_size] for s in range(0, len(items), batch_size)]


def text_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Batches of the items with text, shortest texts first: similar lengths share a batch, so little
    compute goes into padding."""
    present = np.flatnonzero([bool(t) for t in texts])
    return batches(present, batch_size, key=lambda i: len(texts[i]))


@contextlib.contextmanager
def torch_session(device: str):
    """Deterministic inference on all usable cores; torch's global settings are restored afterwards
    (the extractor also runs in-process, from tests and benchmarks)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS requires
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    if device == "cpu":
        # The cores this process may run on: os.cpu_count() counts the host's, and oversubscribing
        # a container's share slows every batch.
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", f"cuda requested, but torch {torch.__version__} sees no GPU; use --device cpu or auto")
    return device


def progress(total: int, initial: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item", file=sys.stderr,
                disable=quiet or bool(os.environ.get("CI")))


def run_model(args, out: Path, payloads: dict[int, object], order: list[np.ndarray], n_items: int,
              meta_sha: str, inputs_sha: str, finish):
    """Encodes every item of ``order`` into the partial state, then calls ``finish(array file, mask,
    manifest fields)`` to publish it; the partial state is removed only once that has succeeded."""
    import torch
    import transformers

    device = resolve_device(args.device)
    enc = load_encoder(args.modality, args.model, device, args.pooling, args.batch_size, args.max_length)
    record = {"modality": args.modality, "model": args.model, "weights_sha256": enc.weights_sha256,
              "pooling": args.pooling, "batch_size": args.batch_size, "max_length": getattr(enc, "max_length", None),
              "device": device, "data_meta_sha256": meta_sha, "inputs_sha256": inputs_sha, "n_items": n_items,
              "dim": enc.dim}
    out.mkdir(parents=True, exist_ok=True)
    (out / ".partial").mkdir(exist_ok=True)
    with _flock(out / ".partial" / f"{args.name}.lock", blocking=False,
                busy=f"another extraction of {args.name!r} into {out} is running"):
        part = Partial(out, args.name, n_items, enc.dim, record, args.restart)
        todo = [rows for rows in order if not part.done[rows].all()]
        total = sum(len(r) for r in order)
        with torch_session(device), progress(total, total - sum(len(r) for r in todo), args.name, args.quiet) as bar:
            for rows in todo:
                part.write(rows, enc.encode([payloads[int(i)] for i in rows]))
                bar.update(len(rows))
        mask = np.zeros(n_items, bool)
        for rows in order:
            mask[rows] = True
        part.close()
        finish(part.array_file, mask, {
            "weights_sha256": enc.weights_sha256, "dim": enc.dim, "pooling": args.pooling, "encoder": enc.info,
            "batch_size": args.batch_size, "device": device,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
        part.cleanup()
    (out / ".partial" / f"{args.name}.lock").unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> ArgParser:
    p = ArgParser(prog="extract_features.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared data directory (data_prep/prepare.py)")
    p.add_argument("--modality", required=True, choices=("text", "image", "audio", "meta"))
    p.add_argument("--model", required=True,
                   help="hub id or local path of a pretrained model, tfidf-svd:DIM (text) or metadata (meta)")
    p.add_argument("--src", help="text: csv/tsv of item texts; image/audio: directory of media named by original id")
    p.add_argument("--out", required=True, help="features directory (created; other modalities in it are kept)")
    p.add_argument("--name", help="modality name in the features directory (default: --modality)")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="cls: special token(s) of the last hidden state; mean: mean over tokens/patches (default cls)")
    p.add_argument("--batch-size", type=int, default=32, help="items per batch (images/windows per forward pass)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="default auto: cuda when available")
    p.add_argument("--max-length", type=int, help="text: truncate at this many tokens (default: the model's limit, at most 512)")
    p.add_argument("--note", help="free text stored in the manifest entry (e.g. 'random weights')")
    p.add_argument("--restart", action="store_true", help="discard partial state of an interrupted extraction")
    p.add_argument("--quiet", action="store_true", help="no progress bar (also when $CI is set)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    args.name = check_name(args.name or args.modality)
    tfidf = TFIDF_RE.fullmatch(args.model)
    args.kind = "tfidf" if tfidf else "metadata" if args.model == "metadata" else "model"
    if args.kind == "tfidf":
        args.dim = int(tfidf.group(1))
        if args.modality != "text" or args.dim < 1:
            raise InputError("--model", f"{args.model}: tfidf-svd:DIM (DIM >= 1) is a --modality text extractor")
    elif args.kind == "metadata":
        if args.modality != "meta":
            raise InputError("--model", "metadata goes with --modality meta")
        if args.src:
            raise InputError("--src", "--modality meta reads items.csv only; drop --src")
    elif args.modality == "meta":
        raise InputError("--model", f"--modality meta takes --model metadata, not {args.model!r}")
    elif args.model.startswith("tfidf-svd"):
        raise InputError("--model", f"{args.model!r}: expected tfidf-svd:DIM with an integer DIM")
    if args.batch_size < 1:
        raise InputError("--batch-size", f"{args.batch_size}, expected a positive integer")
    if args.max_length is not None and (args.max_length < 1 or args.modality != "text" or args.kind != "model"):
        raise InputError("--max-length", "expected a positive token count, for text models only")
    return args


def extract(argv) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    meta_path, meta_sha, n_items, items = read_data(args.data)
    out = Path(args.out)
    check_out(out, meta_sha)
    src = Path(args.src) if args.src else None
    entry = {"modality": args.modality, "model": args.model}
    if args.modality == "text":
        texts, source = item_texts(items, src)
        if not any(texts):
            raise InputError(src or meta_path.parent / "items.csv", "no item has any text (title, genres or --src text)")
        # The texts decide the features: a partial extraction resumes only over the very same texts.
        source["texts_sha256"] = inputs_sha = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    elif args.modality in ("image", "audio"):
        payloads, source = find_media(src, items, args.modality)
        inputs_sha = source["sha256"]
    else:
        source = {}
    source["items_csv"] = file_record(meta_path.parent / "items.csv")


    def finish(array_file: Path, mask: np.ndarray, fields: dict):
        entry.update(fields, items_present=int(mask.sum()), source=source)
        if args.note:
            entry["note"] = args.note
        publish(out, args.name, array_file, mask, entry, meta_sha, n_items)

    if args.kind == "model":
        if args.modality == "text":
            payloads = dict(enumerate(texts))
            order = text_batches(texts, args.batch_size)
        else:
            order = batches(sorted(payloads), args.batch_size)
        run_model(args, out, payloads, order, n_items, meta_sha, inputs_sha, finish)
    else:
        if args.kind == "tfidf":
            features, mask, weights_sha, info = tfidf_svd(texts, args.dim)
            fields = dict(weights_sha256=weights_sha, dim=args.dim, pooling=None, encoder=info)
        else:
            features, mask, columns, info = metadata_features(items)
            fields = dict(weights_sha256=None, dim=features.shape[1], pooling=None, columns=columns, encoder=info)
        # Computed in memory at once: staged only to be renamed into place (under a name that leaves any
        # partial state of a model extraction to the same NAME alone).
        staged = out / ".partial" / f"{args.name}.in-memory.npy"
        staged.parent.mkdir(parents=True, exist_ok=True)
        np.save(staged, features)
        finish(staged, mask, fields)
    with contextlib.suppress(OSError):
        (out / ".partial").rmdir()  # only when empty: other names may have partial state there
    print(f"{args.name}: {entry['items_present']:,} of {n_items:,} items, dim {entry['dim']} ({args.model}) "
          f"-> {array_path(out, args.name)} ({time.perf_counter() - t0:.1f}s)")
    return entry


def main(argv=None) -> int:
    return cli_main(extract, argv)


if __name__ == "__main__":
    sys.exit(main())
