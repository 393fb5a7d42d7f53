"""Replay buffer for the off-policy learners (DDPG in DRR): uniform and proportional prioritized.

The buffer is a pure-functional, on-device data structure in the style of flashbax: the whole buffer
is one pytree (:class:`ReplayState`) and the operations are pure functions of it,

    state = init(example_transition, capacity, prioritized)
    state = add(state, batch)                                   # batch: leading axis B
    batch, indices, weights = sample(state, key, batch_size, beta)
    state = update_priorities(state, indices, td_errors, alpha)

so a trainer can keep the buffer in its training state and run ``add -> sample -> learn ->
update_priorities`` inside one jitted ``lax.scan`` chunk (the harness contract: every device step is a
pure function of the state), checkpoint it with the rest of the state, and ``vmap`` several
independent buffers. Capacity, batch sizes and ``prioritized`` are static; nothing loops over
transitions in Python, and every piece of work is O(B log capacity) except the copy of the sampled
rows. ``add``, ``sample`` and ``update_priorities`` are wrapped in ``jax.jit`` (with the batch size
static) so that eager calls, in tests and buffer warm-up, hit the compilation cache; inside a caller's
jit they are simply inlined. Call them from a jitted function that donates the state (``jax.jit(...,
donate_argnums=0)``) or from ``lax.scan``: XLA then writes the B new rows in place, whereas any call
that cannot reuse the input buffer (eager, or jitted without donation) copies all ``capacity`` rows.

Prioritized replay (Schaul, Quan, Antonoglou and Silver, "Prioritized Experience Replay", ICLR 2016)
----------------------------------------------------------------------------------------------------
Proportional variant. Transition ``i`` has priority ``p_i = (|delta_i| + eps) ** alpha`` from its latest
TD error ``delta_i`` and is drawn with probability ``P(i) = p_i / sum_k p_k``. The tree stores
``p_i`` *after* the exponent, and so does ``max_priority``, so ``alpha`` is applied exactly once (the
seed code applied it again to ``max_priority`` on insertion, and built priorities from the TD target
instead of the TD error; both are fixed here).

* Sum tree. ``tree`` is an implicit binary heap of ``2 * P`` float32 (``P`` the smallest power of two
  ``>= capacity``): node 1 is the root, node ``n`` has children ``2n`` and ``2n + 1``, and slot ``i``
  is leaf ``P + i``. Empty and padding leaves hold 0, so they are never drawn. Node 0 is unused.
* Writes (``add`` and ``update_priorities``) set the leaves, then recompute every ancestor from its two
  children, level by level (``lax.fori_loop`` over the ``log2 P`` levels, vectorised over the
  batch). Recomputing instead of adding deltas makes duplicate indices in one batch harmless (they
  write the same parent value) and stops float32 drift from accumulating: every internal node is
  always exactly ``fl(left + right)`` of its current children.
* Duplicate indices in ``update_priorities`` (one transition drawn twice in a batch) resolve to the
  *last* occurrence, as if the updates were applied one after another.
* New transitions get ``max_priority`` (the largest priority ever written, initially 1), so each is
  likely to be replayed at least once before its TD error is known (Schaul et al. 2016, Alg. 1).
* Sampling is stratified, as in Schaul et al. 2016 and the seed: the total mass is cut into
  ``batch_size`` equal segments and one uniform draw is made in each, which lowers the variance of the
  batch composition without changing each draw's marginal ``P(i)``. Each draw descends the tree from
  the root (a ``fori_loop`` over levels, ``vmap`` over the draws).
* Right-edge guard. In float32 a draw can land at or just past the mass of a subtree (``(j + U) *
  total / B`` can round up to ``total``; ``u - left`` can exceed ``right`` by an ulp), and a naive
  descent then walks onto an empty (zero) leaf past ``size``. The descent goes right only when the
  right child has positive mass, so it always stays in a subtree with positive mass and ends on a
  filled leaf: overflowing draws land on the rightmost filled leaf, deterministically, which moves
  probability only by float rounding. A final clamp to ``[0, size)`` covers the degenerate all-zero
  tree (sampling an empty buffer, which is the caller's error: fill ``batch_size`` rows first).
* Importance-sampling weights ``w_i = (N * P(i)) ** -beta`` with ``N = size``, divided by a maximum
  weight so that they only ever scale updates down (Schaul et al. 2016, Sec. 3.4). Because
  ``w_i / w_ref = (p_i / p_ref) ** -beta``, ``N`` and the total cancel and the weights are computed
  from the priority ratio. Two references are offered:

  - ``global_max_weight=False`` (default, as in the seed and the paper's Algorithm 1): the maximum over
    the sampled batch, i.e. ``p_ref`` = the smallest sampled priority. The largest weight in every
    batch is exactly 1, so the effective learning rate does not depend on whether a rare
    low-priority transition exists somewhere in the buffer.
  - ``global_max_weight=True``: the maximum over the whole buffer, ``p_ref = min_k p_k``, read in O(1)
    from a min-tree kept next to the sum tree (same layout; empty leaves are ``+inf``, the identity of
    ``min``, not 1.0 as in the seed's MinTree, which capped every minimum at 1). Weights are then
    comparable across batches.

* ``beta`` is annealed towards 1 (full bias correction at the end of training) with
  :func:`beta_schedule`.

Uniform replay (``prioritized=False``) draws ``size``-uniform indices with ``jax.random.randint`` and
returns unit weights; ``update_priorities`` is then a no-op so the trainer can call it
unconditionally. The trees are kept as one-element placeholders, because checkpointing (orbax)
refuses zero-size arrays.

Precision: priorities are float32, so a transition whose priority is below about ``1e-7`` of the total
mass is drawn at a rate that is off by float rounding; with ``eps > 0`` and ``alpha <= 1`` and
realistic TD errors this does not occur at the capacities used here (``<= 1e6``). ``alpha`` must stay
fixed over a run, because ``max_priority`` and the stored priorities are in ``p ** alpha`` units.
A NaN TD error makes the root NaN (visible as a NaN ``tree[1]``), after which draws clamp to slot 0.
"""
from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

__all__ = ["ReplayState", "add", "beta_schedule", "init", "sample", "update_priorities"]


@struct.dataclass
class ReplayState:
    """The whole buffer as a pytree. Fields other than ``capacity``/``prioritized`` are arrays.

    Attributes:
      data: pytree of arrays, each with leading axis ``capacity``; slot ``i`` holds one transition.
      ptr: int32 scalar, the slot the next transition is written to (ring-buffer order).
      size: int32 scalar, the number of filled slots, ``min(#added, capacity)``; slots ``[0, size)``.
      tree: float32 ``[2 * P]`` sum tree of priorities ``p ** alpha`` (``[1]`` placeholder if uniform).
      min_tree: float32 ``[2 * P]`` min tree of the same priorities, ``+inf`` on empty leaves.
      max_priority: float32 scalar, the largest priority ever written (new items get it); starts at 1.
      capacity: static number of slots.
      prioritized: static; ``False`` for uniform replay.
    """

    data: Any
    ptr: jax.Array
    size: jax.Array
    tree: jax.Array
    min_tree: jax.Array
    max_priority: jax.Array
    capacity: int = struct.field(pytree_node=False)
    prioritized: bool = struct.field(pytree_node=False)

    @property
    def leaf_offset(self) -> int:
        """``P``: slot ``i`` is tree node ``P + i``."""
        return self.tree.shape[-1] // 2

    @property
    def depth(self) -> int:
        """Number of levels between the root and the leaves, ``log2 P``."""
        return self.leaf_offset.bit_length() - 1


def _tree_width(capacity: int) -> int:
    """Smallest power of two ``>= capacity`` (a complete tree keeps parent/child arithmetic shifts)."""
    return 1 << (capacity - 1).bit_length()


def init(example_transition: Any, capacity: int, prioritized: bool = True) -> ReplayState:
    """An empty buffer.

    Args:
      example_transition: pytree of one transition (arrays, scalars or ``jax.ShapeDtypeStruct``);
        only shapes and dtypes are used.
      capacity: static number of slots, ``>= 1``.
      prioritized: proportional prioritized replay if ``True``, uniform otherwise.

    Returns:
      A :class:`ReplayState` with ``ptr = size = 0``, zero data, an all-zero sum tree, a ``+inf`` min
      tree and ``max_priority = 1``.
    """
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")

    def slots(x):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        # canonicalize: a float64 numpy example must give float32 storage when x64 is off, silently.
        return jnp.zeros((capacity,) + tuple(x.shape), jax.dtypes.canonicalize_dtype(x.dtype))

    data = jax.tree.map(slots, example_transition)
    n_nodes = 2 * _tree_width(capacity) if prioritized else 1
    return ReplayState(
        data=data,
        ptr=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        tree=jnp.zeros((n_nodes,), jnp.float32),
        min_tree=jnp.full((n_nodes,), jnp.inf, jnp.float32),
        max_priority=jnp.ones((), jnp.float32),
        capacity=capacity,
        prioritized=bool(prioritized),
    )


def _refresh_ancestors(state: ReplayState, leaf_nodes: jax.Array, tree, min_tree):
    """Recomputes every ancestor of ``leaf_nodes`` from its children, bottom-up.

    All nodes updated in one iteration are on the same level, and their children (one level down)
    are already final, so one gather + scatter per level suffices. Duplicate parents receive the
    same value computed from the same children, so the scatter order does not matter.
    """

    def level(k, trees):
        s, m = trees
        parent = leaf_nodes >> k
        # Children 2n and 2n + 1 are adjacent: one [B, 2] gather per tree instead of two (on CPU the
        # per-op overhead, not the bytes moved, is what costs here).
        kids = 2 * parent[:, None] + jnp.arange(2, dtype=jnp.int32)
        sk, mk = s[kids], m[kids]
        s = s.at[parent].set(sk[:, 0] + sk[:, 1])
        m = m.at[parent].set(jnp.minimum(mk[:, 0], mk[:, 1]))
        return s, m

    return jax.lax.fori_loop(1, state.depth + 1, level, (tree, min_tree))


@jax.jit
def add(state: ReplayState, batch: Any) -> ReplayState:
    """Writes ``B`` transitions (leading axis ``B``, static) in ring-buffer order.

    Slots ``ptr, ptr + 1, ...`` modulo ``capacity`` are overwritten, wrapping around as needed. If
    ``B > capacity`` only the last ``capacity`` transitions survive, exactly as if they had been added
    one by one (the dropped ones would have been overwritten within the same call). In a prioritized
    buffer the written slots get priority ``max_priority`` (already in ``p ** alpha`` units).

    Args:
      state: the buffer.
      batch: pytree with the structure of ``state.data``; each leaf ``[B, *leaf.shape[1:]]`` of the
        same dtype.

    Returns:
      The new state; ``ptr = (ptr + B) % capacity``, ``size = min(size + B, capacity)``.
    """
    batch = jax.tree.map(jnp.asarray, batch)
    chex.assert_trees_all_equal_structs(batch, state.data)
    b = jax.tree.leaves(batch)[0].shape[0]
    chex.assert_tree_shape_prefix(batch, (b,))
    # Trailing shapes and dtypes must match the storage exactly: a silent broadcast or cast here
    # (e.g. rewards [B, 1] into [capacity]) would corrupt every later sample.
    jax.tree.map(lambda x, d: chex.assert_shape(x, (b,) + d.shape[1:]), batch, state.data)
    chex.assert_trees_all_equal_dtypes(batch, state.data)

    cap = state.capacity
    skip = max(0, b - cap)  # static: rows that the same call would overwrite again
    if skip:
        batch = jax.tree.map(lambda x: x[skip:], batch)
    slots = (state.ptr + skip + jnp.arange(b - skip, dtype=jnp.int32)) % cap
    # slots are distinct (b - skip <= capacity), which lets XLA skip the duplicate-handling scatter.
    data = jax.tree.map(lambda d, x: d.at[slots].set(x, unique_indices=True), state.data, batch)
    state = state.replace(
        data=data,
        ptr=((state.ptr + b) % cap).astype(jnp.int32),
        size=jnp.minimum(state.size + b, cap).astype(jnp.int32),
    )
    if not state.prioritized:
        return state
    leaf_nodes = state.leaf_offset + slots
    p = jnp.full(slots.shape, state.max_priority, jnp.float32)
    tree = state.tree.at[leaf_nodes].set(p, unique_indices=True)
    min_tree = state.min_tree.at[leaf_nodes].set(p, unique_indices=True)
    tree, min_tree = _refresh_ancestors(state, leaf_nodes, tree, min_tree)
    return state.replace(tree=tree, min_tree=min_tree)


def _descend(state: ReplayState, u: jax.Array) -> jax.Array:
    """Slot whose cumulative-priority interval contains the scalar mass ``u`` (vmapped by the caller).

    Goes right iff ``u >= left`` *and* the right child has positive mass, so the walk never enters
    a zero-mass subtree and always ends on a filled leaf, even when float rounding puts ``u`` at or
    past the right edge of the mass (see the module docstring).
    """
    tree = state.tree

    def level(_, carry):
        node, u = carry
        left, right = jax.lax.dynamic_slice(tree, (2 * node,), (2,))  # adjacent children, one read
        go_right = (u >= left) & (right > 0)
        return 2 * node + go_right.astype(jnp.int32), jnp.where(go_right, u - left, u)

    node, _ = jax.lax.fori_loop(0, state.depth, level, (jnp.ones((), jnp.int32), u))
    return node - state.leaf_offset


@functools.partial(jax.jit, static_argnames=("batch_size", "global_max_weight"))
def sample(state: ReplayState, key: jax.Array, batch_size: int, beta: float | jax.Array,
           *, global_max_weight: bool = False) -> tuple[Any, jax.Array, jax.Array]:
    """Draws ``batch_size`` (static) transitions with replacement.

    Uniform buffers draw slots uniformly from ``[0, size)`` and return unit weights. Prioritized
    buffers draw slot ``i`` with probability ``p_i / sum_k p_k`` by stratified sampling (one draw in
    each of ``batch_size`` equal segments of the total mass) and return importance weights
    ``(N * P(i)) ** -beta`` divided by the largest weight in the batch, or in the whole buffer when
    ``global_max_weight`` (``N = size``). The buffer must hold at least one transition.

    Args:
      state: the buffer.
      key: PRNG key.
      batch_size: static number of draws.
      beta: importance-sampling exponent in ``[0, 1]`` (ignored for uniform replay); see
        :func:`beta_schedule`.
      global_max_weight: static; normalise by the buffer-wide maximum weight instead of the batch's.

    Returns:
      ``(batch, indices, weights)``: the transitions (leading axis ``batch_size``), their int32 slots
      (all ``< size``) and float32 weights in ``(0, 1]``.
    """
    if not state.prioritized:
        # maximum(size, 1): randint with an empty range is undefined; an empty buffer yields slot 0.
        indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1), jnp.int32)
        weights = jnp.ones((batch_size,), jnp.float32)
    else:
        total = state.tree[1]
        # Stratified: draw j is uniform in segment [j, j + 1) * total / batch_size.
        u = (jnp.arange(batch_size, dtype=jnp.float32)
             + jax.random.uniform(key, (batch_size,), jnp.float32)) * (total / batch_size)
        indices = jax.vmap(lambda x: _descend(state, x))(u)
        # Only reachable with an all-zero tree (empty buffer): keep indices inside [0, size).
        indices = jnp.clip(indices, 0, jnp.maximum(state.size - 1, 0)).astype(jnp.int32)
        p = state.tree[state.leaf_offset + indices]
        p_ref = state.min_tree[1] if global_max_weight else jnp.min(p)
        # w_i / w_ref = (N p_i / total) ** -beta / (N p_ref / total) ** -beta = (p_i / p_ref) ** -beta;
        # the ratio form avoids computing N * P(i) and is exactly 1 for the reference transition.
        weights = (p / p_ref) ** (-jnp.asarray(beta, jnp.float32))
    chex.assert_shape([indices, weights], (batch_size,))
    batch = jax.tree.map(lambda d: d[indices], state.data)
    return batch, indices, weights


def _last_occurrence(indices: jax.Array) -> jax.Array:
    """Bool mask, True at the last occurrence of each value of ``indices`` (O(B log B))."""
    order = jnp.argsort(indices, stable=True)  # equal values keep their batch order
    s = indices[order]
    last_in_run = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1,), bool)])
    return jnp.zeros(indices.shape, bool).at[order].set(last_in_run, unique_indices=True)


@jax.jit
def update_priorities(state: ReplayState, indices: jax.Array, td_errors: jax.Array,
                      alpha: float | jax.Array, eps: float | jax.Array = 1e-6) -> ReplayState:
    """Sets ``p_i = (|delta_i| + eps) ** alpha`` for the sampled slots (no-op for uniform replay).

    Args:
      state: the buffer.
      indices: int ``[B]`` slots, as returned by :func:`sample`; duplicates allowed (the last wins).
      td_errors: ``[B]`` TD errors ``delta_i`` (not targets) of those transitions, same order.
      alpha: prioritisation exponent (0 = uniform); must be the same for the whole run.
      eps: keeps priorities positive so that no transition becomes unreachable.

    Returns:
      The new state; every ancestor of the updated leaves is recomputed, and ``max_priority`` is the
      running maximum over all priorities written.
    """
    if not state.prioritized:
        return state
    chex.assert_rank(indices, 1)
    # Rank-1 on purpose: a critic output of shape [B, 1] would otherwise broadcast against [B].
    chex.assert_shape(td_errors, indices.shape)
    indices = indices.astype(jnp.int32)
    p = (jnp.abs(td_errors.astype(jnp.float32)) + eps) ** jnp.asarray(alpha, jnp.float32)
    leaf_nodes = state.leaf_offset + indices
    # Earlier duplicates are sent out of bounds and dropped, so the result equals sequential updates.
    target = jnp.where(_last_occurrence(indices), leaf_nodes, state.tree.shape[0])
    tree = state.tree.at[target].set(p, mode="drop")
    min_tree = state.min_tree.at[target].set(p, mode="drop")
    tree, min_tree = _refresh_ancestors(state, leaf_nodes, tree, min_tree)
    return state.replace(tree=tree, min_tree=min_tree,
                         max_priority=jnp.maximum(state.max_priority, jnp.max(p)))


def beta_schedule(step: int | jax.Array, beta0: float = 0.4, increment: float = 1e-5,
                  total_steps: int | None = None) -> jax.Array:
    """Importance-sampling exponent ``min(1, beta0 + increment * step)`` (jittable in ``step``).

    The default mirrors the seed, which added ``1e-5`` per call to ``sample``: pass the number of
    sample calls so far as ``step``. With ``total_steps`` the increment is ``(1 - beta0) /
    total_steps`` instead, reaching full correction (beta = 1) at the end of training as in Schaul et
    al. 2016.
    """
    if total_steps is not None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        increment = (1.0 - beta0) / total_steps
    return jnp.minimum(1.0, beta0 + increment * jnp.asarray(step, jnp.float32))
