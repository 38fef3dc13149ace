"""localsgd.diagnostics and localsgd.theory: the theory's quantities against independent
computations (NumPy, finite differences, explicit Jacobians)."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd import data as dt
from localsgd import diagnostics as dg
from localsgd import model, theory

# Shapes shared with the other test files (compiled kernels are reused across them).
D, M = 8, 32
DEEP = model.NetSpec("deep", D, M, 2, 1)

# The functions under test, jitted: one compilation per function and shape instead of one per
# primitive in eager mode, several times faster on CPU. Jit does not change what they compute.
loss = jax.jit(dg.loss, static_argnums=0)
client_losses = jax.jit(dg.client_losses, static_argnums=0)
loss_and_grad = jax.jit(dg.loss_and_grad, static_argnums=0)
forward_norms = jax.jit(dg.forward_norms, static_argnums=0)
ntk_gram = jax.jit(dg.ntk_gram, static_argnums=(0, 3))
gradient_gap = jax.jit(dg.gradient_gap, static_argnums=0)
ntk_max_eigenvalue = jax.jit(theory.ntk_max_eigenvalue, static_argnums=(0, 3))
semi_smoothness_residual = jax.jit(dg.semi_smoothness_residual, static_argnums=0)
gradient_change_ratio = jax.jit(dg.gradient_change_ratio, static_argnums=0)


def _np_forward(spec, p, x):
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    x = np.asarray(x, np.float64)
    h = x if spec.arch == "two_layer" else relu(x @ np.asarray(p["fixed"]["A"], np.float64).T)
    for W in p["trainable"]:
        h = relu(h @ np.asarray(W, np.float64).T)
    return h @ np.asarray(p["fixed"]["B"], np.float64).T


@pytest.fixture(scope="module")
def unequal():
    """Sphere data split unequally over 3 clients (sizes 3, 7, 14) and deep-net parameters."""
    ds = dt.sphere(24, D, 1, targets="gaussian", seed=0)
    parts = [np.array([0, 5, 9]), np.array([1, 2, 3, 4, 6, 7, 8]), np.arange(10, 24)]
    cd = dt.to_clients(ds.x, ds.y, parts)
    p = model.init(jax.random.key(0), DEEP)
    return ds, parts, cd, p


# ---------------------------------------------------------------------------------------------
# Forward stability at initialisation


def test_forward_norms_close_to_one_wide_deep():
    """ALS19 (Lemma 7.1): at width m, ||h_l|| is within 1 +- eps of 1 at every layer with high
    probability, eps ~ L / sqrt(m) up to log factors. m = 2048, L = 5: the per-layer mean over
    samples must lie within 0.1 of 1, and no single norm may be off by more than 0.35."""
    spec = model.NetSpec("deep", 16, 2048, 5, 1)
    p = model.init(jax.random.key(0), spec)
    x = dt.sphere(32, 16, seed=0).x
    norms = np.asarray(forward_norms(spec, p, x))
    assert norms.shape == (spec.L + 1, 32)
    assert np.all(np.abs(norms.mean(axis=1) - 1.0) < 0.1), norms.mean(axis=1)
    assert np.max(np.abs(norms - 1.0)) < 0.35


def test_forward_norms_match_numpy(unequal):
    ds, _, _, p = unequal
    norms = np.asarray(forward_norms(DEEP, p, ds.x))
    h = np.maximum(ds.x @ np.asarray(p["fixed"]["A"], np.float64).T, 0)
    want = [np.linalg.norm(h, axis=1)]
    for W in p["trainable"]:
        h = np.maximum(h @ np.asarray(W, np.float64).T, 0)
        want.append(np.linalg.norm(h, axis=1))
    np.testing.assert_allclose(norms, np.stack(want), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Loss with unequal clients


def test_loss_is_plain_mean_over_samples(unequal):
    ds, parts, cd, p = unequal
    per = 0.5 * np.sum((_np_forward(DEEP, p, ds.x) - ds.y) ** 2, axis=1)
    np.testing.assert_allclose(loss(DEEP, p, cd), per.mean(), rtol=1e-5)
    # Each client's loss is the mean over its own samples (not over its padded rows).
    np.testing.assert_allclose(client_losses(DEEP, p, cd), [per[q].mean() for q in parts],
                               rtol=1e-5)
    # F = sum_k (n_k / n) F_k.
    np.testing.assert_allclose(np.dot(cd.weight, client_losses(DEEP, p, cd)), per.mean(),
                               rtol=1e-5)


def test_loss_ignores_padding_contents(unequal):
    _, _, cd, p = unequal
    junk = cd._replace(x=np.where(cd.mask[..., None] > 0, cd.x, 7.0),
                       y=np.where(cd.mask[..., None] > 0, cd.y, 1e3))
    assert float(loss(DEEP, p, junk)) == pytest.approx(float(loss(DEEP, p, cd)), rel=1e-6)
    g1 = loss_and_grad(DEEP, p, cd)[1]
    g2 = loss_and_grad(DEEP, p, junk)[1]
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Gradient against finite differences (float64)


@pytest.fixture
def x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("arch", ["deep", "two_layer"])
def test_gradient_matches_central_differences(x64, unequal, arch):
    ds, parts, _, p32 = unequal
    spec = DEEP if arch == "deep" else model.NetSpec("two_layer", D, M, 1, 1)
    if arch == "two_layer":
        p32 = model.init(jax.random.key(1), spec)
    rng = np.random.default_rng(0)
    # A generic point: the initialisation plus a random perturbation, all in float64.
    fixed = {k: np.asarray(v, np.float64) for k, v in p32["fixed"].items()}
    W = tuple(np.asarray(w, np.float64) + 0.1 * rng.standard_normal(w.shape) / math.sqrt(M)
              for w in p32["trainable"])
    cd = dt.ClientData(*(np.asarray(a, np.float64) for a in dt.to_clients(ds.x, ds.y, parts)))
    F_of = jax.jit(lambda t: dg.global_loss_of(spec, t, fixed, cd))
    F, g = loss_and_grad(spec, {"trainable": W, "fixed": fixed}, cd)
    assert g[0].dtype == jnp.float64 and F_of(W).dtype == jnp.float64
    g = [np.asarray(x) for x in g]
    h = 1e-6

    def fd(U):
        plus = F_of(tuple(w + h * u for w, u in zip(W, U)))
        minus = F_of(tuple(w - h * u for w, u in zip(W, U)))
        return (float(plus) - float(minus)) / (2 * h)

    for _ in range(3):  # random directions
        U = [rng.standard_normal(w.shape) for w in W]
        want = sum(np.vdot(gl, u) for gl, u in zip(g, U))
        assert want == pytest.approx(fd(U), rel=1e-6, abs=1e-9)
    for l in range(len(W)):  # single coordinates: the layer's largest gradient entry
        i, j = np.unravel_index(np.argmax(np.abs(g[l])), g[l].shape)
        E = [np.zeros_like(w) for w in W]
        E[l][i, j] = 1.0
        assert g[l][i, j] == pytest.approx(fd(E), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# NTK Gram matrix


@partial(jax.jit, static_argnums=0)
def _jacobian_gram(spec, p, x):
    """``J J^T`` with ``J`` the Jacobian of the outputs w.r.t. the trained weights, flattened and
    concatenated (``jax.jacrev`` of ``model.apply``): ``(n d_out, n d_out)``, rows ``(i, o)``."""

    def f(trainable):
        return model.apply(spec, {"trainable": trainable, "fixed": p["fixed"]}, x)

    jac = jax.jacrev(f)(p["trainable"])  # leaves (n, d_out, *W.shape)
    rows = x.shape[0] * spec.d_out
    J = jnp.concatenate([j.reshape(rows, -1) for j in jac], axis=1)
    return J @ J.T, J.shape[1]


_NTK_SPECS = [model.NetSpec(a, D, M, 2 if a == "deep" else 1, k) for a in ("deep", "two_layer")
              for k in (1, 3)]


@partial(jax.jit, static_argnums=0)
def _ntk_under_test(spec, p, x):
    return (dg.ntk_gram(spec, p, x, outputs="full"), dg.ntk_gram(spec, p, x, outputs="sum"),
            theory.ntk_max_eigenvalue(spec, p, x, iters=200))


@pytest.mark.parametrize("spec", _NTK_SPECS, ids=lambda s: f"{s.arch}-dout{s.d_out}")
def test_ntk_gram_matches_jacobian(spec):
    p = model.init(jax.random.key(2), spec)
    x = jnp.asarray(dt.sphere(6, D, seed=1).x)
    n, d_out = 6, spec.d_out
    want, P = _jacobian_gram(spec, p, x)
    assert int(P) == spec.num_trainable
    want = np.asarray(want, np.float64)
    full, summed, lam = (np.asarray(a, np.float64) for a in _ntk_under_test(spec, p, x))
    assert full.shape == (n * d_out, n * d_out) and summed.shape == (n, n)
    scale = np.abs(want).max()
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-5 * scale)
    want_sum = sum(want[o::d_out, o::d_out] for o in range(d_out))  # rows (i, o): o is fastest
    np.testing.assert_allclose(summed, want_sum, rtol=1e-4, atol=1e-5 * scale)
    # The largest eigenvalue by power iteration against a dense eigendecomposition.
    assert float(lam) == pytest.approx(np.linalg.eigvalsh(want)[-1], rel=1e-3)


def test_ntk_gram_rejects_bad_outputs(unequal):
    _, _, _, p = unequal
    with pytest.raises(ValueError, match="outputs"):
        dg.ntk_gram(DEEP, p, jnp.ones((2, D)), outputs="diag")


def test_min_eigenvalue():
    rng = np.random.default_rng(7)
    Q = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    G = (Q * np.array([0.3, 1.0, 2.0, 5.0, 9.0])) @ Q.T
    assert float(dg.min_eigenvalue(G.astype(np.float32))) == pytest.approx(0.3, rel=1e-4)


def test_theory_at_init(unequal):
    ds, _, _, p = unequal
    x = jnp.asarray(ds.x[:6])
    G = np.asarray(ntk_gram(DEEP, p, x, "full"), np.float64)
    ev = np.linalg.eigvalsh(G)
    assert ev[0] > 0  # distinct unit-norm inputs: the Gram is positive definite
    lam_min, eta = jax.jit(lambda p, x: (theory.min_eig_at_init(DEEP, p, x),
                                         theory.ntk_step_size(DEEP, p, x, 1.0)))(p, x)
    assert float(lam_min) == pytest.approx(ev[0], rel=1e-2, abs=1e-5 * ev[-1])
    assert float(eta) == pytest.approx(6 / ev[-1], rel=1e-3)
    assert theory.critical_step_size(ev[-1], 6) == pytest.approx(2 * float(eta), rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Training-dynamics quantities


def test_pl_ratio():
    assert float(dg.pl_ratio(2.0, 3.0)) == pytest.approx(4.5)
    assert float(dg.pl_ratio(2.0, 3.0, n=10, sum_loss=True)) == pytest.approx(45.0)


def test_tree_norm_and_distances():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((3, 4)), rng.standard_normal((4, 4)))
    b = (rng.standard_normal((3, 4)), rng.standard_normal((4, 4)))
    flat = lambda t: np.concatenate([np.ravel(u) for u in t])  # noqa: E731
    assert float(dg.tree_norm(a)) == pytest.approx(np.linalg.norm(flat(a)), rel=1e-5)
    assert float(dg.tree_dot(a, b)) == pytest.approx(flat(a) @ flat(b), rel=1e-5)
    np.testing.assert_allclose(
        dg.layer_distances(a, b), [np.linalg.norm(a[0] - b[0]), np.linalg.norm(a[1] - b[1])],
        rtol=1e-5)
    assert float(dg.relative_distance(a, b)) == pytest.approx(
        np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)), rel=1e-5)


def test_flip_fraction_with_mask():
    a = [np.array([[True, False], [True, True], [False, False]])]
    b = [np.array([[False, False], [True, False], [True, True]])]
    assert float(dg.flip_fraction(a, b)) == pytest.approx(4 / 6)
    # Masking out the last sample leaves 2 flips in 4 signs.
    assert float(dg.flip_fraction(a, b, np.array([1.0, 1.0, 0.0]))) == pytest.approx(0.5)


def test_activation_patterns(unequal):
    ds, _, _, p = unequal
    pats = dg.activation_patterns(DEEP, p, ds.x)
    feats = model.features(DEEP, p["fixed"], ds.x)
    pre = model.preactivations(DEEP, p["trainable"], feats)
    assert len(pats) == DEEP.L
    for s, g in zip(pats, pre):
        np.testing.assert_array_equal(s, np.asarray(g) > 0)
    assert float(dg.flip_fraction(pats, pats)) == 0.0


def test_gradient_gap(unequal):
    _, _, cd, p = unequal
    W = p["trainable"]
    K = cd.num_clients
    same = jax.tree.map(lambda w: jnp.broadcast_to(w, (K,) + w.shape), W)
    gap, rel = gradient_gap(DEEP, same, W, p["fixed"], cd)
    np.testing.assert_array_equal(gap, np.zeros(K))
    # Move client 1 only: its gap equals ||grad F_1(W_1) - grad F_1(W)||, the others stay 0.
    rng = np.random.default_rng(4)
    W1 = tuple(w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in W)
    locs = tuple(jnp.stack([w, w1, w]) for w, w1 in zip(W, W1))
    gap, rel = gradient_gap(DEEP, locs, W, p["fixed"], cd)
    client1 = dt.ClientData(cd.x[1:2], cd.y[1:2], cd.mask[1:2], np.ones(1, np.float32))
    g_loc = loss_and_grad(DEEP, {"trainable": W1, "fixed": p["fixed"]}, client1)[1]
    g_avg = loss_and_grad(DEEP, p, client1)[1]
    want = float(dg.tree_norm(jax.tree.map(jnp.subtract, g_loc, g_avg)))
    assert want > 0
    assert float(gap[1]) == pytest.approx(want, rel=1e-4)
    assert float(rel[1]) == pytest.approx(want / float(dg.tree_norm(g_avg)), rel=1e-4)
    assert float(gap[0]) == 0.0 and float(gap[2]) == 0.0


def test_semi_smoothness_residual_is_second_order(unequal):
    """For a step ``t U``, the residual ``F(W + tU) - F(W) - t <grad F, U>`` vanishes faster than
    ``t`` (here: the ratio residual / t falls by about 10x per 10x smaller t)."""
    _, _, cd, p = unequal
    rng = np.random.default_rng(5)
    U = tuple(rng.standard_normal(w.shape).astype(np.float32) / M for w in p["trainable"])
    r = [abs(float(semi_smoothness_residual(DEEP, p, cd, tuple(t * u for u in U)))) / t
         for t in (1.0, 0.1)]
    assert r[1] < 0.3 * r[0]
    # And it is exactly the definition.
    step = tuple(0.5 * u for u in U)
    moved = {"trainable": tuple(w + s for w, s in zip(p["trainable"], step)), "fixed": p["fixed"]}
    F0, g0 = loss_and_grad(DEEP, p, cd)
    want = float(loss(DEEP, moved, cd)) - float(F0) - float(dg.tree_dot(g0, step))
    assert float(semi_smoothness_residual(DEEP, p, cd, step)) == pytest.approx(want, rel=1e-3,
                                                                                  abs=1e-6)


def test_gradient_change_ratio_bounded_for_smooth_activation(unequal):
    """A softplus network is gradient-Lipschitz: the ratio settles to a finite value as t -> 0."""
    _, _, cd, p = unequal
    soft = model.NetSpec("deep", D, M, 2, 1, "softplus")
    rng = np.random.default_rng(6)
    U = tuple(rng.standard_normal(w.shape).astype(np.float32) for w in p["trainable"])
    r = [float(gradient_change_ratio(soft, p, cd, U, t)) for t in (1e-2, 1e-3)]
    assert all(np.isfinite(r)) and r[0] > 0
    assert r[1] == pytest.approx(r[0], rel=0.2)


# ---------------------------------------------------------------------------------------------
# theory


def test_theory_shapes():
    assert theory.linear_rate(0.5, 2.0, 4) == pytest.approx((1 - 0.25) ** 2)
    it = np.array([0, 10, 20])
    logs = theory.predicted_log_loss(it, 2.0, 0.5, 2.0, 4)
    np.testing.assert_allclose(np.diff(logs), 10 * math.log((1 - 0.25) ** 2))
    assert logs[0] == pytest.approx(math.log(2.0))
    np.testing.assert_allclose(theory.lazy_distance_shape([1, 4, 16]), [1, 0.5, 0.25])
    np.testing.assert_allclose(theory.lazy_distance_shape([1, 4, 16], "deep"), [1, 0.25, 1 / 16])
    np.testing.assert_allclose(theory.lazy_distance_shape([1, 4], "deep", relative=False), [1, 0.5])
    np.testing.assert_allclose(theory.pl_constant_shape([100, 200], 10, 5, 0.5), [0.1, 0.2])
