"""Shell helpers shared by data_prep and experiments: error reporting, atomic output directories,
hashing, robust table reading with line-numbered errors (a prepared data directory is read by
``jaxrec.data.prepared``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.errors import InputError

FORMAT_VERSION = 1


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
# A prepared directory's original ids


def original_ids(data_dir, inter, items: pd.DataFrame, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each interaction's user and item in the integer ids of the log prepare.py read (the ``original_id``
    columns of users.csv and items.csv), to compare a prepared directory with another copy of that log.
    Without those files: an error if ``required``, else the dense ids themselves."""
    users_csv = Path(data_dir) / "users.csv"
    have = users_csv.is_file() and "original_id" in items.columns
    if not have and required:
        raise InputError(data_dir, "needs items.csv and users.csv with an original_id column (prepare.py writes them)")
    user_ids = pd.read_csv(users_csv)["original_id"].to_numpy() if have else np.arange(inter.n_users)
    item_ids = items["original_id"].to_numpy() if have else np.arange(inter.n_items)
    try:
        return (user_ids[np.asarray(inter.user)].astype(np.int64), item_ids[np.asarray(inter.item)].astype(np.int64))
    except (TypeError, ValueError):
        raise InputError(data_dir, "original ids must be integers to match the log's") from None


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
#
# Line numbers: frames from ``read_delimited`` keep one index label per physical row, blank rows
# included (they are dropped after parsing, their labels are not reused), so positional row ``i`` is
# on file line ``df.index[i] + header_lines + 1``. ``header_lines`` is 1 for a file with a header
# row, 0 without, and -1 for inputs without lines (npz, parquet), where errors name the row instead.

_PARSER_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def file_line(df: pd.DataFrame, i: int, header_lines: int) -> int | None:
    """1-based file line of positional row ``i`` of ``df`` (None for inputs without lines)."""
    return int(df.index[i]) + header_lines + 1 if header_lines >= 0 else None


def row_location(df: pd.DataFrame, i: int, header_lines: int) -> tuple[dict, str]:
    """(InputError kwargs, message suffix) locating positional row ``i``: a line, or a row index."""
    if header_lines >= 0:
        return {"line": file_line(df, i, header_lines)}, ""
    return {}, f" at row {int(df.index[i])}"


# Memory of big numeric tables. ``low_memory=False`` tokenizes the whole file before converting any
# column: ~3.4x the frame at peak (2.2 GB for a 20M-row, 0.64 GB frame of 4 numeric columns).
# ``low_memory=True`` converts chunk by chunk (1.3 GB there) but infers each chunk's dtypes on its own,
# so a column of ints in one chunk and strings in another comes out with mixed types where a
# whole-file parse gives one type. ``_read_numeric_chunked`` reads chunk by chunk only where the
# result provably equals the whole-file parse, and otherwise leaves the file to the whole-file parse.
_SNIFF_ROWS = 10_000  # rows parsed first to guess the dtypes; 0 turns the chunked fast path off


def _read_numeric_chunked(data, kwargs: dict) -> pd.DataFrame | None:
    """``pd.read_csv(data, low_memory=False, **kwargs)`` read chunk by chunk, or None (nothing read)
    when this cannot be done exactly. ``data``: a path or a seekable binary file.

    The first ``_SNIFF_ROWS`` rows are parsed as a sample; only when each of its columns is int64 or
    float64 is the whole file read with ``low_memory=True``:
    - float64 columns are pinned to float64 (it is what saves the memory). A column with a non-integer
      or missing value among the first rows cannot parse as integers as a whole, so a whole-file parse
      gives float64 too, from the same float parser; a value that does not parse as a float raises,
      and the file goes to the whole-file parse (which finds it and names its line).
    - int64 columns are not pinned: pandas would quietly cast "1.0" or "1e3" to an int64 column. Each
      chunk infers its own dtype, and the result is kept only if every column has its sample dtype:
      an int64 column then was int64 in every chunk, i.e. every value parsed as an integer, which is
      exactly when a whole-file parse gives int64 (with the same values).
    (pandas >= 3.1 reads a big file given as a path with ``low_memory=True`` in parallel, in byte-range
    chunks, with the same per-chunk rules.)
    Any other outcome (an exception, another dtype) returns None, and the caller's whole-file parse
    then gives the same frame, or the same error, as it always did.
    """
    if _SNIFF_ROWS <= 0:
        return None
    pos = None if isinstance(data, (str, os.PathLike)) else data.tell()

    def rewind():
        if pos is not None:
            data.seek(pos)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # mixed chunks: rejected below
            warnings.simplefilter("error", pd.errors.ParserWarning)
            sample = pd.read_csv(data, nrows=_SNIFF_ROWS, low_memory=False, **kwargs)
            rewind()
            dtypes = sample.dtypes
            if len(sample) == 0 or not all(dt in (np.int64, np.float64) for dt in dtypes):
                return None
            pinned = {col: np.float64 for col, dt in dtypes.items() if dt == np.float64}
            df = pd.read_csv(data, low_memory=True, dtype=pinned or None, **kwargs)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - whatever went wrong, the whole-file parse reports it properly
        rewind()
        return None
    if list(df.columns) != list(sample.columns) or not df.dtypes.equals(dtypes) or not df.index.equals(pd.RangeIndex(len(df))):
        rewind()
        return None
    return df


def read_delimited(data, label: str, sep: str, names=None, header=True, encoding="utf-8",
                   usecols=None, dtype=None) -> pd.DataFrame:
    """``pd.read_csv`` (C engine) turning parser failures into ``InputError`` with a line number.

    Blank lines are skipped, but their rows are counted (see ``file_line``). A row with more fields
    than the header/``names`` is an error on its line (pandas would otherwise drop the extra fields or,
    on the first row, silently turn the first column into the index). All-numeric files given as a
    path or a seekable file are read chunk by chunk, with about half the peak memory, when that gives
    the same frame (``_read_numeric_chunked``).
    """
    empty = "file is empty, expected a header and rows" if header else "file is empty, expected rows"
    if isinstance(data, bytes):
        if not data.strip():
            raise InputError(label, empty)
        data = io.BytesIO(data)
    elif isinstance(data, (str, os.PathLike)) and os.path.getsize(data) == 0:
        raise InputError(label, empty)
    header_lines = 1 if header else 0
    kwargs = dict(sep=sep, header=0 if header else None, names=names, encoding=encoding, usecols=usecols,
                  dtype=dtype, engine="c", index_col=False, skip_blank_lines=False, skipinitialspace=False,
                  keep_default_na=True)
    chunked = usecols is None and dtype is None and (isinstance(data, (str, os.PathLike)) or data.seekable())
    try:
        df = None
        if chunked:  # (may raise only where rewinding a file fails: reported like a failed read)
            df = _read_numeric_chunked(data, {k: v for k, v in kwargs.items() if k not in ("usecols", "dtype")})
        if df is None:
            with warnings.catch_warnings():
                # With index_col=False pandas only *warns* when the first data row has too many fields.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(data, low_memory=False, **kwargs)
    except pd.errors.ParserWarning:
        expected = f"{len(names)} fields" if names is not None else "as many fields as the header"
        raise InputError(label, f"malformed row: too many fields, expected {expected}", line=header_lines + 1) from None
    except pd.errors.EmptyDataError:
        raise InputError(label, empty) from None
    except pd.errors.ParserError as e:
        m = _PARSER_RE.search(str(e))
        if m:
            raise InputError(label, f"malformed row: {m.group(3)} fields, expected {m.group(1)}", line=int(m.group(2))) from None
        raise InputError(label, f"malformed file: {str(e).split('C error: ')[-1].strip()}") from None
    except UnicodeDecodeError as e:
        raise InputError(label, f"not valid {encoding} text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        # usecols naming a column the header lacks
        raise InputError(label, str(e)) from None
    except ZIP_ERRORS as e:
        raise InputError(label, f"cannot read ({e}); the archive may be corrupt") from None
    if len(df.columns) and len(df):
        # A blank line is a row with every field missing; checking the first column first keeps this
        # a single cheap pass on clean files.
        first_na = df.iloc[:, 0].isna().to_numpy()
        if first_na.any():
            cand = df.loc[first_na]
            df = df.drop(index=cand.index[cand.isna().all(axis=1).to_numpy()])
    if len(df) == 0:
        # Without a header, no rows means nothing but blank lines (pandas may not raise EmptyDataError).
        raise InputError(label, "file has no data rows, expected rows after the header" if header else empty)
    return df


def require_columns(df: pd.DataFrame, cols, label: str):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(label, f"missing column {', '.join(repr(c) for c in missing)}; the columns are {list(map(str, df.columns))}")


def numeric_column(df: pd.DataFrame, col: str, label: str, header_lines: int, integer: bool = False) -> np.ndarray:
    """Column ``col`` as a numeric array; a missing, non-numeric or infinite value is an error naming its line.

    ``header_lines`` as for ``file_line``; pass -1 for inputs without lines (npz, parquet): the error
    then names the row index instead.
    """
    s = df[col]
    values = s if pd.api.types.is_numeric_dtype(s.dtype) else pd.to_numeric(s, errors="coerce")
    arr = values.to_numpy()
    bad = values.isna().to_numpy()
    if arr.dtype.kind == "f":
        bad = bad | ~np.isfinite(arr)  # not |=: pandas may hand back a read-only array
    if bad.any():
        i = int(np.argmax(bad))
        raw = s.iloc[i]
        what = "a missing value" if pd.isna(raw) or str(raw).strip() == "" else f"non-numeric value {str(raw)!r}"
        where, suffix = row_location(df, i, header_lines)
        raise InputError(label, f"column {col!r} has {what}{suffix}, expected a number", **where)
    if integer and arr.dtype.kind == "f":
        frac = arr != np.floor(arr)
        if frac.any():
            i = int(np.argmax(frac))
            where, suffix = row_location(df, i, header_lines)
            raise InputError(label, f"column {col!r} has non-integer value {arr[i]!r}{suffix}, expected an integer", **where)
        arr = arr.astype(np.int64)
    elif integer and arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    return arr


# ----------------------------------------------------------------------------------------------------
# The prepared data directory format: docs/design.md, section 2 (reader: jaxrec.data.prepared)
