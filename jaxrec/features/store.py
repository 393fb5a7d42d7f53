"""Reading a features directory (docs/design.md, section 3): per-item modality features cached by
``data_prep/extract_features.py``, checked against the prepared data they belong to.

A features directory holds, per modality NAME, ``NAME.npy`` (float32 ``[n_items, d]``, rows in the
prepared data's dense item order), ``NAME_mask.npy`` (bool ``[n_items]``: which items have that
modality; the other rows are all zero) and one ``manifest.json``::

    {"format_version": 1, "data_meta_sha256": <sha256 of the data's meta.json>, "n_items": N,
     "modalities": {NAME: {"modality": "text"|"image"|"audio"|"meta", "model": ..., "weights_sha256": ...,
                           "dim": d, "pooling": ..., "items_present": k, "source": {...},
                           "array_sha256": <sha256 of the NAME.npy file>}, ...}}

Everything a consumer relies on is checked on load, so a stale, truncated or hand-edited directory is
an ``InputError`` naming the file instead of silently wrong features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxrec.errors import InputError, read_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("text", "image", "audio", "meta")
# A modality name becomes two file names; "_mask" is reserved for the mask of another name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENTRY_KEYS = ("modality", "model", "weights_sha256", "dim", "pooling", "items_present", "source", "array_sha256")
_CHUNK_ROWS = 1 << 16  # rows checked at a time: bounds the temporaries for huge catalogues


@dataclasses.dataclass(frozen=True)
class Features:
    """Cached features of some modalities, all with rows in the data's dense item order."""

    names: tuple[str, ...]
    arrays: dict[str, np.ndarray]  # name -> float32 [n_items, d] (read-only, memory-mapped)
    masks: dict[str, np.ndarray]  # name -> bool [n_items]
    manifest: dict

    def dims(self) -> tuple[int, ...]:
        return tuple(int(self.arrays[n].shape[1]) for n in self.names)


def array_path(features_dir, name: str) -> Path:
    return Path(features_dir) / f"{name}.npy"


def mask_path(features_dir, name: str) -> Path:
    return Path(features_dir) / f"{name}_mask.npy"


def check_name(name: str, where: str = "--name") -> str:
    if not NAME_RE.fullmatch(name) or name.endswith("_mask") or name == "manifest":
        raise InputError(where, f"bad modality name {name!r}: expected letters, digits, '_', '-', '.' "
                                "(not ending in '_mask', not 'manifest')")
    return name


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(path) -> dict:
    """The parsed and structurally checked ``manifest.json`` at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing; a features directory needs the manifest.json written by "
                               "data_prep/extract_features.py")
    manifest = read_json(path)

    def bad(what):
        raise InputError(path, f"malformed manifest: {what}")

    if not isinstance(manifest, dict):
        bad("expected a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        bad(f"format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key, kind in (("data_meta_sha256", str), ("n_items", int), ("modalities", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            bad(f"{key!r} missing or not a {kind.__name__}")
    for name, entry in manifest["modalities"].items():
        if not isinstance(entry, dict):
            bad(f"modality {name!r} is not an object")
        missing = [k for k in ENTRY_KEYS if k not in entry]
        if missing:
            bad(f"modality {name!r} lacks {missing}")
        if not NAME_RE.fullmatch(name) or name.endswith("_mask"):
            bad(f"bad modality name {name!r}")
        if entry["modality"] not in KINDS:
            bad(f"modality {name!r} has kind {entry['modality']!r}, expected one of {list(KINDS)}")
        for key in ("dim", "items_present"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 0:
                bad(f"modality {name!r}: {key} {entry[key]!r} is not a non-negative integer")
        if not isinstance(entry["array_sha256"], str):
            bad(f"modality {name!r}: array_sha256 is not a string")
    return manifest


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "missing; every modality in manifest.json needs NAME.npy and NAME_mask.npy")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"not a readable .npy file ({e})") from None


def _item_label(data_dir: Path, item: int) -> str:
    """``item 3 (original id 1193)``, or ``item 3`` when items.csv does not say (only on error paths)."""
    try:
        import pandas as pd

        items = pd.read_csv(Path(data_dir) / "items.csv", dtype=str, keep_default_na=False, usecols=["item", "original_id"])
        hit = items.loc[items["item"] == str(item), "original_id"]
        if len(hit):
            return f"item {item} (original id {hit.iloc[0]})"
    except Exception:  # noqa: BLE001 - only decorates an error message
        pass
    return f"item {item}"


def _check_modality(features_dir: Path, data_dir: Path, name: str, entry: dict, n_items: int):
    apath, mpath = array_path(features_dir, name), mask_path(features_dir, name)
    arr = _load_npy(apath, mmap=True)
    dim = entry["dim"]
    if arr.ndim != 2 or arr.shape != (n_items, dim):
        raise InputError(apath, f"shape {arr.shape}, expected ({n_items}, {dim}) = (n_items of the data, dim in manifest.json)")
    if arr.dtype != np.float32:
        raise InputError(apath, f"dtype {arr.dtype}, expected float32")
    mask = _load_npy(mpath, mmap=False)
    if mask.dtype != np.bool_:
        raise InputError(mpath, f"dtype {mask.dtype}, expected bool")
    if mask.shape != (n_items,):
        raise InputError(mpath, f"shape {mask.shape}, expected ({n_items},) = n_items of the data")
    present = int(mask.sum())
    if present != entry["items_present"]:
        raise InputError(mpath, f"{present} items present, but manifest.json says items_present {entry['items_present']}")

    # One pass over the rows: the file hash (header + data, i.e. the bytes of NAME.npy) and the value
    # checks share the pages, so a huge memory-mapped array is read from disk once.
    h = hashlib.sha256()
    with open(apath, "rb") as f:
        h.update(f.read(arr.offset))
    data = np.asarray(arr)  # a plain ndarray view of the map
    for start in range(0, n_items, _CHUNK_ROWS):
        chunk = data[start:start + _CHUNK_ROWS]
        h.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            item = start + int(np.argmin(finite))
            raise InputError(apath, f"row of {_item_label(data_dir, item)} has NaN or inf values, expected finite features")
        stray = (chunk[~mask[start:start + _CHUNK_ROWS]] != 0).any(axis=1)
        if stray.any():
            item = int(np.flatnonzero(~mask[start:start + _CHUNK_ROWS])[np.argmax(stray)]) + start
            raise InputError(apath, f"row of {_item_label(data_dir, item)} is not all zero although its mask is False; "
                                    "expected zero rows for items without this modality")
    got = h.hexdigest()
    if got != entry["array_sha256"]:
        raise InputError(apath, f"sha256 {got} differs from array_sha256 {entry['array_sha256']} in manifest.json; "
                                "the file was changed or replaced after extraction (extract it again)")
    return data, mask


def load_features(features_dir, data_dir, modalities: Sequence[str] | None = None) -> Features:
    """The features in ``features_dir`` for the prepared data in ``data_dir``, checked.

    ``modalities``: names to load, in this order (default: all, in manifest order). Raises
    ``InputError`` naming the offending file for anything that does not match the data or the manifest.
    """
    features_dir, data_dir = Path(features_dir), Path(data_dir)
    if not features_dir.is_dir():
        raise InputError(features_dir, "no such features directory; extract features first with data_prep/extract_features.py")
    manifest_file = features_dir / MANIFEST
    manifest = read_manifest(manifest_file)
    meta_file = data_dir / "meta.json"
    if not meta_file.is_file():
        raise InputError(meta_file, "missing; expected a prepared data directory (data_prep/prepare.py)")
    meta_sha = sha256_file(meta_file)
    if meta_sha != manifest["data_meta_sha256"]:
        raise InputError(manifest_file, f"features of another data set: data_meta_sha256 {manifest['data_meta_sha256'][:12]}..., "
                                        f"but {meta_file} has sha256 {meta_sha[:12]}...; extract features for this data")
    try:
        n_items = json.loads(meta_file.read_text(encoding="utf-8"))["n_items"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(meta_file, f"no readable n_items ({e})") from None
    if manifest["n_items"] != n_items:
        raise InputError(manifest_file, f"n_items {manifest['n_items']}, but the data has {n_items}")

    available = list(manifest["modalities"])
    names = tuple(available if modalities is None else modalities)
    for name in names:
        if name not in manifest["modalities"]:
            raise InputError(manifest_file, f"no modality {name!r}; available: {', '.join(available) or 'none'}")
    if len(set(names)) != len(names):
        raise InputError(manifest_file, f"modalities requested more than once: {list(names)}")
    arrays, masks = {}, {}
    for name in names:
        arrays[name], masks[name] = _check_modality(features_dir, data_dir, name, manifest["modalities"][name], n_items)
    return Features(names=names, arrays=arrays, masks=masks, manifest=manifest)


__all__ = ["Features", "load_features", "read_manifest", "array_path", "mask_path", "check_name", "sha256_file",
           "FORMAT_VERSION", "MANIFEST", "KINDS"]
