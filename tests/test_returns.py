"""λ-returns and n-step returns: hand-computed values, limits, episode boundaries, and the rlax convention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.rl.returns import lambda_returns, n_step_returns

# Four steps; the episode ends at step 2 (discount 0), so steps 0-2 never see r_3 or v_3.
R = jnp.array([1.0, 2.0, 3.0, 4.0])
D = jnp.array([0.5, 0.5, 0.0, 0.5])
V = jnp.array([10.0, 20.0, 30.0, 40.0])


def test_lambda_returns_by_hand_with_an_episode_boundary():
    # G3 = 4 + .5 * 40 = 24; G2 = 3 + 0 = 3;
    # G1 = 2 + .5 * (.5 * 20 + .5 * G2) = 2 + .5 * 11.5 = 7.75;
    # G0 = 1 + .5 * (.5 * 10 + .5 * G1) = 1 + .5 * 8.875 = 5.4375.
    np.testing.assert_allclose(lambda_returns(R, D, V, 0.5), [5.4375, 7.75, 3.0, 24.0])
    # Nothing after the boundary leaks into earlier returns.
    other = lambda_returns(R.at[3].set(-100.0), D, V.at[3].set(99.0), 0.5)
    np.testing.assert_allclose(other[:3], [5.4375, 7.75, 3.0])


def test_lambda_zero_is_one_step_and_lambda_one_is_monte_carlo():
    np.testing.assert_allclose(lambda_returns(R, D, V, 0.0), R + D * V)  # [6, 12, 3, 24]
    # λ = 1: discounted sum of rewards to the episode end, bootstrapped only after the slice's last step:
    # G2 = 3, G1 = 2 + .5 * 3 = 3.5, G0 = 1 + .5 * 3.5 = 2.75, G3 = 4 + .5 * 40 = 24.
    np.testing.assert_allclose(lambda_returns(R, D, V, 1.0), [2.75, 3.5, 3.0, 24.0])
    no_end = jnp.full(4, 0.5)
    mc0 = 1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4 + 0.0625 * 40
    assert float(lambda_returns(R, no_end, V, 1.0)[0]) == pytest.approx(mc0)


def test_per_step_lambda_truncates_the_return():
    # λ_1 = 0 cuts the return after step 1: G1 = 2 + .5 * 20 = 12, G0 = 1 + .5 * (.5 * 10 + .5 * 12) = 6.5.
    out = lambda_returns(R, D, V, jnp.array([0.5, 0.0, 0.5, 0.5]))
    np.testing.assert_allclose(out, [6.5, 12.0, 3.0, 24.0])


def test_n_step_returns_by_hand():
    # n = 2: G_t = r_t + d_t r_{t+1} + d_t d_{t+1} v_{t+1}; the last step has one step left.
    np.testing.assert_allclose(n_step_returns(R, D, V, 2), [1 + 1 + 0.25 * 20, 2 + 1.5 + 0.0, 3.0, 24.0])
    np.testing.assert_allclose(n_step_returns(R, D, V, 1), R + D * V)
    # n >= T: Monte-Carlo to the slice end, equal to λ = 1.
    np.testing.assert_allclose(n_step_returns(R, D, V, 10), lambda_returns(R, D, V, 1.0))


def test_gradients_flow_to_values_unless_stopped():
    grad = jax.grad(lambda v: lambda_returns(R, D, v, 0.5)[0])(V)
    # dG0/dv0 = d0 (1 - λ) = .25; dG0/dv1 = d0 λ * d1 (1 - λ) = .0625; the boundary stops the rest.
    np.testing.assert_allclose(grad, [0.25, 0.0625, 0.0, 0.0])
    stopped = jax.grad(lambda v: lambda_returns(R, D, v, 0.5, stop_target_gradients=True).sum())(V)
    np.testing.assert_array_equal(stopped, 0.0)
    stopped_n = jax.grad(lambda v: n_step_returns(R, D, v, 2, stop_target_gradients=True).sum())(V)
    np.testing.assert_array_equal(stopped_n, 0.0)


def test_batched_by_vmap_equals_row_by_row():
    rng = np.random.default_rng(0)
    r, v = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32), jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    d = jnp.asarray(rng.choice([0.0, 0.9], size=(5, 7)), jnp.float32)
    batched = jax.vmap(lambda_returns, in_axes=(0, 0, 0, None))(r, d, v, 0.7)
    for i in range(5):
        np.testing.assert_allclose(batched[i], lambda_returns(r[i], d[i], v[i], 0.7), rtol=1e-6)


def test_against_rlax():
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(1)
    for T in (1, 2, 6, 11):
        r = jnp.asarray(rng.normal(size=T), jnp.float32)
        d = jnp.asarray(rng.choice([0.0, 0.5, 0.9], size=T), jnp.float32)
        v = jnp.asarray(rng.normal(size=T), jnp.float32)
        lam_t = jnp.asarray(rng.uniform(size=T), jnp.float32)
        for lam in (0.0, 0.5, 0.8, 1.0, lam_t):
            np.testing.assert_allclose(lambda_returns(r, d, v, lam), rlax.lambda_returns(r, d, v, lam), rtol=1e-5, atol=1e-6)
        for n in (1, 2, 3, 6, 20):
            np.testing.assert_allclose(n_step_returns(r, d, v, n), rlax.n_step_bootstrapped_returns(r, d, v, n),
                                       rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        n_step_returns(R, D, V, 0)
    with pytest.raises(AssertionError):
        lambda_returns(R, D[:3], V, 0.5)
