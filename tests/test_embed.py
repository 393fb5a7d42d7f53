"""Matrix-factorisation pretraining and fold-in (jaxrec.embed.mf) on small synthetic problems."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.embed import mf
from jaxrec.errors import ConfigError
from tests.helpers import synthetic_interactions

N_USERS, N_ITEMS, RANK = 40, 30, 2


def low_rank_log(seed=0):
    """Every user rates every item; rating = 3 + 1.5 * (a low-rank score, standardised), rounded to 1..5.

    About a third of each user's items reach 4+, so bce positives follow the hidden factors.
    """
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(N_USERS, RANK)), rng.normal(size=(N_ITEMS, RANK))
    s = x @ y.T
    s = (s - s.mean()) / s.std()
    rating = np.clip(np.rint(3 + 1.5 * s), 1, 5).astype(np.float32)
    user, item = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij")
    return user.ravel().astype(np.int32), item.ravel().astype(np.int32), rating.ravel(), s


BCE = mf.MFConfig(objective="bce", dim=8, epochs=150, batch=128, lr=2e-2, l2=1e-4, positive_threshold=4.0)
MSE = mf.MFConfig(objective="mse", dim=8, epochs=150, batch=128, lr=2e-2, l2=1e-4)


@pytest.fixture(scope="module")
def bce_fit():
    user, item, rating, _ = low_rank_log()
    return mf.fit_mf(jax.random.key(0), user, item, rating, N_USERS, N_ITEMS, BCE), (user, item, rating)


@pytest.fixture(scope="module")
def mse_fit():
    user, item, rating, _ = low_rank_log()
    return mf.fit_mf(jax.random.key(0), user, item, rating, N_USERS, N_ITEMS, MSE), (user, item, rating)


def mean_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mean over users of P(score of a positive > score of a non-positive)."""
    aucs = []
    for s, p in zip(scores, positive):
        if p.any() and (~p).any():
            aucs.append((s[p][:, None] > s[~p][None, :]).mean())
    return float(np.mean(aucs))


def test_bce_recovers_the_low_rank_ranking_and_is_keyed(bce_fit):
    params, (user, item, rating) = bce_fit
    positive = (rating >= 4).reshape(N_USERS, N_ITEMS)
    scores = np.asarray(mf.score(params, jnp.arange(N_USERS)))
    assert scores.shape == (N_USERS, N_ITEMS)
    assert mean_auc(scores, positive) > 0.9
    # The seed's form: no biases were trained.
    assert float(jnp.abs(params.user_bias).max()) == 0.0 and float(jnp.abs(params.item_bias).max()) == 0.0
    again = mf.fit_mf(jax.random.key(0), user, item, rating, N_USERS, N_ITEMS, BCE)
    other = mf.fit_mf(jax.random.key(1), user, item, rating, N_USERS, N_ITEMS, BCE)
    np.testing.assert_array_equal(params.item, again.item)
    np.testing.assert_array_equal(params.user, again.user)
    assert not np.allclose(params.item, other.item)


def test_mse_regresses_the_ratings(mse_fit):
    params, (user, item, rating) = mse_fit
    pred = np.asarray(mf.predict_rating(params, jnp.asarray(user), jnp.asarray(item)))
    assert np.corrcoef(pred, rating)[0, 1] > 0.9
    assert float(params.scale) == 1.0  # a is fixed for mse
    np.testing.assert_allclose(np.asarray(mf.score(params, jnp.arange(3))).ravel(), pred[:3 * N_ITEMS], rtol=1e-5, atol=1e-5)
    # s^2 of eq. (4) is the mean squared training residual.
    assert float(params.noise_var) == pytest.approx(float(np.mean((rating - pred) ** 2)), rel=1e-4)


def test_negative_sampling_draws_the_complement_uniformly():
    # User 0's positives are {1, 2, 5, 9}; user 1 has none; user 2 has all but item 3.
    n_items = 10
    user = np.array([0, 0, 0, 0] + [2] * 9, np.int32)
    item = np.array([9, 1, 5, 2] + [i for i in range(n_items) if i != 3], np.int32)
    cfg = mf.MFConfig(positive_threshold=4.0, batch=4)
    data = mf.prepare_data(user, item, np.full(len(user), 5.0), 3, n_items, cfg)
    draws = np.asarray(mf.sample_negatives(jax.random.key(3), data, jnp.array([0, 1, 2]), 20000))
    counts0 = np.bincount(draws[0], minlength=n_items)
    assert set(np.flatnonzero(counts0)) == {0, 3, 4, 6, 7, 8}
    # Binomial sd of a frequency at p = 1/6 over 20,000 draws is 0.0026: 4 sd.
    np.testing.assert_allclose(counts0[counts0 > 0] / 20000, 1 / 6, atol=0.0106)
    assert set(np.unique(draws[1])) == set(range(n_items))
    assert set(np.unique(draws[2])) == {3}


def test_fold_in_mse_is_the_closed_form_ridge_by_hand():
    # d = 2. Items m0 = (1, 0), m1 = (0, 1), m2 = (1, 1) with biases 0.5, 0, -0.5; c = 3, a = 1;
    # prior t0 = 0, S = I, s^2 = 1. History: item 0 rated 4, item 2 rated 5 (and one padded slot).
    # x0 = (1, 0, 1), y0 = 4 - 3 - 0.5 = 0.5;  x2 = (1, 1, 1), y2 = 5 - 3 + 0.5 = 2.5.
    # (X^T X + I) t = X^T y:  [[3,1,2],[1,2,1],[2,1,3]] t = (3, 2.5, 3). Rows 1 and 3 force t_0 = t_2 = p,
    # then 5p + t_1 = 3 and 2p + 2 t_1 = 2.5: p = 0.4375, t_1 = 0.8125. So u = (0.4375, 0.8125), b_u = 0.4375.
    params = mf.MFParams(
        user=jnp.zeros((1, 2)), item=jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        user_bias=jnp.zeros(1), item_bias=jnp.array([0.5, 0.0, -0.5]), scale=jnp.float32(1.0), offset=jnp.float32(3.0),
        prior_mean=jnp.zeros(3), prior_cov=jnp.eye(3), noise_var=jnp.float32(1.0),
    )
    cfg = mf.MFConfig(objective="mse", dim=2)
    items = np.array([[0, 2, 1], [0, 0, 0]])
    mask = np.array([[True, True, False], [False, False, False]])
    ratings = np.array([[4.0, 5.0, 1.0], [0.0, 0.0, 0.0]])
    vecs, biases = mf.fold_in_users(params, items, mask, ratings, cfg)
    np.testing.assert_allclose(vecs[0], [0.4375, 0.8125], atol=1e-5)
    assert float(biases[0]) == pytest.approx(0.4375, abs=1e-5)
    # An empty history is the prior mean; a non-zero prior mean with noise s^2 = 2 by the same algebra:
    # (X^T X + 2 I) t = X^T y + 2 t0 with t0 = (1, 0, 0).
    np.testing.assert_allclose(vecs[1], [0.0, 0.0], atol=1e-6)
    params2 = params.replace(prior_mean=jnp.array([1.0, 0.0, 0.0]), noise_var=jnp.float32(2.0))
    x = np.array([[1.0, 0, 1], [1, 1, 1]])
    expected = np.linalg.solve(x.T @ x + 2 * np.eye(3), x.T @ np.array([0.5, 2.5]) + 2 * np.array([1.0, 0, 0]))
    v2, b2 = mf.fold_in_users(params2, items[:1], mask[:1], ratings[:1], cfg)
    np.testing.assert_allclose(np.r_[v2[0], b2[0]], expected, atol=1e-5)


@jax.jit
def bce_fold_in_grad(params, u, positive):
    """Gradient of eq. (5) written out over all items (independently of the Newton-CG implementation).

    ``positive``: [I] bool, the visible positives; one negative per positive (n_negatives = 1).
    """

    def objective(u):
        n = positive.sum()
        w = n / (params.item.shape[0] - n)
        z = params.scale * params.item @ u + params.offset
        d = u - params.prior_mean[:-1]
        prec = jnp.linalg.inv(params.prior_cov[:-1, :-1])
        return jnp.sum(jnp.where(positive, jax.nn.softplus(-z), w * jax.nn.softplus(z))) + 0.5 * d @ prec @ d

    return jax.grad(objective)(u)


def test_fold_in_bce_minimises_eq5_and_recovers_trained_users(bce_fit):
    params, (user, item, rating) = bce_fit
    users = np.arange(6)
    items, mask, ratings = mf.pad_histories(user, item, rating, users)
    # This tiny fit is saturated (|logits| ~ 30): more Newton steps than ML-1M needs (6 reach 1e-4 there).
    cfg = dataclasses.replace(BCE, fold_in_iters=16)
    vecs, biases = mf.fold_in_users(params, items, mask, ratings, cfg)
    assert vecs.shape == (6, BCE.dim) and float(jnp.abs(biases).max()) == 0.0
    positive = (rating >= 4).reshape(N_USERS, N_ITEMS)[users]
    for k in range(6):
        g = bce_fold_in_grad(params, vecs[k], positive[k])
        g0 = bce_fold_in_grad(params, params.prior_mean[:-1], positive[k])
        # (user 0 has no positive: g0 = 0 and its fold-in is the prior mean)
        assert float(jnp.linalg.norm(g)) <= 1e-3 * float(jnp.linalg.norm(g0))
    # From a user's full training history the fold-in ranks like the fitted vector.
    folded = np.asarray(mf.score_vectors(params, vecs, biases))
    assert mean_auc(folded, positive) > 0.9
    cos = np.sum(np.asarray(vecs * params.user[users]), 1) / (
        np.linalg.norm(vecs, axis=1) * np.linalg.norm(params.user[users], axis=1))
    # Not equal: the fit's per-example l2 is weaker than the population prior, which pulls users with
    # few positives (user 1 has 5) towards the mean more.
    assert cos.min() > 0.6 and cos.mean() > 0.85
    # Padding is ignored; an empty history is the prior mean.
    wide = [np.pad(a, ((0, 0), (0, 3))) for a in (items, mask, ratings)]
    wide[0][:, -3:] = 7
    # Padding is ignored: the padded solve meets the same optimality test on the unpadded eq. (5). (The
    # vectors themselves differ by up to 1.4e-3: truncated Newton-CG on this saturated fit (|logits| ~ 30)
    # follows float32 rounding of the wider rows to a slightly different point of a very flat optimum.)
    padded = mf.fold_in_users(params, *wide, cfg)[0]
    for k in range(6):
        g = bce_fold_in_grad(params, padded[k], positive[k])
        g0 = bce_fold_in_grad(params, params.prior_mean[:-1], positive[k])
        assert float(jnp.linalg.norm(g)) <= 1e-3 * float(jnp.linalg.norm(g0))
    np.testing.assert_allclose(padded, vecs, rtol=0, atol=2e-3)
    empty = mf.fold_in_users(params, items[:1], np.zeros_like(mask[:1]), ratings[:1], cfg)[0]
    np.testing.assert_allclose(empty[0], params.prior_mean[:-1], atol=1e-6)


def test_fold_in_mse_recovers_trained_users(mse_fit):
    params, (user, item, rating) = mse_fit
    users = np.arange(8)
    items, mask, ratings = mf.pad_histories(user, item, rating, users)
    vecs, biases = mf.fold_in_users(params, items, mask, ratings, MSE)
    pred_fold = np.asarray(mf.score_vectors(params, vecs, biases))
    pred_fit = np.asarray(mf.score(params, jnp.asarray(users)))
    assert np.abs(pred_fold - pred_fit).mean() < 0.15
    assert np.corrcoef(pred_fold.ravel(), ratings.ravel())[0, 1] > 0.9


def test_pad_histories():
    items, mask, ratings = mf.pad_histories(np.array([0, 0, 2, 2, 2, 5]), np.array([3, 4, 5, 6, 7, 8]),
                                            np.array([1.0, 2, 3, 4, 5, 6]), np.array([0, 1, 2]))
    np.testing.assert_array_equal(items, [[3, 4, 0], [0, 0, 0], [5, 6, 7]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(ratings, [[1, 2, 0], [0, 0, 0], [3, 4, 5]])


def test_users_without_examples_hold_the_prior_and_chunks_replay(bce_fit):
    params, (user, item, rating) = bce_fit
    # User 0 rated nothing >= 4: no bce example, so its row is the population prior mean.
    data = mf.prepare_data(user, item, rating, N_USERS, N_ITEMS, BCE)
    assert not bool(data.trained[0]) and bool(data.trained[1:].all())
    np.testing.assert_allclose(params.user[0], params.prior_mean[:-1], atol=1e-6)
    np.testing.assert_allclose(params.prior_mean[:-1], np.asarray(params.user[1:]).mean(0), atol=1e-5)
    # Four epochs in one call or as 1 + 3 (what a resumed run does) give the same parameters.
    init = mf.init_params(jax.random.key(0), data, N_USERS, BCE)
    opt = mf.make_optimizer(BCE).init(init)
    straight, _, _ = mf.train_epochs(init, opt, jax.random.key(1), 0, 4, data, BCE)
    p, o, _ = mf.train_epochs(init, opt, jax.random.key(1), 0, 1, data, BCE)
    chunked, _, _ = mf.train_epochs(p, o, jax.random.key(1), 1, 3, data, BCE)
    np.testing.assert_allclose(chunked.item, straight.item, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.user, straight.user, rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError):
        mf.prepare_data(np.zeros(1), np.zeros(1), np.ones(1), 1, 1, mf.MFConfig())  # bce without threshold
    with pytest.raises(ConfigError):
        mf.MFConfig(dim=0).validate()


def test_fit_one_epoch_per_call_for_a_progress_bar_gives_the_same_parameters():
    """``on_epoch`` (the shell's progress bar) splits the fit into one-epoch calls: bit-identical parameters."""
    inter = synthetic_interactions(n_users=40, n_items=30)
    cfg = mf.MFConfig(dim=8, epochs=3, positive_threshold=4.0)
    args = (inter.user, inter.item, inter.rating, inter.n_users, inter.n_items, cfg)
    seen = []
    whole = mf.fit_mf(jax.random.key(0), *args)
    split = mf.fit_mf(jax.random.key(0), *args, on_epoch=lambda epoch, loss: seen.append(epoch))
    assert seen == [1, 2, 3]
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
