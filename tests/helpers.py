"""Small hand-made datasets shared by tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxrec.data.interactions import Interactions

REPO = Path(__file__).resolve().parents[1]


def make_interactions(rows, n_users=None, n_items=None, order_is_time=True) -> Interactions:
    """rows: (user, item, rating, order) tuples, already sorted by (user, order)."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    user, item = a[:, 0].astype(np.int32), a[:, 1].astype(np.int32)
    return Interactions(
        user=user, item=item, rating=a[:, 2].astype(np.float32), order=a[:, 3].astype(np.int64),
        n_users=n_users or int(user.max()) + 1, n_items=n_items or int(item.max()) + 1, order_is_time=order_is_time,
    )


def synthetic_interactions(n_users=60, n_items=40, per_user=(12, 30), seed=0) -> Interactions:
    """A random but fixed log with popular items, for end-to-end tests."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(*per_user, size=n_users)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    user = np.repeat(np.arange(n_users), counts).astype(np.int32)
    item = np.concatenate([rng.choice(n_items, size=c, replace=False, p=pop) for c in counts]).astype(np.int32)
    rating = rng.integers(1, 6, size=len(user)).astype(np.float32)
    order = np.concatenate([np.sort(rng.integers(0, 10**6, size=c)) for c in counts]).astype(np.int64)
    return Interactions(user=user, item=item, rating=rating, order=order, n_users=n_users, n_items=n_items)


def write_prepared(inter: Interactions, out: Path, name="synthetic", positive_threshold=4.0) -> Path:
    """Writes ``inter`` as a prepared data directory (docs/design.md, section 2)."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = dict(user=inter.user, item=inter.item, rating=inter.rating, order=inter.order)
    if inter.event is not None:
        arrays["event"] = inter.event
    np.savez(out / "interactions.npz", **arrays)
    (out / "items.csv").write_text("item,original_id\n" + "".join(f"{i},{i + 100}\n" for i in range(inter.n_items)))
    (out / "users.csv").write_text("user,original_id\n" + "".join(f"{u},{u + 1}\n" for u in range(inter.n_users)))
    meta = {"name": name, "n_users": inter.n_users, "n_items": inter.n_items, "n_interactions": len(inter),
            "rating_min": float(inter.rating.min()), "rating_max": float(inter.rating.max()), "sources": [],
            "format_version": 1, "order_kind": "timestamp", "positive_threshold": positive_threshold}
    if inter.event is not None:
        meta["event_types"] = list(inter.event_types)
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def write_features(features_dir: Path, data_dir: Path, modalities: dict) -> Path:
    """A valid features directory (docs/design.md, section 3) for ``data_dir``: ``modalities`` maps a name to
    ``(array [I, d] float32, mask [I] bool, kind)``; masked-out rows are zeroed."""
    import hashlib

    features_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (array, mask, kind) in modalities.items():
        array = np.where(np.asarray(mask)[:, None], np.asarray(array, np.float32), 0.0).astype(np.float32)
        np.save(features_dir / f"{name}.npy", array)
        np.save(features_dir / f"{name}_mask.npy", np.asarray(mask, bool))
        entries[name] = {"modality": kind, "model": "test", "weights_sha256": None, "dim": int(array.shape[1]),
                         "pooling": "none", "items_present": int(np.sum(mask)), "source": {},
                         "array_sha256": hashlib.sha256((features_dir / f"{name}.npy").read_bytes()).hexdigest()}
    meta_sha = hashlib.sha256((data_dir / "meta.json").read_bytes()).hexdigest()
    n_items = json.loads((data_dir / "meta.json").read_text())["n_items"]
    (features_dir / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "data_meta_sha256": meta_sha, "n_items": n_items, "modalities": entries}))
    return features_dir


def planted_content(n_users=300, n_items=120, n_clusters=4, per_user=24, seed=0):
    """Clustered users who like (rate 5) the items of their cluster and dislike (rate 1) a few others,
    and item features whose ``text`` block reveals the item's cluster (plus noise) while ``noise`` is pure
    noise: the content alone predicts what users like, so a content model can rank unseen items.

    Returns (interactions, {name: (array, mask, kind)}, item_cluster).
    """
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(n_items) % n_clusters
    user_cluster = rng.integers(0, n_clusters, n_users)
    rows = []
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(item_cluster == user_cluster[u]), size=per_user - 4, replace=False)
        other = rng.choice(np.flatnonzero(item_cluster != user_cluster[u]), size=4, replace=False)
        items = np.concatenate([liked, other])
        ratings = np.concatenate([np.full(len(liked), 5.0), np.full(len(other), 1.0)])
        perm = rng.permutation(len(items))
        rows += [(u, int(items[p]), ratings[p], t) for t, p in enumerate(perm)]
    inter = make_interactions(rows, n_users, n_items)
    text = np.eye(n_clusters, dtype=np.float32)[item_cluster] + 0.3 * rng.standard_normal((n_items, n_clusters)).astype(np.float32)
    text = np.concatenate([text, 0.3 * rng.standard_normal((n_items, 4)).astype(np.float32)], 1)
    noise = rng.standard_normal((n_items, 6)).astype(np.float32)
    has_noise = rng.random(n_items) < 0.7
    feats = {"text": (text, np.ones(n_items, bool), "text"), "noise": (noise, has_noise, "meta")}
    return inter, feats, item_cluster
