"""Tests for jaxrec.rl.replay (uniform and proportional prioritized replay).

Expected contents, priorities and weights are worked out by hand in the comments and written as
literals; the randomised consistency test checks the priority table against a numpy model of the
leaves. Most tests also run with a narrow ``row_width`` so that the table has several rows and the
row-level search, the row guards and the per-row statistics are exercised, not just one flat row.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.rl import replay as R

EX = {"obs": jnp.zeros((2,), jnp.float32), "act": jnp.zeros((), jnp.int32)}


def _batch(values):
    """Transitions whose fields all encode one integer ``v``: obs = [v, -v], act = v."""
    v = np.asarray(values)
    return {"obs": jnp.asarray(np.stack([v, -v], 1), jnp.float32), "act": jnp.asarray(v, jnp.int32)}


def _leaves(state):
    return np.asarray(state.priorities)


def _check_table(state):
    """Table invariants: each row sum is (bit-exactly) the reduction of its current leaves, each row
    min is the min over its filled slots (+inf if none), padding is 0 and the total is the leaf sum."""
    leaves, n_rows, width = np.asarray(state.leaves), *state.leaves.shape
    assert state.row_sums.shape == state.row_mins.shape == (n_rows,)
    assert n_rows == -(-state.capacity // width)
    # Recomputed, never delta-updated: bit-identical to a fresh reduction of the same leaves.
    np.testing.assert_array_equal(state.row_sums, jnp.sum(state.leaves, axis=1))
    np.testing.assert_allclose(state.row_sums, leaves.sum(axis=1, dtype=np.float64), rtol=1e-6)
    filled = np.arange(n_rows * width).reshape(n_rows, width) < int(state.size)
    np.testing.assert_array_equal(state.row_mins, np.where(filled, leaves, np.inf).min(axis=1))
    assert np.all(leaves.reshape(-1)[state.capacity:] == 0)  # padding slots are never drawn
    np.testing.assert_allclose(np.sum(np.asarray(state.row_sums), dtype=np.float64),
                               np.sum(leaves, dtype=np.float64), rtol=1e-6)


def _set_priorities(state, priorities, alpha=1.0):
    """Sets the first len(priorities) leaves to ``priorities`` exactly (eps = 0, p = delta**alpha)."""
    pr = np.asarray(priorities, np.float32)
    delta = jnp.asarray(pr ** (1.0 / alpha))
    return R.update_priorities(state, jnp.arange(len(pr)), delta, alpha, eps=0.0)


# ----------------------------------------------------------------------------------------------------
# add


@pytest.mark.parametrize("row_width", [None, 2])
def test_add_wraps_around_exact_contents(row_width):
    st = R.init(EX, 5, prioritized=True, row_width=row_width)
    st = R.add(st, _batch([0, 1, 2]))
    np.testing.assert_array_equal(st.data["act"], [0, 1, 2, 0, 0])
    assert (int(st.ptr), int(st.size)) == (3, 3)
    # 3 -> slot 3, 4 -> slot 4, 5 -> slot 0, 6 -> slot 1 (wraps inside one add).
    st = R.add(st, _batch([3, 4, 5, 6]))
    np.testing.assert_array_equal(st.data["act"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(st.data["obs"], [[5, -5], [6, -6], [2, -2], [3, -3], [4, -4]])
    assert (int(st.ptr), int(st.size)) == (2, 5)
    np.testing.assert_array_equal(_leaves(st), [1, 1, 1, 1, 1, 0, 0, 0][:st.leaves.size])
    _check_table(st)


def test_add_batch_larger_than_capacity_keeps_last_items():
    st = R.init(EX, 4, prioritized=True)
    # From ptr 0: 10..15 go to slots 0,1,2,3,0,1 -> the last writes win: [14, 15, 12, 13].
    st = R.add(st, _batch(np.arange(10, 16)))
    np.testing.assert_array_equal(st.data["act"], [14, 15, 12, 13])
    assert (int(st.ptr), int(st.size)) == (2, 4)
    # From ptr 3: 20..25 go to slots 3,0,1,2,3,0 -> [25, 22, 23, 24], ptr (3 + 6) % 4 = 1.
    st = R.init(EX, 4, prioritized=True)
    st = R.add(st, _batch([0, 1, 2]))
    st = R.add(st, _batch(np.arange(20, 26)))
    np.testing.assert_array_equal(st.data["act"], [25, 22, 23, 24])
    assert (int(st.ptr), int(st.size)) == (1, 4)
    np.testing.assert_array_equal(_leaves(st), [1, 1, 1, 1])
    _check_table(st)


def test_add_rejects_mismatched_shape_and_dtype():
    st = R.init({"r": jnp.zeros(())}, 4)
    with pytest.raises(AssertionError):
        R.add(st, {"r": jnp.zeros((3, 1))})  # [B, 1] rewards into scalar slots
    with pytest.raises(AssertionError):
        R.add(st, {"r": jnp.zeros((3,), jnp.int32)})
    with pytest.raises(AssertionError):
        R.add(st, {"x": jnp.zeros((3,))})


def test_init_layout():
    st = R.init({"a": jax.ShapeDtypeStruct((3,), jnp.float32), "b": np.zeros((), np.float64)}, 6)
    assert st.data["a"].shape == (6, 3) and st.data["b"].dtype == jnp.float32
    assert st.leaves.shape == (1, 8) and st.row_width == 8  # small buffer: one row of P = 8 >= 6
    assert np.all(np.asarray(st.leaves) == 0) and np.all(np.asarray(st.row_sums) == 0)
    assert np.all(np.isinf(st.row_mins)) and float(st.max_priority) == 1.0
    # Default width min(256, P): capacity 1000 -> 4 rows of 256 (24 padding slots).
    big = R.init(EX, 1000)
    assert big.leaves.shape == (4, 256) and big.row_sums.shape == big.row_mins.shape == (4,)
    assert R.init(EX, 6, row_width=4).leaves.shape == (2, 4)
    assert st.priorities.shape == (8,)
    u = R.init(EX, 6, prioritized=False)
    # placeholders: orbax cannot save zero-size arrays
    assert u.leaves.shape == (1, 1) and u.row_sums.shape == u.row_mins.shape == (1,)
    with pytest.raises(ValueError):
        R.init(EX, 0)
    with pytest.raises(ValueError):
        R.init(EX, 6, row_width=0)


# ----------------------------------------------------------------------------------------------------
# uniform sampling


def test_uniform_sampling_only_filled_unit_weights():
    st = R.add(R.init(EX, 10, prioritized=False), _batch([7, 8, 9]))
    batch, idx, w = R.sample(st, jax.random.key(0), 1000, beta=0.4)
    idx = np.asarray(idx)
    assert idx.dtype == np.int32 and set(idx.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(w, np.ones(1000, np.float32))
    np.testing.assert_array_equal(batch["act"], idx + 7)
    np.testing.assert_array_equal(batch["obs"][:, 1], -(idx + 7))
    # update_priorities is a no-op for uniform replay, so trainers may call it unconditionally.
    same = R.update_priorities(st, jnp.asarray(idx[:4]), jnp.ones(4), 0.6)
    chex.assert_trees_all_equal(same, st)


# ----------------------------------------------------------------------------------------------------
# prioritized sampling


@pytest.mark.parametrize("row_width", [None, 2, 4])
def test_prioritized_frequencies_chi_square(row_width):
    st = R.add(R.init(EX, 8, row_width=row_width), _batch(np.arange(6)))  # 6 of 8 slots filled
    pr = np.array([1, 2, 3, 4, 5, 6], np.float32)
    st = _set_priorities(st, pr)
    np.testing.assert_array_equal(_leaves(st), [1, 2, 3, 4, 5, 6, 0, 0])
    keys = jax.random.split(jax.random.key(42), 2000)
    _, idx, _ = jax.jit(jax.vmap(lambda k: R.sample(st, k, 50, 0.4)))(keys)  # 100,000 draws
    counts = np.bincount(np.asarray(idx).ravel(), minlength=8)
    assert counts[6:].sum() == 0  # empty slots are never drawn
    expected = 100_000 * pr / pr.sum()
    chi2 = np.sum((counts[:6] - expected) ** 2 / expected)
    # df = 5: P(chi2 > 30) ~ 1.5e-5 under the null. Stratification lowers the variance, so this is
    # conservative; a wrong law (e.g. alpha applied twice, p**2) gives chi2 in the thousands.
    assert chi2 < 30, (counts, expected, chi2)


@pytest.mark.parametrize("row_width", [None, 2, 4])
def test_stratified_counts_within_two_of_expectation(row_width):
    # With one draw per segment of width total/B, an item of mass m gets B*m/total +- 2 draws
    # whatever the key: the fully covered segments give exactly one draw each, the two edges 0 or 1.
    st = R.add(R.init(EX, 8, row_width=row_width), _batch(np.arange(6)))
    st = _set_priorities(st, [0.5, 3, 1, 2.5, 2, 1])
    for seed in range(3):
        _, idx, _ = R.sample(st, jax.random.key(seed), 1000, 0.4)
        counts = np.bincount(np.asarray(idx), minlength=8)
        np.testing.assert_allclose(counts[:6], [50, 300, 100, 250, 200, 100], atol=2)
        assert counts[6:].sum() == 0


@pytest.mark.parametrize("row_width", [None, 2])
def test_importance_weights_hand_computed(row_width):
    st = R.add(R.init(EX, 4, row_width=row_width), _batch(np.arange(4)))
    # alpha = 0.5, eps = 0: p = sqrt(|delta|) = [1, 2, 4, 8]; total 15, N = 4, beta = 0.5.
    st = R.update_priorities(st, jnp.arange(4), jnp.array([1.0, -4.0, 16.0, -64.0]), 0.5, eps=0.0)
    np.testing.assert_array_equal(_leaves(st), [1, 2, 4, 8])
    # w_i = (N p_i / total) ** -beta = (4 p_i / 15) ** -0.5 = sqrt(15 / (4 p_i)).
    w_raw = np.array([1.9364917, 1.3693064, 0.9682458, 0.6846532])
    for seed in range(5):
        _, idx, w = R.sample(st, jax.random.key(seed), 4, 0.5)
        idx = np.asarray(idx)
        np.testing.assert_allclose(w, w_raw[idx] / w_raw[idx].max(), rtol=1e-6)
        assert np.asarray(w).max() == 1.0
        # Global reference = the largest possible weight, that of the min priority p = 1.
        _, idx_g, wg = R.sample(st, jax.random.key(seed), 4, 0.5, global_max_weight=True)
        np.testing.assert_array_equal(idx_g, idx)
        np.testing.assert_allclose(wg, np.array([1.0, 0.70710678, 0.5, 0.35355339])[idx], rtol=1e-6)
    # beta = 1 with the global reference: w = p_min / p_i.
    _, idx, w = R.sample(st, jax.random.key(9), 4, 1.0, global_max_weight=True)
    np.testing.assert_allclose(w, 1.0 / np.array([1, 2, 4, 8])[np.asarray(idx)], rtol=1e-6)


def test_importance_weights_deterministic_batch():
    # p = [2, 2, 4], total 8, batch 2: segment [0, 4) covers slots 0-1 (p = 2), segment [4, 8) slot 2.
    # N = 3, P = [.25, .25, .5], beta = .5: w = [.75 ** -.5, .75 ** -.5, 1.5 ** -.5] / .75 ** -.5
    # = [1, 1, sqrt(.5)].
    st = _set_priorities(R.add(R.init(EX, 4), _batch([0, 1, 2])), [2, 2, 4])  # slot 3 stays empty
    for seed in range(5):
        batch, idx, w = R.sample(st, jax.random.key(seed), 2, 0.5)
        assert int(idx[0]) in (0, 1) and int(idx[1]) == 2
        np.testing.assert_allclose(w, [1.0, np.sqrt(0.5)], rtol=1e-6)
        np.testing.assert_array_equal(batch["act"], idx)


@pytest.mark.parametrize("row_width", [None, 1, 2, 4])
def test_search_right_edge_never_lands_on_empty_leaf(row_width):
    # leaves [1, 1, 1, 0, 0, 0, 0, 0], total 3; with W = 2 the rows are [1, 1 | 1, 0 | 0, 0 | 0, 0].
    st = R.add(R.init(EX, 8, row_width=row_width), _batch([0, 1, 2]))
    total = np.float32(3.0)
    u = jnp.array([0.0, 0.999999, 1.0, 2.5, total, np.nextafter(total, np.float32(4)), 1e9], jnp.float32)
    np.testing.assert_array_equal(R._locate(st, u), [0, 0, 1, 2, 2, 2, 2])
    # A zero-priority filled slot (eps = 0, delta = 0) in the middle is skipped at the boundary too.
    z = R.update_priorities(st, jnp.array([1]), jnp.array([0.0]), 1.0, eps=0.0)
    u = jnp.array([0.5, 1.0, 1.5, 2.0, 7.0], jnp.float32)
    np.testing.assert_array_equal(R._locate(z, u), [0, 2, 2, 2, 2])
    # A whole zero-mass row in the middle (W = 2: slots 2, 3 zeroed, leaves [1, 1 | 0, 0 | 1, 1 | 0, 0])
    # is skipped both inside the mass and at the right edge, and sampling never returns it.
    st = R.add(R.init(EX, 8, row_width=row_width), _batch(np.arange(6)))
    z = R.update_priorities(st, jnp.array([2, 3]), jnp.array([0.0, 0.0]), 1.0, eps=0.0)
    u = jnp.array([0.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 1e9], jnp.float32)
    np.testing.assert_array_equal(R._locate(z, u), [0, 1, 4, 4, 5, 5, 5, 5])
    _, idx, _ = R.sample(z, jax.random.key(0), 1000, 0.4)
    assert set(np.asarray(idx).tolist()) == {0, 1, 4, 5}
    _check_table(z)


def test_capacity_one():
    st = R.add(R.init(EX, 1), _batch([3, 4]))
    assert st.leaves.shape == (1, 1) and float(st.row_sums[0]) == 1.0
    batch, idx, w = R.sample(st, jax.random.key(0), 5, 0.4)
    np.testing.assert_array_equal(idx, np.zeros(5))
    np.testing.assert_array_equal(batch["act"], np.full(5, 4))
    np.testing.assert_array_equal(w, np.ones(5))


# ----------------------------------------------------------------------------------------------------
# update_priorities and max_priority


@pytest.mark.parametrize("row_width", [None, 2, 4])
def test_update_priorities_duplicates_last_wins_and_table_consistent(row_width):
    st = R.add(R.init(EX, 6, row_width=row_width), _batch(np.arange(6)))  # P = 8: 6, 7 are padding
    idx = jnp.array([2, 5, 2, 0, 5, 2])
    td = jnp.array([0.5, -5.0, 1.5, 2.0, 0.25, -4.0])
    alpha, eps = 0.6, 1e-6
    new = R.update_priorities(st, idx, td, alpha, eps)
    p = (np.abs(np.asarray(td, np.float32)) + np.float32(eps)) ** np.float32(alpha)
    # Last occurrences: slot 2 <- td[5], slot 5 <- td[4], slot 0 <- td[3]; 1, 3, 4 keep priority 1.
    np.testing.assert_allclose(_leaves(new), [p[3], 1, p[5], 1, 1, p[4], 0, 0][:new.leaves.size], rtol=1e-6)
    # alpha applied once: the leaf for td = -4 is (4 + eps) ** 0.6 = 2.2973967, not that ** 0.6.
    np.testing.assert_allclose(_leaves(new)[2], 2.2973967, rtol=1e-6)
    _check_table(new)
    np.testing.assert_allclose(jnp.min(new.row_mins), p[4], rtol=1e-6)  # 0.25 ** 0.6 = 0.4352
    # td[1] = -5 was overwritten within the batch, but the running max still saw it.
    np.testing.assert_allclose(new.max_priority, p[1], rtol=1e-6)
    # Same result as applying the six updates one by one.
    seq = st
    for i in range(6):
        seq = R.update_priorities(seq, idx[i:i + 1], td[i:i + 1], alpha, eps)
    np.testing.assert_array_equal(seq.leaves, new.leaves)
    np.testing.assert_array_equal(seq.row_sums, new.row_sums)  # bit-exact: recomputed, not deltas
    np.testing.assert_array_equal(seq.row_mins, new.row_mins)


@pytest.mark.parametrize("row_width", [None, 2])
def test_max_priority_for_new_items(row_width):
    st = R.add(R.init(EX, 8, row_width=row_width), _batch([0, 1]))
    np.testing.assert_array_equal(_leaves(st)[:2], [1, 1])  # initial max_priority = 1
    st = R.update_priorities(st, jnp.array([0, 1]), jnp.array([3.0, 0.1]), 0.5, eps=0.0)
    np.testing.assert_allclose(st.max_priority, np.sqrt(3.0), rtol=1e-6)
    st = R.update_priorities(st, jnp.array([0]), jnp.array([0.01]), 0.5, eps=0.0)  # max never drops
    np.testing.assert_allclose(st.max_priority, np.sqrt(3.0), rtol=1e-6)
    st = R.add(st, _batch([2, 3]))
    # New leaves are max_priority itself (already p ** alpha), not max_priority ** alpha = 3 ** .25.
    np.testing.assert_allclose(_leaves(st)[:4], [0.1, np.sqrt(0.1), np.sqrt(3.0), np.sqrt(3.0)], rtol=1e-6)
    _check_table(st)


# ----------------------------------------------------------------------------------------------------
# jit / scan / vmap


def _step(state, xs):
    """One trainer-like step: add the new transitions, sample, write back fake TD errors."""
    batch_in, key = xs
    state = R.add(state, batch_in)
    batch, idx, w = R.sample(state, key, 4, 0.6)
    td = batch["obs"][:, 0] * 0.5 - 1.0
    state = R.update_priorities(state, idx, td, 0.7)
    return state, (idx, w, batch["act"])


@pytest.mark.parametrize("prioritized,row_width", [(True, None), (True, 4), (False, None)])
def test_scan_equals_python_loop(prioritized, row_width):
    steps, b = 6, 3
    vals = np.arange(steps * b).reshape(steps, b) + 1
    batches = jax.tree.map(lambda x: x.reshape((steps, b) + x.shape[1:]), _batch(vals.ravel()))
    xs = (batches, jax.random.split(jax.random.key(1), steps))
    st0 = R.init(EX, 10, prioritized, row_width=row_width)  # 18 adds into 10 slots: wraps
    st_scan, out_scan = jax.jit(lambda s, x: jax.lax.scan(_step, s, x))(st0, xs)
    st_py, outs = st0, []
    for t in range(steps):
        st_py, o = _step(st_py, jax.tree.map(lambda x: x[t], xs))
        outs.append(o)
    out_py = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    chex.assert_trees_all_close(out_scan, out_py, rtol=1e-6)
    chex.assert_trees_all_close(st_scan, st_py, rtol=1e-6)
    # And under plain jit, step by step, with the state donated (in-place writes).
    jstep = jax.jit(_step, donate_argnums=0)
    st_j = R.init(EX, 10, prioritized, row_width=row_width)
    for t in range(steps):
        st_j, _ = jstep(st_j, jax.tree.map(lambda x: x[t], xs))
    chex.assert_trees_all_close(st_j, st_py, rtol=1e-6)
    if prioritized:
        _check_table(st_scan)


@pytest.mark.parametrize("row_width", [None, 4])
def test_vmap_over_independent_buffers(row_width):
    # Same shapes as the scan test (capacity 10, B = 3), so the one-by-one reference reuses its cache.
    st = jax.vmap(lambda _: R.init(EX, 10, row_width=row_width))(jnp.arange(2))
    batches = _batch(np.arange(1, 7))
    batches = jax.tree.map(lambda x: x.reshape((2, 3) + x.shape[1:]), batches)
    keys = jax.random.split(jax.random.key(3), 2)
    st_v, out_v = jax.jit(jax.vmap(_step))(st, (batches, keys))
    for i in range(2):
        st_i, out_i = _step(R.init(EX, 10, row_width=row_width),
                            jax.tree.map(lambda x: x[i], (batches, keys)))
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], (st_v, out_v)), (st_i, out_i), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# randomised consistency against a numpy model


@pytest.mark.parametrize("row_width", [None, 8])
def test_table_consistent_after_many_random_ops(row_width):
    rng = np.random.default_rng(0)
    # Not a power of two: one row of P = 64 (27 padding leaves), or 5 rows of 8 (3 padding leaves).
    cap, alpha, eps = 37, 0.7, 1e-6
    add = jax.jit(R.add)
    upd = jax.jit(functools.partial(R.update_priorities, alpha=alpha, eps=eps))
    st = R.init(EX, cap, row_width=row_width)
    ref, ptr, size, maxp, n = np.zeros(cap, np.float32), 0, 0, np.float32(1.0), 0
    for it in range(60):
        b = int(rng.choice([5, 40]))  # 40 > capacity
        st = add(st, _batch(np.arange(n, n + b)))
        for v in range(n, n + b):
            ref[ptr] = maxp
            ptr, size = (ptr + 1) % cap, min(size + 1, cap)
        n += b
        idx = rng.integers(0, size, 16)  # duplicates likely once size is small
        td = rng.normal(size=16).astype(np.float32) * rng.choice([0.1, 10.0])
        st = upd(st, jnp.asarray(idx, jnp.int32), jnp.asarray(td))
        pr = (np.abs(td) + np.float32(eps)) ** np.float32(alpha)
        for i, p in zip(idx, pr):
            ref[i] = p
        maxp = max(maxp, pr.max())
        assert (int(st.ptr), int(st.size)) == (ptr, size)
        np.testing.assert_allclose(_leaves(st)[:cap], ref, rtol=2e-6)
        assert np.all(_leaves(st)[cap:] == 0)
        np.testing.assert_allclose(st.max_priority, maxp, rtol=2e-6)
        _check_table(st)
    # Data holds the last 37 values written, in ring order.
    last = np.arange(n - cap, n)
    np.testing.assert_array_equal(np.asarray(st.data["act"])[(np.arange(n - cap, n)) % cap], last)


# ----------------------------------------------------------------------------------------------------
# beta schedule


def test_beta_schedule():
    np.testing.assert_allclose(R.beta_schedule(0), 0.4)
    np.testing.assert_allclose(R.beta_schedule(1000), 0.41, rtol=1e-6)  # 0.4 + 1000 * 1e-5
    np.testing.assert_allclose(R.beta_schedule(10**6), 1.0)  # capped
    np.testing.assert_allclose(R.beta_schedule(50, total_steps=100), 0.7, rtol=1e-6)
    np.testing.assert_allclose(R.beta_schedule(200, beta0=0.5, total_steps=100), 1.0)
    np.testing.assert_allclose(jax.jit(R.beta_schedule)(jnp.int32(30_000)), 0.7, rtol=1e-6)
