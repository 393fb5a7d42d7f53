"""Prepares interaction data into the prepared directory format (docs/design.md, section 2).

  python data_prep/prepare.py movielens --variant ml-100k|ml-1m|ml-10m|ml-20m|ml-25m [--src DIR_OR_ZIP] --out DIR
  python data_prep/prepare.py events --src events.csv --out DIR [--weights view=1,addtocart=3,transaction=5]
  python data_prep/prepare.py table --src FILE --user-col C --item-col C [--rating-col C]
                                    [--time-col C | --order-col C] [--items FILE] --out DIR
  python data_prep/prepare.py sasrec --src ml-1m.txt --out DIR      (SASRec's 'user item' lines, in time order)

Shared options: --min-user-interactions, --min-item-interactions (k-core, applied until stable),
--positive-threshold / --positives-only, --dedup none|first|last|max, --name, --debug.
Bad input exits 2 with one line ``error: FILE[:LINE]: ...``; the output directory is written to a temp
dir and renamed into place, so a failed run never touches an existing one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.cli import ArgParser, cli_main
from data_prep.common import (FORMAT_VERSION, Source, atomic_dir, check_digest, file_digest, file_line,
                              numeric_column, read_delimited, require_columns, row_location)
from jaxrec.data.preprocess import DEDUP_POLICIES, TIE_POLICIES, Raw, clean
from jaxrec.errors import InputError

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/{variant}.zip"
# md5 of the official archives, as published next to them by GroupLens.
MOVIELENS_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
SASREC_ML1M_SHA256 = "b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2"
# The same file (git blob 9ab8e3edb8742f8d8cc4911e3dee25e82a6fcc24) in SASRec's, BERT4Rec's and Klenitskiy &
# Vasilev's repositories, each pinned to a commit so that a moved branch cannot change what is fetched.
SASREC_ML1M_URLS = (
    "https://raw.githubusercontent.com/kang205/SASRec/e3738967fddab206d6eeb4fda433e7a7034dd8b1/data/ml-1m.txt",
    "https://raw.githubusercontent.com/FeiSun/BERT4Rec/615eaf2004abecda487a38d5b0c72f3dcfcae5b3/data/ml-1m.txt",
    "https://raw.githubusercontent.com/antklen/sasrec-bert4rec-recsys23/29c272e155cad52c8958b04e9e98557526a646e5/"
    "data/ml-1m.txt",
)
# sha256 of files of the official GroupLens ml-100k archive, as extracted from it; meta.json marks a
# source with one of these digests "known_good".
KNOWN_SHA256 = {
    "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490": "ml-100k/u.data",
    "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701": "ml-100k/u.item",
    "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c": "ml-100k/u.user",
    # SASRec's data/ml-1m.txt (Kang & McAuley 2018), the file Klenitskiy & Vasilev (RecSys 2023) train and
    # evaluate SASRec+ on (their repository's data/ml-1m.txt, git blob 9ab8e3ed): 6,040 users, 3,416 items.
    SASREC_ML1M_SHA256: "SASRec data/ml-1m.txt",
}
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")
DEFAULT_WEIGHTS = "view=1,addtocart=3,transaction=5"


# ----------------------------------------------------------------------------------------------------
# MovieLens


def cache_dir() -> Path:
    return Path(os.environ.get("JAXREC_CACHE", Path.home() / ".cache" / "jaxrec"))


def _download(urls, dest: Path, digest: str, algo: str, label: str, local_hint: str) -> Path:
    """``dest`` in the cache, downloaded from the first of ``urls`` that answers (with a progress bar) and
    checked against ``digest``; a cached copy is checked and used without any network."""
    hint = f" (delete {dest} to download it again)"
    if dest.exists():
        check_digest(dest, digest, algo, hint)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    from tqdm import tqdm

    errors = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {label}", file=sys.stderr) as bar:
                    while block := r.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))
            break
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            part.unlink(missing_ok=True)
            errors[url] = e
    else:
        if len(urls) == 1:  # the address is the place to name
            raise InputError(urls[0], f"download failed ({errors[urls[0]]}); {local_hint}") from None
        tried = "; ".join(f"{u} ({e})" for u, e in errors.items())
        raise InputError(label, f"download failed from every mirror: {tried}; {local_hint}") from None
    check_digest(part, digest, algo, " (the download is corrupt; run again)")
    os.replace(part, dest)
    return dest


def fetch_movielens(variant: str) -> Path:
    """The official archive in the cache, downloaded (with a progress bar) and md5-verified."""
    return _download([MOVIELENS_URL.format(variant=variant)], cache_dir() / f"{variant}.zip", MOVIELENS_MD5[variant],
                     "md5", variant, f"pass --src with a local copy of {variant}.zip")


def fetch_sasrec_ml1m() -> Path:
    """SASRec's ``data/ml-1m.txt`` in the cache, downloaded from the first repository that serves it and
    sha256-verified (the three repositories hold the same git blob)."""
    return _download(SASREC_ML1M_URLS, cache_dir() / "sasrec-ml-1m.txt", SASREC_ML1M_SHA256, "sha256",
                     "SASRec ml-1m.txt", "pass --src with a local copy of SASRec's data/ml-1m.txt")


def checked_download(path: Path, sha256: str | None) -> Path:
    """A downloaded file, also checked against ``--sha256`` when it is given (besides the download's own digest)."""
    if sha256:
        check_digest(path, sha256)
    return path


def _decode_text(data: bytes) -> str:
    """MovieLens metadata text: UTF-8 where it is valid (ml-10m and later), else Latin-1 (ml-100k/1m).

    Pure ASCII reads the same either way, and Latin-1 accepts any byte, so this never fails.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _split_double_colon(data: bytes, label: str, names, text_field: int | None = None) -> pd.DataFrame:
    """Reads a small MovieLens ``::``-separated metadata file (movies.dat, users.dat) into string columns.

    ``text_field`` is the index of a free-text field (a title) that may itself contain ':' or even
    '::': the fields before it are split off from the left and those after it from the right, so a
    title like ``Foo:`` (``1::Foo:::Drama``) stays whole. Without one, a row must have exactly
    ``len(names)`` fields.
    """
    if not data.strip():
        raise InputError(label, "file is empty, expected rows")
    # split("\n") rather than splitlines(): Latin-1 byte 0x85 decodes to U+0085, which splitlines()
    # would treat as a line break inside a title.
    lines = pd.Series(_decode_text(data).split("\n")).str.rstrip("\r")
    lines = lines[lines.str.strip() != ""]  # the index keeps the 0-based line number
    n = len(names)
    if text_field is None:
        parts = lines.str.split("::", n=n, expand=True).reindex(columns=range(n + 1))
        bad = parts.iloc[:, :n].isna().any(axis=1).to_numpy() | parts[n].notna().to_numpy()
        parts = parts.iloc[:, :n]
    else:
        left = lines.str.split("::", n=text_field, expand=True).reindex(columns=range(text_field + 1))
        # "string" dtype: a column of only missing values would be float, without a .str accessor.
        right = left[text_field].astype("string").str.rsplit("::", n=n - text_field - 1, expand=True)
        right = right.reindex(columns=range(n - text_field))
        parts = pd.concat([left.iloc[:, :text_field], right], axis=1, ignore_index=True)
        bad = parts.isna().any(axis=1).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(label, f"malformed row: expected {n} '::'-separated fields ({'::'.join(names)})",
                         line=int(lines.index[i]) + 1)
    parts.columns = list(names)
    return parts.reset_index(drop=True)


def _read_ratings_double_colon(src: Source, handle: str) -> pd.DataFrame:
    # '::' would force pandas' slow python engine; splitting on ':' with the C engine and keeping the
    # even fields is exact for these all-numeric rows, and ~20x faster on ml-10m.
    label = src.label(handle)
    expected = "expected 4 '::'-separated fields (user::item::rating::timestamp)"
    with src.open(handle) as f:
        try:
            df = read_delimited(f, label, sep=":", header=False, names=list(range(7)))
        except InputError as e:
            if e.message.startswith("malformed row"):  # pandas counts ':'-fields; say it in '::' terms
                raise InputError(e.where, f"malformed row: {expected}", line=e.line) from None
            raise
    # Odd fields sit between the two ':' of a '::'; a value there means a single ':' or a missing field.
    stray = df[[1, 3, 5]].notna().any(axis=1).to_numpy()
    if stray.any():
        raise InputError(label, f"malformed row: {expected}", line=file_line(df, int(np.argmax(stray)), 0))
    df = df[[0, 2, 4, 6]]
    df.columns = ["user", "item", "rating", "timestamp"]
    return df


def read_movielens(variant: str, src: Source):
    """(raw columns, items frame, users frame, used file handles) for one MovieLens variant."""
    used = []
    if variant == "ml-100k":
        h = src.find("u.data")
        used.append(h)
        with src.open(h) as f:
            df = read_delimited(f, src.label(h), sep="\t", header=False, names=["user", "item", "rating", "timestamp"])
        label, header_lines = src.label(h), 0
        items = users = None
        if (hi := src.find("u.item", required=False)) is not None:
            used.append(hi)
            it = read_delimited(src.read_bytes(hi), src.label(hi), sep="|", header=False, encoding="latin-1",
                                names=["original_id", "title", "release", "video", "url", *ML100K_GENRES])
            flags = it[list(ML100K_GENRES)].fillna(0).to_numpy(bool)  # NaN would count as a genre
            names = np.array(ML100K_GENRES, dtype=object)
            it["genres"] = ["|".join(names[row]) for row in flags]  # 1,682 rows: metadata, not a hot path
            items = it[["original_id", "title", "genres"]]
        if (hu := src.find("u.user", required=False)) is not None:
            used.append(hu)
            users = read_delimited(src.read_bytes(hu), src.label(hu), sep="|", header=False,
                                   names=["original_id", "age", "gender", "occupation", "zip"])
    elif variant in ("ml-1m", "ml-10m"):
        h = src.find("ratings.dat")
        used.append(h)
        df = _read_ratings_double_colon(src, h)
        label, header_lines = src.label(h), 0
        items = users = None
        if (hm := src.find("movies.dat", required=False)) is not None:
            used.append(hm)
            items = _split_double_colon(src.read_bytes(hm), src.label(hm), ["original_id", "title", "genres"], text_field=1)
        if variant == "ml-1m" and (hu := src.find("users.dat", required=False)) is not None:
            used.append(hu)
            users = _split_double_colon(src.read_bytes(hu), src.label(hu), ["original_id", "gender", "age", "occupation", "zip"])
    elif variant in ("ml-20m", "ml-25m"):
        h = src.find("ratings.csv")
        used.append(h)
        with src.open(h) as f:
            df = read_delimited(f, src.label(h), sep=",")
        require_columns(df, ["userId", "movieId", "rating", "timestamp"], src.label(h))
        df = df.rename(columns={"userId": "user", "movieId": "item"})
        label, header_lines = src.label(h), 1
        users = None
        items = None
        if (hm := src.find("movies.csv", required=False)) is not None:
            used.append(hm)
            items = read_delimited(src.read_bytes(hm), src.label(hm), sep=",")
            require_columns(items, ["movieId"], src.label(hm))
            items = items.rename(columns={"movieId": "original_id"})
    else:
        raise InputError("--variant", f"unknown variant {variant!r}, expected one of {sorted(MOVIELENS_MD5)}")
    raw = Raw(
        user=numeric_column(df, "user", label, header_lines, integer=True),
        item=numeric_column(df, "item", label, header_lines, integer=True),
        rating=numeric_column(df, "rating", label, header_lines).astype(np.float32),
        order=numeric_column(df, "timestamp", label, header_lines, integer=True),
    )
    _check_range(raw.rating, 0.5, 5.0, "rating", label, df, header_lines)
    if items is not None:
        items["original_id"] = pd.to_numeric(items["original_id"], errors="coerce")
        items = items.dropna(subset=["original_id"]).astype({"original_id": np.int64})
    if users is not None:
        users["original_id"] = pd.to_numeric(users["original_id"], errors="coerce")
        users = users.dropna(subset=["original_id"]).astype({"original_id": np.int64})
    return raw, items, users, used


def _check_range(values, lo, hi, col, label, df, header_lines):
    bad = (values < lo) | (values > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(label, f"column {col!r} has value {values[i]:g}, expected a value in [{lo:g}, {hi:g}]",
                         line=file_line(df, i, header_lines))


# ----------------------------------------------------------------------------------------------------
# Event logs (RetailRocket layout)


def parse_weights(text: str) -> dict[str, float]:
    """``view=1,addtocart=3`` -> {"view": 1.0, "addtocart": 3.0}; the order fixes the event codes."""
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            w = float(value)
            if not np.isfinite(w):  # float() accepts 'nan' and 'inf', which are no reward
                raise ValueError
        except ValueError:
            raise InputError("--weights", f"{part!r} is not NAME=NUMBER; expected e.g. {DEFAULT_WEIGHTS}") from None
        if name in weights:
            raise InputError("--weights", f"event type {name!r} is given twice; expected each type once")
        weights[name] = w
    if len(weights) > 127:  # codes are stored as int8
        raise InputError("--weights", f"{len(weights)} event types, expected at most 127")
    return weights


def read_events(src: Source, weights: dict[str, float]):
    # A single file may have any name; in a zip or a directory look for the RetailRocket name.
    h = src.find("events.csv") if (src.zip is not None or src.path.is_dir()) else src.find(src.path.name)
    label = src.label(h)
    with src.open(h) as f:
        df = read_delimited(f, label, sep=",")
    require_columns(df, ["timestamp", "visitorid", "event", "itemid"], label)
    event = df["event"].astype("string").str.strip()
    missing = event.isna().to_numpy()
    if missing.any():
        raise InputError(label, "column 'event' has a missing value, expected one of " + ", ".join(weights),
                         line=file_line(df, int(np.argmax(missing)), 1))
    types = list(weights)
    codes = pd.Index(types).get_indexer(event)  # -1 marks a type not in --weights
    unknown = codes < 0
    if unknown.any():
        i = int(np.argmax(unknown))
        raise InputError(label, f"unknown event type {event.iloc[i]!r}, expected one of {', '.join(types)} (set --weights)",
                         line=file_line(df, i, 1))
    reward = np.asarray([weights[t] for t in types], np.float32)[codes]
    raw = Raw(
        user=numeric_column(df, "visitorid", label, 1, integer=True),
        item=numeric_column(df, "itemid", label, 1, integer=True),
        rating=reward,
        order=numeric_column(df, "timestamp", label, 1, integer=True),
        event=codes.astype(np.int8),
    )
    return raw, types, [h]


# ----------------------------------------------------------------------------------------------------
# Any table


def read_any_table(path: Path) -> tuple[pd.DataFrame, str, int]:
    """(frame, label, header_lines) of a csv/tsv/parquet/npz file."""
    if not path.is_file():
        raise InputError(path, "no such file")
    label = str(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except Exception as e:
            raise InputError(label, f"not a readable .npz ({e})") from None
        if not cols:
            raise InputError(label, "file is empty, expected named arrays")
        lengths = {k: len(v) for k, v in cols.items() if v.ndim == 1}
        if len(set(lengths.values())) > 1:
            raise InputError(label, f"arrays differ in length: {lengths}, expected equal lengths")
        df = pd.DataFrame({k: v for k, v in cols.items() if v.ndim == 1})
    elif suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:
            raise InputError(label, f"not a readable parquet file ({e})") from None
    else:
        df = None
    if df is not None:
        if len(df) == 0:
            raise InputError(label, "table has no rows, expected one row per interaction")
        return df, label, -1
    sep = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(suffix)
    if sep is None:
        raise InputError(label, f"unknown table format {suffix!r}, expected .csv, .tsv, .parquet or .npz")
    return read_delimited(path, label, sep=sep), label, 1


def _time_column(df, col, label, header_lines) -> np.ndarray:
    """Unix seconds from numbers, datetime columns (parquet/npz) or date-time strings.

    Strings are read as ISO 8601 (mixed precision and offsets allowed), else in the one format pandas
    infers from the first value; times without an offset are taken as UTC.
    """
    s = df[col]
    if pd.api.types.is_numeric_dtype(s.dtype):
        return numeric_column(df, col, label, header_lines, integer=True)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        parsed = s if s.dt.tz is None else s.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        parsed = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
        if parsed.isna().all():
            with warnings.catch_warnings():  # "could not infer format": the error below says what to do
                warnings.simplefilter("ignore", UserWarning)
                parsed = pd.to_datetime(s, errors="coerce", utc=True)
        if parsed.isna().all() and s.notna().any():
            return numeric_column(df, col, label, header_lines, integer=True)  # names the first bad value
        parsed = parsed.dt.tz_localize(None)
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = s.iloc[i]
        what = "a missing value" if pd.isna(raw) or str(raw).strip() == "" else repr(str(raw))
        where, suffix = row_location(df, i, header_lines)
        raise InputError(label, f"column {col!r} has {what}{suffix}, expected a number or an ISO 8601 date-time", **where)
    return parsed.astype("datetime64[s]").astype(np.int64).to_numpy()


def read_table(args):
    df, label, header_lines = read_any_table(Path(args.src))
    cols = [args.user_col, args.item_col] + [c for c in (args.rating_col, args.time_col, args.order_col) if c]
    require_columns(df, cols, label)
    for col in (args.user_col, args.item_col):
        missing = df[col].isna().to_numpy()
        if missing.any():
            i = int(np.argmax(missing))
            where, suffix = row_location(df, i, header_lines)
            raise InputError(label, f"column {col!r} has a missing value{suffix}, expected an id", **where)
    rating = (numeric_column(df, args.rating_col, label, header_lines).astype(np.float32)
              if args.rating_col else np.ones(len(df), np.float32))
    if args.time_col:
        order, order_kind = _time_column(df, args.time_col, label, header_lines), "timestamp"
    elif args.order_col:
        order, order_kind = numeric_column(df, args.order_col, label, header_lines, integer=True), "rank"
    else:
        order, order_kind = np.arange(len(df), dtype=np.int64), "rank"
    raw = Raw(user=df[args.user_col].to_numpy(), item=df[args.item_col].to_numpy(), rating=rating, order=order)
    items = read_items_file(Path(args.items)) if args.items else None
    return raw, items, order_kind, [str(args.src)] + ([str(args.items)] if args.items else [])


def read_sasrec(path: Path) -> Raw:
    """SASRec's text format: one ``user item`` pair of integer ids per line, each user's lines in the order the
    user met the items (``data/ml-1m.txt`` of SASRec and of Klenitskiy & Vasilev). The line order is the only
    time there is, so it becomes each row's rank; every row counts as an interaction (rating 1)."""
    if not path.is_file():
        raise InputError(path, "no such file")
    users, items = [], []
    with path.open("rb") as f:  # ~1 s per million lines: data preparation, run once
        for n, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2 or not (fields[0].isdigit() and fields[1].isdigit()):
                shown = line.decode(errors="replace").rstrip("\r\n")[:60]
                raise InputError(path, f"expected two integer ids 'user item', got {shown!r}", line=n)
            users.append(int(fields[0]))
            items.append(int(fields[1]))
    if not users:
        raise InputError(path, "no interactions")
    return Raw(user=np.array(users, np.int64), item=np.array(items, np.int64), rating=np.ones(len(users), np.float32),
               order=np.arange(len(users), dtype=np.int64))


def read_items_file(path: Path) -> pd.DataFrame:
    """Item metadata: a MovieLens ``movies.dat`` (``id::title::genres``) or a csv/tsv with a header
    whose first column is the item id and optional ``title`` and ``genres`` columns."""
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() == ".dat":
        items = _split_double_colon(path.read_bytes(), str(path), ["original_id", "title", "genres"], text_field=1)
    else:
        items, _, _ = read_any_table(path)
        lower = {c.lower(): c for c in map(str, items.columns)}
        keep = {items.columns[0]: "original_id"}
        keep.update({lower[c]: c for c in ("title", "genres") if c in lower})
        items = items[list(keep)].rename(columns=keep)
    return items


# ----------------------------------------------------------------------------------------------------
# Writing


def _match_ids(uniques: np.ndarray, frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows of ``frame`` aligned to dense ids (original ids compared as strings if types differ)."""
    if frame is None:
        return None
    frame = frame.loc[frame["original_id"].notna().to_numpy()]  # a row without an id matches nothing
    key = frame["original_id"]
    if uniques.dtype.kind in "iu" and pd.api.types.is_numeric_dtype(key.dtype):
        index = pd.Index(key.astype(np.int64))
        wanted = uniques.astype(np.int64)
    else:
        index = pd.Index(key.astype(str))
        wanted = uniques.astype(str)
    frame = frame.loc[~index.duplicated()]
    index = index[~index.duplicated()]
    return frame.set_index(index).reindex(wanted).reset_index(drop=True)


def write_output(out, name, cols, user_uniques, item_uniques, items, users, meta_extra, sources):
    n_users, n_items = len(user_uniques), len(item_uniques)
    if len(cols["user"]) == 0:
        raise InputError("--out", "no interactions left after filtering; lower --min-user/item-interactions")
    item_df = pd.DataFrame({"item": np.arange(n_items), "original_id": item_uniques})
    matched = _match_ids(item_uniques, items)
    if matched is not None:
        for c in ("title", "genres"):
            if c in matched:
                item_df[c] = matched[c].fillna("").astype(str).to_numpy()
    user_df = pd.DataFrame({"user": np.arange(n_users), "original_id": user_uniques})
    matched = _match_ids(user_uniques, users)
    if matched is not None:
        for c in matched.columns.drop("original_id"):
            user_df[c] = matched[c].to_numpy()
    rating = cols["rating"]
    meta = {
        "name": name, "n_users": n_users, "n_items": n_items, "n_interactions": int(len(rating)),
        "rating_min": float(rating.min()), "rating_max": float(rating.max()),
        "sources": sources, "format_version": FORMAT_VERSION, **meta_extra,
    }
    with atomic_dir(out) as tmp:
        np.savez(tmp / "interactions.npz", **cols)
        item_df.to_csv(tmp / "items.csv", index=False)
        user_df.to_csv(tmp / "users.csv", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ----------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="prepare.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="source", required=True)

    def shared(sp, dedup_default, threshold_default):
        sp.add_argument("--out", required=True, help="output directory (replaced atomically)")
        sp.add_argument("--name", help="dataset name in meta.json (default: the output dir name)")
        sp.add_argument("--min-user-interactions", type=int, default=1, help="k-core: minimum rows per user")
        sp.add_argument("--min-item-interactions", type=int, default=1, help="k-core: minimum rows per item")
        sp.add_argument("--positive-threshold", type=float, default=threshold_default,
                        help=f"rating/reward >= this counts as positive (default {threshold_default}: recorded in meta.json; evaluation uses it as relevance)")
        sp.add_argument("--positives-only", action="store_true", help="drop non-positive rows before the k-core")
        sp.add_argument("--dedup", choices=DEDUP_POLICIES, default=dedup_default,
                        help=f"repeated (user, item) pairs: keep all, the first, the last or the max-rating row (default {dedup_default})")
        sp.add_argument("--ties", choices=TIE_POLICIES, default="file",
                        help="order of a user's rows with equal time: the file's line order (SASRec's ml-1m.txt "
                             "keeps ratings.dat's) or a seeded random one (see data_prep/tie_order.py)")
        sp.add_argument("--ties-seed", type=int, default=0, help="seed of --ties shuffle")
        sp.add_argument("--sha256", help="expected sha256 of --src (a file); mismatch is an error")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    ml = sub.add_parser("movielens", help="MovieLens 100K/1M/10M/20M/25M")
    ml.add_argument("--variant", required=True, choices=sorted(MOVIELENS_MD5))
    ml.add_argument("--src", help="local directory or zip; default: download the official archive into $JAXREC_CACHE")
    shared(ml, "last", 4.0)
    ev = sub.add_parser("events", help="RetailRocket-style events.csv (timestamp,visitorid,event,itemid,transactionid)")
    ev.add_argument("--src", required=True)
    ev.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"reward per event type (default {DEFAULT_WEIGHTS})")
    shared(ev, "none", None)
    tb = sub.add_parser("table", help="any csv/tsv/parquet/npz with named columns")
    tb.add_argument("--src", required=True)
    tb.add_argument("--user-col", required=True)
    tb.add_argument("--item-col", required=True)
    tb.add_argument("--rating-col", help="rating or reward column (default: every row 1.0)")
    order = tb.add_mutually_exclusive_group()
    order.add_argument("--time-col", help="timestamp column (numbers or date-times)")
    order.add_argument("--order-col", help="chronological rank within each user (no absolute times)")
    tb.add_argument("--items", help="item metadata: MovieLens movies.dat or a csv/tsv with id, title, genres")
    shared(tb, "last", None)
    sr = sub.add_parser("sasrec", help="SASRec-format text: one 'user item' line per interaction, in time order "
                                       "(SASRec's and Klenitskiy & Vasilev's data/ml-1m.txt)")
    sr.add_argument("--src", help="local file; default: download SASRec's data/ml-1m.txt (sha256-checked) into "
                                   "$JAXREC_CACHE")
    shared(sr, "none", None)
    sy = sub.add_parser("synthetic", help="planted-signal data generated here (no download): smoke runs, --quick")
    sy.add_argument("--kind", choices=("blocks", "chains"), default="blocks",
                    help="blocks: clustered users liking one item block (DRR family); chains: per-cluster "
                         "next-item chains with noise (sequential family)")
    sy.add_argument("--users", type=int, default=400, help="number of users")
    sy.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same data)")
    shared(sy, "none", 4.0)
    return p


def prepare(argv) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    if args.positive_threshold is not None and not math.isfinite(args.positive_threshold):
        raise InputError("--positive-threshold", f"{args.positive_threshold} is not a finite number")
    # Flags are checked before any file is read, so a bad flag is reported as such.
    weights = parse_weights(args.weights) if args.source == "events" else None
    src_path = getattr(args, "src", None)
    if args.sha256 and src_path:
        if not Path(src_path).exists():
            raise InputError(src_path, "no such file or directory")
        if not Path(src_path).is_file():
            raise InputError(src_path, "--sha256 needs --src to be a single file, not a directory")
        check_digest(src_path, args.sha256)
    items = users = None
    meta_extra = {}
    if args.source == "movielens":
        archive = src_path
        if not src_path:
            archive = checked_download(fetch_movielens(args.variant), args.sha256)
        src = Source(archive)
        raw, items, users, used = read_movielens(args.variant, src)
        sources = src.record(used)
        meta_extra["order_kind"] = "timestamp"
        threshold = args.positive_threshold
    elif args.source == "events":
        src = Source(src_path)
        raw, types, used = read_events(src, weights)
        sources = src.record(used)
        meta_extra.update(order_kind="timestamp", event_types=types, event_weights=weights)
        threshold = args.positive_threshold if args.positive_threshold is not None else min(weights.values())
    elif args.source == "synthetic":
        from data_prep import synthetic

        if args.users < 1:
            raise InputError("--users", f"{args.users}, expected a positive number")
        make = synthetic.planted_blocks if args.kind == "blocks" else synthetic.planted_chains
        rows = make(n_users=args.users, seed=args.seed)[0]
        raw = Raw(user=rows[:, 0].astype(np.int64), item=rows[:, 1].astype(np.int64),
                  rating=rows[:, 2].astype(np.float32), order=rows[:, 3].astype(np.int64))
        sources = []
        meta_extra.update(order_kind="rank", synthetic={"kind": args.kind, "users": args.users, "seed": args.seed})
        threshold = args.positive_threshold
    elif args.source == "sasrec":
        if not src_path:
            src_path = checked_download(fetch_sasrec_ml1m(), args.sha256)
        raw = read_sasrec(Path(src_path))
        sources = [{"path": str(src_path), "sha256": file_digest(src_path)}]
        meta_extra["order_kind"] = "rank"
        threshold = args.positive_threshold if args.positive_threshold is not None else 1.0
    else:
        raw, items, order_kind, used = read_table(args)
        sources = [{"path": u, "sha256": file_digest(u)} for u in used]
        meta_extra["order_kind"] = order_kind
        threshold = args.positive_threshold if args.positive_threshold is not None else float(raw.rating.min(initial=1.0))
    for s in sources:
        if s["sha256"] in KNOWN_SHA256:
            s["known_good"] = KNOWN_SHA256[s["sha256"]]
    cols, user_uniques, item_uniques, stats = clean(
        raw, dedup_policy=args.dedup, min_user=args.min_user_interactions, min_item=args.min_item_interactions,
        positive_threshold=threshold, positives_only=args.positives_only,
        release_ids=True,  # raw's id columns are not used again here: free them for clean's sorts
        ties=args.ties, ties_seed=args.ties_seed,
    )
    meta_extra.update(
        positive_threshold=float(threshold), dedup=args.dedup, ties=args.ties,
        **({"ties_seed": args.ties_seed} if args.ties == "shuffle" else {}),
        min_user_interactions=args.min_user_interactions, min_item_interactions=args.min_item_interactions,
        positives_only=args.positives_only, source_kind=args.source, stats=stats,
    )
    if args.source == "movielens":
        meta_extra["variant"] = args.variant
    name = args.name or Path(args.out).name
    meta = write_output(args.out, name, cols, user_uniques, item_uniques, items, users, meta_extra, sources)
    print(f"{name}: {meta['n_users']:,} users, {meta['n_items']:,} items, {meta['n_interactions']:,} interactions "
          f"-> {args.out} ({time.perf_counter() - t0:.1f}s)")
    return meta


def main(argv=None) -> int:
    return cli_main(prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
