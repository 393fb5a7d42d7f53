"""Sequence windows for sequential recommenders and multi-step RL targets, built without Python loops.

Conventions. A user's logged history is ``x_0, x_1, ..., x_{len-1}`` (rows sorted by order). The
*state* before position ``p`` is the last ``window`` items ``x_{p-window} .. x_{p-1}``, left-padded with
the id ``PAD = n_items`` when fewer exist; the *action* at ``p`` is ``x_p`` and its reward the row's
rating (explicit rating, or the event reward of an events source). The episode of a user ends after
their last logged item.

Training data (``sequence_chunks``): every transition ``p >= min_history`` of every user, grouped into
*chunks* of ``chunk`` consecutive transitions of one user. A chunk is stored as ONE item sequence that
covers the states of its transitions and the ``n_steps`` states that follow each of them, so a model
can encode the sequence once and read off every state it needs (``jaxrec.nets.sequence``) instead of
re-encoding each shifted window. With ``chunk = 1`` a row is exactly one transition: state, action,
the next ``n_steps`` rewards and next states.

Layout of a chunk starting at position ``p0`` (``N = window``, ``C = chunk``, ``A = C + max(n_steps, 1) - 1``):

* ``items[k, j] = x_{p0 - N + j}`` for ``j < L = N + A`` (PAD outside ``0 <= p < len``);
* state ``i`` (``i = 0..A``) is ``items[k, i : i + N]`` = the state before position ``p0 + i``;
* its action is ``items[k, N + i]`` (``i < A``), with ``reward[k, i]``, ``valid[k, i]`` (the action
  exists) and ``terminal[k, i]`` (it is the user's last logged action);
* ``sample[k, i]`` (``i < C``) marks the states that are training samples.

Evaluation (``next_item_queries``): one query per held-out target row: the state before it, built from
the rows a model may see at that point (the part's visible context plus the earlier targets, which are
input only), and ``seen_mask`` for excluding every item the user has already interacted with.

Everything here is host-side numpy (the data layer); the trainers move the arrays to the device once.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.interactions import Interactions


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(s, s + n)`` for each (s, n), and the index of the range of each element."""
    lengths = np.asarray(lengths, np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.asarray(starts, np.int64)[owner] + offsets, owner


@dataclasses.dataclass(frozen=True)
class SequenceChunks:
    """Training chunks (see the module docstring for the layout). Arrays are numpy, one row per chunk."""

    items: np.ndarray
    """int32 [K, L] item ids, PAD = n_items outside the user's history."""
    reward: np.ndarray
    """float32 [K, A] reward of the action of state i (0 where no action exists)."""
    valid: np.ndarray
    """bool [K, A] the action of state i exists."""
    terminal: np.ndarray
    """bool [K, A] the action of state i is the user's last logged one (the episode ends after it)."""
    sample: np.ndarray
    """bool [K, C] state i is a training sample."""
    user: np.ndarray
    """int32 [K] the chunk's user."""
    start: np.ndarray
    """int64 [K] position p0 (in the user's history) of the action of state 0."""
    event: np.ndarray | None
    """int8 [K, A] event code of the action of state i (events sources only; -1 where no action)."""
    window: int
    n_steps: int
    chunk: int
    n_items: int

    @property
    def pad(self) -> int:
        return self.n_items

    @property
    def n_actions(self) -> int:
        return self.items.shape[1] - self.window

    @property
    def n_states(self) -> int:
        return self.n_actions + 1

    @property
    def n_samples(self) -> int:
        return int(self.sample.sum())

    def __len__(self) -> int:
        return len(self.items)

    def actions(self) -> np.ndarray:
        """[K, A] action of each state (PAD where none)."""
        return self.items[:, self.window:]

    def states(self) -> np.ndarray:
        """[K, A + 1, N] every state of every chunk, unfolded (for tests and small data only)."""
        idx = np.arange(self.n_states)[:, None] + np.arange(self.window)[None, :]
        return self.items[:, idx]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a trainer moves to the device (``user``/``start``/``event`` stay on the host)."""
        return {"items": self.items, "reward": self.reward, "valid": self.valid, "terminal": self.terminal,
                "sample": self.sample}


def sequence_chunks(inter: Interactions, window: int = 10, n_steps: int = 6, chunk: int = 1,
                    min_history: int = 1) -> SequenceChunks:
    """Training chunks of every transition ``p >= min_history`` of every user of ``inter``.

    ``inter`` must already be the training interactions (``jaxrec.data.splits.train_view``): windows
    and lookahead never leave the rows they are given, so nothing held out can reach training.

    Args:
      inter: training interactions, rows sorted by (user, order).
      window: N, items in a state.
      n_steps: n, steps of lookahead for multi-step targets (0: states and actions only).
      chunk: C, consecutive transitions of a user per row.
      min_history: first position that is a training sample (0 includes the empty-history state).

    Returns:
      ``SequenceChunks``; users with no sample contribute no chunk, the last chunk of a user may hold
      fewer than ``chunk`` samples (``sample`` says which).
    """
    if window < 1 or n_steps < 0 or chunk < 1 or min_history < 0:
        raise ValueError("need window >= 1, n_steps >= 0, chunk >= 1 and min_history >= 0")
    n_actions = chunk + max(n_steps, 1) - 1
    length = window + n_actions
    counts = inter.user_counts.astype(np.int64)
    starts = inter.user_start[:-1]
    n_samples = np.maximum(counts - min_history, 0)
    n_chunks = -(-n_samples // chunk)
    first, user = _ranges(np.zeros_like(n_chunks), n_chunks)
    p0 = min_history + first * chunk  # position of the action of state 0
    user_len = counts[user]

    # Position (within its user's history) of every cell: items[k, j] is x_{p0 - N + j}.
    pos = p0[:, None] - window + np.arange(length)[None, :]
    inside = (pos >= 0) & (pos < user_len[:, None])
    rows = np.where(inside, starts[user][:, None] + pos, 0)
    items = np.where(inside, inter.item[rows], inter.n_items).astype(np.int32)

    act_pos = p0[:, None] + np.arange(n_actions)[None, :]
    valid = act_pos < user_len[:, None]
    act_rows = np.where(valid, starts[user][:, None] + act_pos, 0)
    reward = np.where(valid, inter.rating[act_rows], 0.0).astype(np.float32)
    terminal = act_pos == user_len[:, None] - 1
    sample = valid[:, :chunk]
    event = None
    if inter.event is not None:
        event = np.where(valid, inter.event[act_rows], -1).astype(np.int8)
    return SequenceChunks(items=items, reward=reward, valid=valid, terminal=terminal, sample=sample,
                          user=user.astype(np.int32), start=p0, event=event, window=window, n_steps=n_steps,
                          chunk=chunk, n_items=inter.n_items)


@dataclasses.dataclass(frozen=True)
class UserSequences:
    """Whole-sequence training rows (SASRec's training; ``SQNConfig.mode="sequence"``), one per user.

    Row u holds the user's last ``L = max_len`` training items, left-padded with PAD: slot j is history
    position ``len_u - L + j``. State t is the encoding of slots 0..t; its action is the item in slot
    t + 1 (t = 0..L-2), with that row's reward, so the action-axis arrays have ``L - 1`` columns and the
    same meaning as ``SequenceChunks``' (``valid``: the action exists; ``terminal``: it is the user's last
    logged one; ``sample``: it is a training sample, i.e. its history position is >= ``min_history``).
    """

    items: np.ndarray
    """int32 [U, L] item ids, PAD = n_items left of the user's (kept) history."""
    reward: np.ndarray
    """float32 [U, L - 1] reward of the action of state t (0 where no action exists)."""
    valid: np.ndarray
    """bool [U, L - 1] the action of state t exists."""
    terminal: np.ndarray
    """bool [U, L - 1] the action of state t is the user's last logged one."""
    sample: np.ndarray
    """bool [U, L - 1] state t is a training sample."""
    user: np.ndarray
    """int32 [U] the row's user."""
    n_items: int

    @property
    def n_samples(self) -> int:
        return int(self.sample.sum())

    def __len__(self) -> int:
        return len(self.items)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a trainer moves to the device (the same keys as ``SequenceChunks.arrays``)."""
        return {"items": self.items, "reward": self.reward, "valid": self.valid, "terminal": self.terminal,
                "sample": self.sample}

    def strata(self, k: int, multiple: int = 8) -> tuple[dict[str, np.ndarray], ...]:
        """The rows in ``k`` length strata: ``arrays()`` of the users sorted by kept length and split into
        ``k`` groups of (nearly: sizes differ by at most one) equal size, shortest first, each group's rows cut
        to its longest kept history rounded up to ``multiple`` slots (at most L, at least 2).

        Only PAD columns are cut (rows are left-padded), and a slot's position counts from the row's right
        end (``SequenceNetwork.sequence_states``), so a cut row gives every position the same state and loss
        as the full row. Drawing the same number of rows from every stratum keeps each user's chance of being
        in a batch the same as uniform sampling while the batch is padded only to its strata's widths: on
        ML-1M (L = 200, 108 kept items per user on average) k = 4 gives widths 48/96/200/200, 1.47x fewer slots.
        """
        if not 1 <= k <= len(self):
            raise ValueError(f"need 1 <= strata <= {len(self)} rows, got {k}")
        kept = (self.items != self.n_items).sum(axis=1)
        order = np.argsort(kept, kind="stable")
        L = self.items.shape[1]
        out = []
        for rows in np.array_split(order, k):
            width = int(min(L, max(2, -(-int(kept[rows].max()) // multiple) * multiple)))
            # The last `width` item columns and the last `width - 1` action columns (those have L - 1).
            out.append({name: x[rows, L - width:] for name, x in self.arrays().items()})
        return tuple(out)


def user_sequences(inter: Interactions, max_len: int = 200, min_history: int = 1) -> UserSequences:
    """Each user's last ``max_len`` items of ``inter`` (the training interactions, ``train_view``) as one
    left-padded row; users without a sample (fewer than ``min_history + 1`` items) get no row. Earlier items
    of longer histories are dropped, as SASRec's training does."""
    if max_len < 2 or min_history < 1:
        raise ValueError("need max_len >= 2 and min_history >= 1")
    counts = inter.user_counts.astype(np.int64)
    user = np.flatnonzero(counts > min_history)
    length = counts[user]
    pos = length[:, None] - max_len + np.arange(max_len)[None, :]  # history position of every slot
    inside = pos >= 0
    rows = np.where(inside, inter.user_start[user][:, None] + pos, 0)
    items = np.where(inside, inter.item[rows], inter.n_items).astype(np.int32)
    act_pos, act_rows, valid = pos[:, 1:], rows[:, 1:], inside[:, 1:]
    reward = np.where(valid, inter.rating[act_rows], 0.0).astype(np.float32)
    return UserSequences(items=items, reward=reward, valid=valid, terminal=act_pos == length[:, None] - 1,
                         sample=valid & (act_pos >= min_history), user=user.astype(np.int32),
                         n_items=inter.n_items)


@dataclasses.dataclass(frozen=True)
class NextItemQueries:
    """Next-item evaluation queries of one part, plus what is needed to mask already-seen items."""

    state: np.ndarray
    """int32 [Q, N] the state before each target (PAD-left-padded)."""
    target: np.ndarray
    """int32 [Q] the target item."""
    user: np.ndarray
    """int32 [Q] the target's user."""
    position: np.ndarray
    """int64 [Q] position of the target in the user's visible history."""
    row: np.ndarray
    """int64 [Q] the target's row in the interactions."""
    event: np.ndarray | None
    """int8 [Q] the target's event code (events sources only)."""
    hist_item: np.ndarray
    """int32 [H] items of the visible history rows, grouped by user in order."""
    hist_pos: np.ndarray
    """int64 [H] position of each history row within its user's history."""
    seg_start: np.ndarray
    """int64 [Q] start of the query's user in ``hist_item``."""
    seg_end: np.ndarray
    """int64 [Q] end of the query's user in ``hist_item``."""
    n_items: int

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, keep: np.ndarray) -> "NextItemQueries":
        """The queries where ``keep`` (bool [Q]) is true; the history index is shared."""
        per_query = ("state", "target", "user", "position", "row", "seg_start", "seg_end")
        changes = {name: getattr(self, name)[keep] for name in per_query}
        changes["event"] = None if self.event is None else self.event[keep]
        return dataclasses.replace(self, **changes)


def next_item_queries(inter: Interactions, history_rows: np.ndarray, target_rows: np.ndarray,
                      window: int = 10) -> NextItemQueries:
    """One query per target row: the last ``window`` items before it among ``history_rows``.

    Args:
      inter: all interactions (rows sorted by (user, order)).
      history_rows: rows a model may see as input, INCLUDING the targets themselves (an earlier target
        is visible history for a later one, exactly as a logged user's past is): for a held-out part,
        its visible context plus its target rows.
      target_rows: the rows to predict (a subset of ``history_rows``).
      window: N.

    Returns:
      ``NextItemQueries``. A query's state and its seen items only use history rows that come before
      the target in the user's order, so nothing from the future of a query can reach it.
    """
    hist = np.unique(np.asarray(history_rows, np.int64))
    targets = np.unique(np.asarray(target_rows, np.int64))
    if not np.isin(targets, hist).all():
        raise ValueError("every target row must be one of the history rows")
    h_user = inter.user[hist]
    # Segment (user) boundaries inside `hist`; rows of one user are contiguous because rows are sorted.
    bounds = np.flatnonzero(np.r_[True, h_user[1:] != h_user[:-1], True])
    seg_of_row = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    seg_first = bounds[:-1][seg_of_row]
    hist_pos = np.arange(len(hist), dtype=np.int64) - seg_first

    t_idx = np.searchsorted(hist, targets)
    t_first = seg_first[t_idx]
    cols = t_idx[:, None] - window + np.arange(window)[None, :]
    inside = cols >= t_first[:, None]
    state = np.where(inside, inter.item[hist[np.maximum(cols, 0)]], inter.n_items).astype(np.int32)
    return NextItemQueries(
        state=state, target=inter.item[targets].astype(np.int32), user=inter.user[targets].astype(np.int32),
        position=hist_pos[t_idx], row=targets, event=None if inter.event is None else inter.event[targets],
        hist_item=inter.item[hist].astype(np.int32), hist_pos=hist_pos, seg_start=t_first,
        seg_end=bounds[1:][seg_of_row][t_idx], n_items=inter.n_items,
    )


def _first_positions(q: NextItemQueries, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first [U_b, n_items] int32, inv [len(idx)]): first history position of every (user, item) of the
    users of queries ``idx`` (a large value where never seen), and each query's row in ``first``."""
    seg, inv = np.unique(q.seg_start[idx], return_inverse=True)
    seg_end = q.seg_end[idx][np.unique(inv, return_index=True)[1]]
    rows, owner = _ranges(seg, seg_end - seg)
    first = np.full((len(seg), q.n_items), np.iinfo(np.int32).max, np.int32)
    np.minimum.at(first, (owner, q.hist_item[rows]), q.hist_pos[rows].astype(np.int32))
    return first, inv


def seen_mask(q: NextItemQueries, idx: np.ndarray) -> np.ndarray:
    """bool [len(idx), n_items]: items the user interacted with before each query's target.

    Built per batch from the first position of every (user, item) pair of the batch's users, so the
    cost is one pass over those users' histories however many queries they have.
    """
    idx = np.asarray(idx)
    first, inv = _first_positions(q, idx)
    return first[inv] < q.position[idx][:, None]


def target_seen(q: NextItemQueries, batch: int = 8192) -> np.ndarray:
    """bool [Q]: the query's target item already occurs in the user's history before it."""
    out = np.zeros(len(q), bool)
    for start in range(0, len(q), batch):
        idx = np.arange(start, min(start + batch, len(q)))
        first, inv = _first_positions(q, idx)
        out[idx] = first[inv, q.target[idx]] < q.position[idx]
    return out
