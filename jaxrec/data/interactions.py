"""The ``Interactions`` container: one row per logged (user, item) event, sorted by (user, order).

Host-side numpy arrays: splitting and windowing index into them; models receive device arrays built
from them. The on-disk form is ``interactions.npz`` (docs/design.md, section 2; read by ``jaxrec.data.prepared``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.errors import InputError


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Logged interactions, rows sorted by (user, order).

    Attributes:
      user: int32 [N], dense ids 0..n_users-1.
      item: int32 [N], dense ids 0..n_items-1.
      rating: float32 [N], explicit rating or event reward.
      order: int64 [N], timestamp or chronological rank; only compared within a user, except by the
        global temporal split, which needs real timestamps.
      n_users, n_items: sizes of the id spaces (items or users without rows are allowed).
      event: optional int8 [N] event-type codes (events source), indexes ``event_types``.
      event_types: names of the event codes.
      order_is_time: whether ``order`` holds real timestamps (comparable across users) rather than a
        per-user chronological rank.
      source_rows: int64 [N], each row's index in the prepared data set this one was taken from (``take``
        composes them); None = this is the whole prepared data set. The leakage guards
        (``jaxrec.data.splits``) read it to know which logged interactions reach a model.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    order: np.ndarray
    n_users: int
    n_items: int
    event: np.ndarray | None = None
    event_types: tuple[str, ...] = ()
    order_is_time: bool = True
    source_rows: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.user)
        arrays = {"user": self.user, "item": self.item, "rating": self.rating, "order": self.order}
        if self.event is not None:
            arrays["event"] = self.event
        for name, a in arrays.items():
            if a.ndim != 1 or len(a) != n:
                raise InputError("interactions", f"array '{name}' has shape {a.shape}, expected ({n},)")
        if n and (self.user.min() < 0 or self.user.max() >= self.n_users):
            raise InputError("interactions", f"user ids must lie in [0, {self.n_users})")
        if n and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise InputError("interactions", f"item ids must lie in [0, {self.n_items})")
        du, do = np.diff(self.user), np.diff(self.order)
        if not np.all((du > 0) | ((du == 0) & (do >= 0))):
            raise InputError("interactions", "rows must be sorted by (user, order)")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> "Interactions":
        """The subset at ``rows`` (sorted row indices keep the (user, order) sort)."""
        rows = np.asarray(rows)
        return dataclasses.replace(
            self,
            user=self.user[rows], item=self.item[rows], rating=self.rating[rows], order=self.order[rows],
            event=None if self.event is None else self.event[rows],
            source_rows=self.sources()[rows],
        )

    def sources(self) -> np.ndarray:
        """Each row's index in the whole prepared data set (``source_rows``, or 0..N-1 for the whole set)."""
        return np.arange(len(self), dtype=np.int64) if self.source_rows is None else self.source_rows

    @property
    def user_start(self) -> np.ndarray:
        """[n_users + 1] offsets: user u's rows are ``user_start[u]:user_start[u+1]``."""
        counts = np.bincount(self.user, minlength=self.n_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def position(self) -> np.ndarray:
        """[N] 0-based chronological position of each row within its user's history."""
        start = self.user_start
        return np.arange(len(self.user), dtype=np.int64) - start[self.user]

    @property
    def user_counts(self) -> np.ndarray:
        return np.bincount(self.user, minlength=self.n_users)
