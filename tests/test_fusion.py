"""Fusion math against hand-computed values (early/late x concat/mean, a missing modality), shapes,
subsets, and gradients through the fusion inside jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.nets.fusion import Fusion, late_concat_dims

# Two items, two modalities of different widths: text [2] and image [3]; item 1 lacks the image.
TEXT = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
IMAGE = np.array([[0.5, 0.0, -2.0], [9.0, 9.0, 9.0]], np.float32)  # item 1's row must be ignored
PRESENT = np.array([[True, True], [True, False]])


def _apply(fusion, pool, params):
    module = Fusion(out_dim=2, fusion=fusion, pool=pool)
    return np.asarray(module.apply({"params": params}, (jnp.asarray(TEXT), jnp.asarray(IMAGE)), jnp.asarray(PRESENT)))


def _init(fusion, pool, out_dim=2):
    module = Fusion(out_dim=out_dim, fusion=fusion, pool=pool)
    return module.init(jax.random.key(0), (jnp.asarray(TEXT), jnp.asarray(IMAGE)), jnp.asarray(PRESENT))["params"]


def test_early_concat_by_hand():
    # Input [p1 x1 ; p2 x2 ; p1 ; p2] is 2 + 3 + 2 = 7 wide.
    w = np.arange(14, dtype=np.float32).reshape(7, 2) / 10
    b = np.array([0.5, -0.5], np.float32)
    out = _apply("early", "concat", {"early": {"kernel": w, "bias": b}})
    x0 = np.array([1, 2, 0.5, 0, -2, 1, 1], np.float32)
    x1 = np.array([3, -1, 0, 0, 0, 1, 0], np.float32)  # missing image: zeros, and its mask bit 0
    np.testing.assert_allclose(out, np.stack([x0 @ w + b, x1 @ w + b]), rtol=1e-6)


def test_early_mean_by_hand():
    # Zero-pad text to 3, mean over the present modalities: item 0 = (x1pad + x2) / 2, item 1 = x1pad.
    w = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    b = np.zeros(2, np.float32)
    out = _apply("early", "mean", {"early": {"kernel": w, "bias": b}})
    m0 = (np.array([1, 2, 0]) + np.array([0.5, 0, -2])) / 2
    m1 = np.array([3, -1, 0])
    np.testing.assert_allclose(out, np.stack([m0 @ w, m1 @ w]), rtol=1e-6)


def test_late_concat_by_hand():
    # out_dim 2 over 2 modalities: 1 + 1; each modality's Dense output is zeroed when it is missing.
    w0, b0 = np.array([[2.0], [1.0]], np.float32), np.array([0.25], np.float32)
    w1, b1 = np.array([[1.0], [1.0], [1.0]], np.float32), np.array([-1.0], np.float32)
    out = _apply("late", "concat", {"late_0": {"kernel": w0, "bias": b0}, "late_1": {"kernel": w1, "bias": b1}})
    expected = np.array([[1 * 2 + 2 * 1 + 0.25, 0.5 - 2 - 1], [3 * 2 - 1 + 0.25, 0.0]], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_late_mean_by_hand():
    w0, b0 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.zeros(2, np.float32)
    w1, b1 = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]], np.float32), np.array([1.0, 1.0], np.float32)
    out = _apply("late", "mean", {"late_0": {"kernel": w0, "bias": b0}, "late_1": {"kernel": w1, "bias": b1}})
    y0 = (TEXT[0] @ w0 + b0 + IMAGE[0] @ w1 + b1) / 2
    y1 = TEXT[1] @ w0 + b0  # only the text is present: the mean over one modality
    np.testing.assert_allclose(out, np.stack([y0, y1]), rtol=1e-6)


def test_seed_split_of_late_concat_widths():
    assert late_concat_dims(64, 3) == (22, 21, 21)
    assert late_concat_dims(64, 2) == (32, 32)
    params = _init("late", "concat", out_dim=5)
    assert params["late_0"]["kernel"].shape == (2, 3) and params["late_1"]["kernel"].shape == (3, 2)


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("pool", ["concat", "mean"])
def test_item_without_any_modality_is_finite_and_ignores_its_rows(fusion, pool):
    module = Fusion(out_dim=4, fusion=fusion, pool=pool)
    present = jnp.array([[False, False], [True, True]])
    feats = (jnp.asarray(TEXT), jnp.asarray(IMAGE))
    params = module.init(jax.random.key(1), feats, present)
    out = module.apply(params, feats, present)
    assert out.shape == (2, 4) and np.isfinite(np.asarray(out)).all()
    # The absent rows' contents do not matter.
    garbage = (jnp.asarray(TEXT).at[0].set(1e6), jnp.asarray(IMAGE).at[0].set(-1e6))
    np.testing.assert_allclose(np.asarray(module.apply(params, garbage, present)), np.asarray(out))
    if fusion == "late":
        np.testing.assert_array_equal(np.asarray(out[0]), 0.0)


@pytest.mark.parametrize("subset", [(0,), (1,), (0, 1)])
def test_any_subset_and_leading_axes(subset):
    feats = tuple(jnp.asarray(x)[None].repeat(3, 0) for x in (TEXT, IMAGE))  # [3, 2, d]: a [B, J] batch
    feats = tuple(feats[m] for m in subset)
    present = jnp.asarray(PRESENT)[None].repeat(3, 0)[..., list(subset)]
    for fusion in ("early", "late"):
        for pool in ("concat", "mean"):
            module = Fusion(out_dim=6, fusion=fusion, pool=pool)
            params = module.init(jax.random.key(0), feats, present)
            assert module.apply(params, feats, present).shape == (3, 2, 6)


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("pool", ["concat", "mean"])
def test_gradients_flow_through_fusion_inside_jit(fusion, pool):
    module = Fusion(out_dim=3, fusion=fusion, pool=pool)
    feats = (jnp.asarray(TEXT), jnp.asarray(IMAGE))
    present = jnp.asarray(PRESENT)
    params = module.init(jax.random.key(2), feats, present)

    @jax.jit
    def grad(p):
        return jax.grad(lambda p: jnp.sum(module.apply(p, feats, present) ** 2))(p)

    g = grad(params)
    leaves = jax.tree.leaves(g)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert all(np.abs(np.asarray(x)).sum() > 0 for x in leaves)
    # A finite-difference check of one kernel entry against the jitted gradient.
    name = "early" if fusion == "early" else "late_0"
    eps = 1e-3
    bump = jax.tree.map(lambda x: x, params)
    bump["params"][name]["kernel"] = params["params"][name]["kernel"].at[0, 0].add(eps)
    f = lambda p: float(jnp.sum(module.apply(p, feats, present) ** 2))
    fd = (f(bump) - f(params)) / eps
    assert abs(fd - float(g["params"][name]["kernel"][0, 0])) < 1e-2 * max(1.0, abs(fd))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="fusion"):
        Fusion(out_dim=2, fusion="middle").init(jax.random.key(0), (jnp.asarray(TEXT),), jnp.ones((2, 1), bool))
    with pytest.raises(ValueError, match="presence mask"):
        Fusion(out_dim=2).init(jax.random.key(0), (jnp.asarray(TEXT),), jnp.ones((2, 2), bool))
