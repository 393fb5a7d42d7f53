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
    """Writes ``inter`` as a prepared data directory (DESIGN.md 2.1)."""
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
