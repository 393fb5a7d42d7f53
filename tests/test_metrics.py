"""Tests for jaxrec.eval.metrics.

Expected values are worked out by hand and written as literals; only the
randomised batch test uses a (loop-over-users) numpy reference.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.eval import metrics
from jaxrec.eval.metrics import ideal_dcg, mean_metrics, topk_metrics

LOG2_3 = np.log2(3)


def _check(out, key, expected):
    np.testing.assert_allclose(np.asarray(out[key]), np.asarray(expected, dtype=np.float64), rtol=1e-6, atol=1e-7, err_msg=key)


def test_single_user_known_ranks():
    # Ranking by score: idx1 (0.9), idx3, idx4, idx2, idx5, idx0 (0.1).
    # Relevant: idx1 (rank 0), idx4 (rank 2), idx0 (rank 5) -> n_rel = 3.
    scores = jnp.array([[0.1, 0.9, 0.3, 0.7, 0.5, 0.2]])
    relevant = jnp.array([[True, True, False, False, True, False]])
    exclude = jnp.zeros_like(relevant)
    out = topk_metrics(scores, relevant, exclude, (1, 3, 5))

    assert set(out) == {f"{m}@{k}" for m in ("hr", "precision", "recall", "ndcg") for k in (1, 3, 5)}
    for v in out.values():
        assert v.shape == (1,) and v.dtype == jnp.float32

    _check(out, "hr@1", [1.0])
    _check(out, "precision@1", [1.0])
    _check(out, "recall@1", [1 / 3])
    _check(out, "ndcg@1", [1.0])

    idcg3 = 1 + 1 / LOG2_3 + 1 / 2
    _check(out, "hr@3", [1.0])
    _check(out, "precision@3", [2 / 3])
    _check(out, "recall@3", [2 / 3])
    _check(out, "ndcg@3", [(1 + 1 / 2) / idcg3])

    # Rank 5 (idx0) is outside the top 5; IDCG@5 stops at n_rel = 3 positions.
    _check(out, "hr@5", [1.0])
    _check(out, "precision@5", [2 / 5])
    _check(out, "recall@5", [2 / 3])
    _check(out, "ndcg@5", [(1 + 1 / 2) / idcg3])


def test_ties_rank_lower_index_first():
    # Equal scores 0.5 at idx 0, 1, 3 -> ranking idx2, idx0, idx1, idx3.
    scores = jnp.array([[0.5, 0.5, 0.9, 0.5]] * 3)
    relevant = jnp.array([
        [True, False, False, False],  # rank 1
        [False, True, False, False],  # rank 2
        [False, False, False, True],  # rank 3
    ])
    exclude = jnp.zeros_like(relevant)
    out = topk_metrics(scores, relevant, exclude, (2, 3))

    _check(out, "hr@2", [1.0, 0.0, 0.0])
    _check(out, "ndcg@2", [1 / LOG2_3, 0.0, 0.0])
    _check(out, "hr@3", [1.0, 1.0, 0.0])
    _check(out, "precision@3", [1 / 3, 1 / 3, 0.0])
    _check(out, "ndcg@3", [1 / LOG2_3, 1 / 2, 0.0])


def test_user_without_relevant_items_is_nan_and_left_out_of_mean():
    scores = jnp.array([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    relevant = jnp.array([[True, False, False], [False, False, False]])
    exclude = jnp.zeros_like(relevant)
    out = topk_metrics(scores, relevant, exclude, (1, 2))

    _check(out, "hr@1", [1.0, 0.0])
    _check(out, "precision@2", [0.5, 0.0])
    _check(out, "recall@1", [1.0, np.nan])
    _check(out, "ndcg@2", [1.0, np.nan])

    means = mean_metrics(out)
    assert all(type(v) is float for v in means.values())
    assert means["recall@1"] == pytest.approx(1.0)
    assert means["ndcg@1"] == pytest.approx(1.0)
    assert means["recall@2"] == pytest.approx(1.0)
    assert means["hr@1"] == pytest.approx(0.5)
    assert means["precision@1"] == pytest.approx(0.5)
    assert means["precision@2"] == pytest.approx(0.25)


def test_mean_metrics_all_nan_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = mean_metrics({"recall@1": jnp.array([jnp.nan, jnp.nan]), "hr@1": jnp.array([0.0, 1.0])})
    assert np.isnan(means["recall@1"])
    assert means["hr@1"] == 0.5


def test_relevant_but_excluded_is_not_counted_and_never_ranked():
    # Row 0: idx0 is relevant with the highest score but excluded -> n_rel = 1
    # (idx2). Ranking idx3, idx2, idx1, then excluded idx0 (-inf).
    # Row 1: its only relevant item is excluded -> n_rel = 0.
    scores = jnp.array([[10.0, 1.0, 2.0, 3.0], [10.0, 1.0, 2.0, 3.0]])
    relevant = jnp.array([[True, False, True, False], [True, False, False, False]])
    exclude = jnp.array([[True, False, False, False], [True, False, False, False]])
    out = topk_metrics(scores, relevant, exclude, (1, 2, 4))

    _check(out, "hr@1", [0.0, 0.0])
    _check(out, "recall@1", [0.0, np.nan])
    _check(out, "ndcg@1", [0.0, np.nan])
    _check(out, "hr@2", [1.0, 0.0])
    _check(out, "precision@2", [1 / 2, 0.0])
    _check(out, "recall@2", [1.0, np.nan])
    _check(out, "ndcg@2", [1 / LOG2_3, np.nan])
    # The excluded relevant idx0 fills rank 3 of the top 4 but is not a hit.
    _check(out, "hr@4", [1.0, 0.0])
    _check(out, "precision@4", [1 / 4, 0.0])
    _check(out, "recall@4", [1.0, np.nan])
    _check(out, "ndcg@4", [1 / LOG2_3, np.nan])


def test_fewer_rankable_items_than_k():
    # Rankable: idx0 (0.1), idx3 (0.5) -> ranks idx3, idx0, then excluded
    # idx1, idx2, idx4 in index order. idx1 is relevant but excluded.
    scores = jnp.array([[0.1, 0.9, 0.8, 0.5, 0.7], [0.1, 0.9, 0.8, 0.5, 0.7]])
    relevant = jnp.array([[True, True, False, True, False], [True, True, True, True, True]])
    exclude = jnp.array([[False, True, True, False, True], [True, True, True, True, True]])
    out = topk_metrics(scores, relevant, exclude, [4, 5])

    _check(out, "hr@4", [1.0, 0.0])
    _check(out, "precision@4", [2 / 4, 0.0])
    _check(out, "recall@4", [1.0, np.nan])
    _check(out, "ndcg@4", [1.0, np.nan])
    _check(out, "precision@5", [2 / 5, 0.0])
    _check(out, "recall@5", [1.0, np.nan])
    _check(out, "ndcg@5", [1.0, np.nan])


def test_nan_scores_rank_last():
    # Unmasked, lax.top_k would put NaN first. As -inf: idx2, idx1, idx0, idx3.
    scores = jnp.array([[jnp.nan, 0.2, 0.5, jnp.nan], [jnp.nan, 0.2, 0.5, jnp.nan]])
    relevant = jnp.array([[True, False, False, False], [False, True, False, False]])
    exclude = jnp.zeros_like(relevant)
    out = topk_metrics(scores, relevant, exclude, (1, 2, 3))

    _check(out, "hr@1", [0.0, 0.0])
    _check(out, "hr@2", [0.0, 1.0])
    _check(out, "ndcg@2", [0.0, 1 / LOG2_3])
    _check(out, "hr@3", [1.0, 1.0])
    _check(out, "precision@3", [1 / 3, 1 / 3])
    _check(out, "recall@3", [1.0, 1.0])
    _check(out, "ndcg@3", [1 / 2, 1 / LOG2_3])


def test_ndcg_with_more_relevant_items_than_k():
    # Ranking follows the index; relevant at ranks 0, 2, 3, 4 -> n_rel = 4.
    scores = jnp.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    relevant = jnp.array([[True, False, True, True, True, False]])
    exclude = jnp.zeros_like(relevant)
    out = topk_metrics(scores, relevant, exclude, (2, 3))

    _check(out, "precision@2", [1 / 2])
    _check(out, "recall@2", [1 / 4])
    _check(out, "ndcg@2", [1 / (1 + 1 / LOG2_3)])
    _check(out, "recall@3", [2 / 4])
    _check(out, "ndcg@3", [(1 + 1 / 2) / (1 + 1 / LOG2_3 + 1 / 2)])


def test_ideal_dcg():
    np.testing.assert_allclose(
        np.asarray(ideal_dcg(jnp.array([0, 1, 2, 5]), 3)),
        [0.0, 1.0, 1 + 1 / LOG2_3, 1 + 1 / LOG2_3 + 1 / 2],
        rtol=1e-6,
    )


def test_integer_masks_behave_like_bool():
    scores = jnp.array([[0.1, 0.9, 0.3]])
    rel_b = jnp.array([[True, False, True]])
    exc_b = jnp.array([[False, True, False]])
    out_b = topk_metrics(scores, rel_b, exc_b, (1, 2))
    out_i = topk_metrics(scores, rel_b.astype(jnp.int32), exc_b.astype(jnp.int32), (1, 2))
    for key in out_b:
        np.testing.assert_array_equal(np.asarray(out_b[key]), np.asarray(out_i[key]))


def _numpy_reference(scores, relevant, exclude, ks):
    n_users = scores.shape[0]
    out = {f"{m}@{k}": np.zeros(n_users) for m in ("hr", "precision", "recall", "ndcg") for k in ks}
    for u in range(n_users):
        masked = np.where(exclude[u] | np.isnan(scores[u]), -np.inf, scores[u])
        # Stable sort on the negated score gives "lower index first" on ties.
        order = np.argsort(-masked, kind="stable")
        rel = relevant[u] & ~exclude[u]
        n_rel = int(rel.sum())
        for k in ks:
            top = rel[order[:k]]
            hits = int(top.sum())
            dcg = sum(1 / np.log2(p + 2) for p in range(k) if top[p])
            idcg = sum(1 / np.log2(p + 2) for p in range(min(k, n_rel)))
            out[f"hr@{k}"][u] = float(hits > 0)
            out[f"precision@{k}"][u] = hits / k
            out[f"recall@{k}"][u] = hits / n_rel if n_rel else np.nan
            out[f"ndcg@{k}"][u] = dcg / idcg if n_rel else np.nan
    return out


def test_batch_matches_per_user_and_numpy_reference():
    n_users, n_items, ks = 12, 30, (1, 5, 10, 30)
    k_score, k_nan, k_rel, k_exc = jax.random.split(jax.random.PRNGKey(0), 4)
    # Coarse quantisation forces many ties; a few NaNs exercise the masking.
    scores = jnp.round(jax.random.uniform(k_score, (n_users, n_items)) * 8) / 8
    scores = jnp.where(jax.random.bernoulli(k_nan, 0.05, scores.shape), jnp.nan, scores)
    relevant = jax.random.bernoulli(k_rel, 0.2, scores.shape)
    exclude = jax.random.bernoulli(k_exc, 0.3, scores.shape)
    relevant = relevant.at[0].set(False)  # a user with nothing relevant
    exclude = exclude.at[1].set(True)  # a user with nothing rankable

    batch = topk_metrics(scores, relevant, exclude, ks)
    expected = _numpy_reference(np.asarray(scores), np.asarray(relevant), np.asarray(exclude), ks)
    assert set(batch) == set(expected)
    for key in expected:
        np.testing.assert_allclose(np.asarray(batch[key]), expected[key], rtol=1e-5, atol=1e-6, err_msg=key)

    for u in range(n_users):
        alone = topk_metrics(scores[u : u + 1], relevant[u : u + 1], exclude[u : u + 1], ks)
        for key in batch:
            np.testing.assert_allclose(np.asarray(alone[key])[0], np.asarray(batch[key])[u], rtol=1e-6, err_msg=f"{key} user {u}")


def test_traces_once_for_repeated_calls(monkeypatch):
    # _ranked_relevance runs in Python only while the jitted core is traced,
    # so counting its calls counts traces.
    calls = []
    original = metrics._ranked_relevance

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, "_ranked_relevance", counting)
    # Start from an empty cache so earlier tests (or reruns) cannot hide a trace.
    metrics._topk_metrics_jit.clear_cache()

    shape = (3, 17)
    key = jax.random.PRNGKey(1)
    for i in range(3):
        scores = jax.random.normal(jax.random.fold_in(key, i), shape)
        relevant = scores > 1.0
        exclude = scores < -1.0
        # Tuple and list cut-offs must share one compiled function.
        ks = (1, 5) if i % 2 == 0 else [1, 5]
        jax.block_until_ready(topk_metrics(scores, relevant, exclude, ks))
    assert len(calls) == 1

    topk_metrics(jnp.zeros((4, 17)), jnp.zeros((4, 17), bool), jnp.zeros((4, 17), bool), (1, 5))
    assert len(calls) == 2


def test_invalid_arguments():
    scores = jnp.zeros((2, 3))
    mask = jnp.zeros((2, 3), bool)
    with pytest.raises(ValueError):
        topk_metrics(scores, mask, mask, (4,))
    with pytest.raises(ValueError):
        topk_metrics(scores, mask, mask, ())
    with pytest.raises(ValueError):
        topk_metrics(scores, mask, mask, (0,))
    with pytest.raises(AssertionError):
        topk_metrics(scores, jnp.zeros((2, 4), bool), mask, (1,))
