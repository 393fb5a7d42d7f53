"""Reading a prepared data directory (``data_prep/prepare.py``'s output: ``interactions.npz``,
``meta.json``, ``items.csv``), for every entry point.

``check_prepared`` is cheap and standard-library only (it reads ``meta.json`` and the npz's directory,
not the arrays), so that a benchmark parent fails on its data at once without importing numpy;
``load_prepared`` runs it and then reads the arrays. Either answers a missing or malformed file with an
``InputError`` naming it, never a numpy or zip traceback.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from jaxrec.errors import InputError, read_json

PREPARED_ARRAYS = ("user", "item", "rating", "order")
_AGAIN = "prepare the data again with data_prep/prepare.py"


def check_prepared(path) -> Path:
    """The absolute path of the prepared data directory ``path``, or an InputError naming the missing or
    malformed file."""
    _checked_meta(Path(path))
    return Path(path).absolute()


def _checked_meta(d: Path) -> dict:
    """``check_prepared``'s checks; returns the parsed ``meta.json`` so that a loader reads it once."""
    if not d.is_dir():
        raise InputError(d, "no such data directory; prepare it first with data_prep/prepare.py (see README)")
    npz, meta_path = d / "interactions.npz", d / "meta.json"
    for f in (npz, meta_path):
        if not f.is_file():
            raise InputError(f, "missing; prepare the data first with data_prep/prepare.py (see README)")
    meta = read_json(meta_path)
    for key in ("n_users", "n_items"):
        value = meta.get(key) if isinstance(meta, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(meta_path, f"{key!r} missing or not a positive integer; expected the meta.json of "
                                        "data_prep/prepare.py")
    try:
        with zipfile.ZipFile(npz) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(npz, f"not a readable .npz archive ({e}); {_AGAIN}") from None
    missing = [k for k in PREPARED_ARRAYS if f"{k}.npy" not in names]
    if missing:
        raise InputError(npz, f"lacks arrays {missing}, expected {', '.join(PREPARED_ARRAYS)}")
    return meta


def load_prepared(path):
    """(interactions, meta, items) of a prepared data directory: ``Interactions``, the ``meta.json`` dict
    and the ``items.csv`` table (a bare ``item`` column when the data has none)."""
    import numpy as np
    import pandas as pd

    from jaxrec.data.interactions import Interactions

    d = Path(path)
    meta = _checked_meta(d)
    npz = d / "interactions.npz"
    try:
        with np.load(npz) as z:
            arrays = {k: z[k] for k in (*PREPARED_ARRAYS, "event") if k in z}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        msg = " ".join(str(e).split())[:200]
        raise InputError(npz, f"cannot be read ({type(e).__name__}: {msg}); {_AGAIN}") from None
    try:
        inter = Interactions(
            user=arrays["user"].astype(np.int32), item=arrays["item"].astype(np.int32),
            rating=arrays["rating"].astype(np.float32), order=arrays["order"].astype(np.int64),
            n_users=int(meta["n_users"]), n_items=int(meta["n_items"]), event=arrays.get("event"),
            event_types=tuple(meta.get("event_types", ())),
            order_is_time=meta.get("order_kind", "timestamp") == "timestamp")
    except InputError as e:
        raise InputError(npz, f"{e.message} (with meta.json's n_users/n_items); {_AGAIN}") from None
    items_path = d / "items.csv"
    try:
        items = (pd.read_csv(items_path, keep_default_na=False) if items_path.is_file()
                 else pd.DataFrame({"item": np.arange(inter.n_items)}))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise InputError(items_path, f"cannot be read ({' '.join(str(e).split())[:160]}); {_AGAIN}") from None
    return inter, meta, items
