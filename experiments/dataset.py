"""The data every experiment receives: a prepared directory loaded once per run, plus its split.

Loaded once by the loop and shared by every seed, so a multi-seed run reads and splits the data once.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxrec import config as C
from jaxrec.data.interactions import Interactions
from jaxrec.data.prepared import load_prepared
from jaxrec.data.splits import Split, make_split


@dataclasses.dataclass
class Dataset:
    """A prepared data directory plus its split, as every experiment receives it."""

    path: str
    inter: Interactions
    meta: dict
    items: Any
    split: Split
    relevant_threshold: float

    def item_pool(self) -> np.ndarray | None:
        """Items that exist at training time (all but held-out cold-start items); None when all do."""
        if not self.split.cold_items.size:
            return None
        return np.setdiff1d(np.arange(self.inter.n_items), self.split.cold_items).astype(np.int32)


def load_dataset(cfg: C.Config) -> Dataset:
    inter, meta, items = load_prepared(cfg.data.path)
    split = make_split(inter, cfg.data.split)
    threshold = cfg.data.relevant_threshold
    if threshold is None:
        threshold = float(meta.get("positive_threshold", meta.get("rating_min", 0.0)))
    return Dataset(cfg.data.path, inter, meta, items, split, threshold)
