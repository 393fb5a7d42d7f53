"""Shell helpers shared by data_prep and experiments: error reporting, atomic output directories,
hashing, robust table reading with line-numbered errors, and loading a prepared data directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.data.interactions import Interactions
from jaxrec.errors import InputError

FORMAT_VERSION = 1


def cli_main(fn, argv=None, debug: bool | None = None) -> int:
    """Runs ``fn(argv)``; an ``InputError`` becomes ``error: ...`` on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if debug is None:
        debug = "--debug" in argv
    try:
        fn(argv)
        return 0
    except InputError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------
# Atomic directories


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yields a fresh temp dir beside ``out``; on success it replaces ``out`` in one rename.

    On any exception the temp dir is removed and an existing ``out`` is left exactly as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# Hashing


def file_digest(path, algo: str = "sha256", chunk: int = 1 << 22) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_digest(path, expected: str, algo: str = "sha256", hint: str = ""):
    got = file_digest(path, algo)
    if got.lower() != expected.lower():
        raise InputError(path, f"checksum mismatch: {algo} {got}, expected {expected}{hint}")
    return got


# ----------------------------------------------------------------------------------------------------
# Sources: a plain file, a directory, or a zip archive


# What reading a damaged zip member can raise: a CRC mismatch (BadZipFile), a broken deflate stream
# (zlib.error), a truncated member (EOFError), or an unsupported/encrypted member.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


class Source:
    """Files of one input: a directory, a zip archive (members found by base name) or a single file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "no such file or directory")
        self.zip = None
        if self.path.is_file() and self.path.suffix.lower() == ".zip":
            try:
                self.zip = zipfile.ZipFile(self.path)
            except ZIP_ERRORS as e:
                raise InputError(self.path, f"not a readable zip archive ({e}); the download may be truncated or corrupt") from None

    def _verify(self, member: str):
        """Reads ``member`` once to check its CRC before parsing it.

        Only the members we use are checked (ml-25m ships ~500 MB of genome files we never read), and
        checking first means a corrupt member is reported as such, not as a garbage row.
        """
        try:
            with self.zip.open(member) as f:
                while f.read(1 << 24):
                    pass
        except ZIP_ERRORS as e:
            raise InputError(self.path, f"corrupt zip archive: member {member} cannot be read ({e}); "
                                        "expected an intact archive (download it again)") from None

    def find(self, name: str, required: bool = True) -> str | None:
        """The member/file whose base name is ``name`` (the shallowest match), as an opaque handle."""
        if self.zip is not None:
            hits = [m for m in self.zip.namelist()
                    if m.rsplit("/", 1)[-1] == name and not m.startswith("__MACOSX")]
            if hits:
                member = min(hits, key=lambda m: (m.count("/"), m))
                self._verify(member)
                return member
        elif self.path.is_dir():
            # Shallowest first: plain sorting would prefer a nested copy ("sub/u.data" < "u.data").
            hits = sorted(self.path.rglob(name), key=lambda h: (len(h.parts), str(h)))
            if hits:
                return str(hits[0])
        elif self.path.name == name:
            return str(self.path)
        if required:
            raise InputError(self.path, f"missing file '{name}'")
        return None

    def label(self, handle: str) -> str:
        """How a member is named in error messages."""
        return f"{self.path}!{handle}" if self.zip is not None else handle

    @contextlib.contextmanager
    def open(self, handle: str):
        if self.zip is not None:
            with self.zip.open(handle) as f:
                yield f
        else:
            with open(handle, "rb") as f:
                yield f

    def read_bytes(self, handle: str) -> bytes:
        try:
            with self.open(handle) as f:
                return f.read()
        except ZIP_ERRORS as e:
            raise InputError(self.label(handle), f"cannot read ({e}); the archive may be corrupt") from None

    def record(self, handles) -> list[dict]:
        """The ``sources`` entries of meta.json: path and sha256 of every input file."""
        if self.zip is not None:
            return [{"path": str(self.path), "sha256": file_digest(self.path), "members": list(handles)}]
        return [{"path": str(h), "sha256": file_digest(h)} for h in handles]


# ----------------------------------------------------------------------------------------------------
# Reading tables with useful errors

_LINE_RE = re.compile(r"line (\d+)")


def read_delimited(data, label: str, sep: str, names=None, header=True, encoding="utf-8",
                   usecols=None, dtype=None) -> pd.DataFrame:
    """``pd.read_csv`` (C engine) turning parser failures into ``InputError`` with a line number."""
    if isinstance(data, bytes):
        if not data.strip():
            raise InputError(label, "file is empty, expected a header and rows" if header else "file is empty, expected rows")
        data = io.BytesIO(data)
    elif isinstance(data, (str, os.PathLike)) and os.path.getsize(data) == 0:
        raise InputError(label, "file is empty, expected a header and rows" if header else "file is empty, expected rows")
    try:
        return pd.read_csv(
            data, sep=sep, header=0 if header else None, names=names, encoding=encoding, usecols=usecols,
            dtype=dtype, engine="c", skipinitialspace=False, keep_default_na=True, low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise InputError(label, "file is empty, expected a header and rows") from None
    except pd.errors.ParserError as e:
        m = _LINE_RE.search(str(e))
        msg = str(e).split("C error: ")[-1].strip()
        raise InputError(label, f"malformed row: {msg}", line=int(m.group(1)) if m else None) from None
    except UnicodeDecodeError as e:
        raise InputError(label, f"not valid {encoding} text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        # usecols naming a column the header lacks
        raise InputError(label, str(e)) from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise InputError(label, f"cannot read ({e}); the archive may be corrupt") from None


def require_columns(df: pd.DataFrame, cols, label: str):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(label, f"missing column {', '.join(repr(c) for c in missing)}; the columns are {list(map(str, df.columns))}")


def numeric_column(df: pd.DataFrame, col: str, label: str, header_lines: int, integer: bool = False) -> np.ndarray:
    """Column ``col`` as a numeric array; a missing or non-numeric value is an error naming its line.

    ``header_lines`` is the number of file lines before the first data row (so row i is on line
    ``i + header_lines + 1``); pass -1 for inputs without lines (npz, parquet): the error then names
    the row index instead.
    """
    s = df[col]
    values = s if pd.api.types.is_numeric_dtype(s.dtype) else pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raw = s.iloc[i]
        what = "a missing value" if pd.isna(raw) or str(raw).strip() == "" else f"non-numeric value {str(raw)!r}"
        where = {"line": i + header_lines + 1} if header_lines >= 0 else {}
        suffix = "" if header_lines >= 0 else f" at row {i}"
        raise InputError(label, f"column {col!r} has {what}{suffix}, expected a number", **where)
    arr = values.to_numpy()
    if integer and arr.dtype.kind == "f":
        frac = arr != np.floor(arr)
        if frac.any():
            i = int(np.argmax(frac))
            where = {"line": i + header_lines + 1} if header_lines >= 0 else {}
            raise InputError(label, f"column {col!r} has non-integer value {arr[i]!r}, expected an integer", **where)
        arr = arr.astype(np.int64)
    return arr


# ----------------------------------------------------------------------------------------------------
# Prepared data directory (DESIGN.md 2.1)


def load_prepared(path) -> tuple[Interactions, dict, pd.DataFrame]:
    """(interactions, meta, items) of a prepared data directory."""
    path = Path(path)
    npz, meta_path = path / "interactions.npz", path / "meta.json"
    for f in (npz, meta_path):
        if not f.is_file():
            raise InputError(f, "missing; prepare the data first with data_prep/prepare.py (see README)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(meta_path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    with np.load(npz) as z:
        missing = [k for k in ("user", "item", "rating", "order") if k not in z]
        if missing:
            raise InputError(npz, f"lacks arrays {missing}, expected user, item, rating, order")
        event = z["event"] if "event" in z else None
        inter = Interactions(
            user=z["user"].astype(np.int32), item=z["item"].astype(np.int32),
            rating=z["rating"].astype(np.float32), order=z["order"].astype(np.int64),
            n_users=int(meta["n_users"]), n_items=int(meta["n_items"]), event=event,
            event_types=tuple(meta.get("event_types", ())), order_is_time=meta.get("order_kind", "timestamp") == "timestamp",
        )
    items_path = path / "items.csv"
    items = pd.read_csv(items_path, keep_default_na=False) if items_path.is_file() else pd.DataFrame({"item": np.arange(inter.n_items)})
    return inter, meta, items
