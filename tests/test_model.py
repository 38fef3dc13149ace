"""localsgd.model: the networks' specs, their initialisation statistics and their forward pass."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from localsgd import model


def _moments_ok(a, var, name):
    """Mean 0 and variance ``var`` within 6 standard errors of the sample size."""
    a = np.asarray(a, np.float64).ravel()
    N = a.size
    se_mean = math.sqrt(var / N)
    se_var = var * math.sqrt(2.0 / N)  # Gaussian: Var(s^2) = 2 var^2 / N
    assert abs(a.mean()) < 6 * se_mean, f"{name}: mean {a.mean():.3g} (se {se_mean:.3g})"
    assert abs(a.var() - var) < 6 * se_var, (
        f"{name}: var {a.var():.4g} vs {var:.4g} (se {se_var:.3g})")


# ---------------------------------------------------------------------------------------------
# NetSpec validation


@pytest.mark.parametrize(
    "field, value",
    [
        ("arch", "cnn"),
        ("arch", None),
        ("d", 0),
        ("d", 2.0),
        ("d", True),
        ("m", 0),
        ("m", "8"),
        ("L", 0),
        ("L", -1),
        ("d_out", 0),
        ("d_out", 1.5),
        ("activation", "tanh"),
        ("activation", "ReLU"),
    ],
)
def test_netspec_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        model.NetSpec(**{field: value})


def test_netspec_two_layer_requires_one_layer():
    with pytest.raises(ValueError, match="L"):
        model.NetSpec("two_layer", 4, 8, 2, 1)
    spec = model.NetSpec("two_layer", 4, 8, 1, 2)
    assert spec.layer_shapes == ((8, 4),)
    assert spec.num_trainable == 32


# The same two small specs throughout (and in the other test files): every new array shape costs
# a fresh XLA compilation of the random-number kernels, which dominates these tests' run time.
DEEP = model.NetSpec("deep", 8, 32, 2, 3)
TWO = model.NetSpec("two_layer", 8, 32, 1, 3)


@pytest.fixture(scope="module")
def deep_params():
    return model.init(jax.random.key(0), DEEP)


@pytest.fixture(scope="module")
def two_params():
    return model.init(jax.random.key(0), TWO)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)


def test_netspec_shapes_deep(deep_params):
    assert DEEP.layer_shapes == ((32, 32),) * 2
    assert DEEP.num_trainable == 2 * 32 * 32
    assert model.NetSpec("deep", 5, 7, 3, 2).num_trainable == 3 * 49
    p = deep_params
    assert tuple(w.shape for w in p["trainable"]) == DEEP.layer_shapes
    assert p["fixed"]["A"].shape == (32, 8) and p["fixed"]["B"].shape == (3, 32)


# ---------------------------------------------------------------------------------------------
# Initialisation statistics


def test_deep_init_statistics():
    spec = model.NetSpec("deep", d=64, m=512, L=2, d_out=4)
    p = model.init(jax.random.key(1), spec)
    m = spec.m
    _moments_ok(p["fixed"]["A"], 2.0 / m, "A")
    for i, W in enumerate(p["trainable"]):
        _moments_ok(W, 2.0 / m, f"W_{i + 1}")
    _moments_ok(p["fixed"]["B"], 1.0 / spec.d_out, "B")
    # The layers are independent draws, not one matrix repeated.
    W1, W2 = (np.asarray(w) for w in p["trainable"])
    assert abs(np.corrcoef(W1.ravel(), W2.ravel())[0, 1]) < 6 / math.sqrt(W1.size)


def test_two_layer_init_statistics():
    # d and m as in test_deep_init_statistics, so that the N(0, 1) draw reuses A's compiled shape.
    spec = model.NetSpec("two_layer", d=64, m=512, L=1, d_out=4)
    p = model.init(jax.random.key(2), spec)
    assert set(p["fixed"]) == {"B"}
    (W,) = p["trainable"]
    _moments_ok(W, 1.0, "W")
    B = np.asarray(p["fixed"]["B"])
    np.testing.assert_allclose(np.abs(B), 1.0 / math.sqrt(spec.m), rtol=1e-6)
    # Rademacher signs: balanced within 6 standard errors.
    assert abs(np.mean(np.sign(B))) < 6 / math.sqrt(B.size)


def test_init_is_a_function_of_the_key(deep_params):
    b = model.init(jax.random.key(0), DEEP)
    c = model.init(jax.random.key(1), DEEP)
    for x_, y_, z_ in zip(jax.tree.leaves(deep_params), jax.tree.leaves(b), jax.tree.leaves(c)):
        assert np.array_equal(x_, y_)
        assert not np.array_equal(x_, z_)


def test_the_flat_normal_draw_is_the_shaped_one():
    """init draws each matrix flat and reshapes it (faster to compile): bitwise the numbers of
    ``jax.random.normal`` of the shape itself, also vmapped over keys as experiments draw them."""
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    for shape in [(7, 5), (16, 16), (3, 40)]:
        flat = jax.jit(jax.vmap(lambda k, s=shape: model._normal(k, s, jnp.float32)))(keys)
        shaped = jax.jit(jax.vmap(lambda k, s=shape: jax.random.normal(k, s, jnp.float32)))(keys)
        assert flat.shape == (3,) + shape
        np.testing.assert_array_equal(np.asarray(flat), np.asarray(shaped))


# ---------------------------------------------------------------------------------------------
# Forward pass against NumPy


def _np_forward(spec, p, x):
    phi = {"relu": lambda z: np.maximum(z, 0.0),
           "softplus": lambda z: np.logaddexp(z, 0.0)}[spec.activation]
    x = np.asarray(x, np.float64)
    h = x if spec.arch == "two_layer" else phi(x @ np.asarray(p["fixed"]["A"], np.float64).T)
    for W in p["trainable"]:
        h = phi(h @ np.asarray(W, np.float64).T)
    return h @ np.asarray(p["fixed"]["B"], np.float64).T


@pytest.mark.parametrize("which", ["deep", "two_layer"])
def test_apply_matches_numpy(which, deep_params, two_params, x):
    spec, p = (DEEP, deep_params) if which == "deep" else (TWO, two_params)
    out = model.apply(spec, p, x)
    assert out.shape == (6, 3)
    np.testing.assert_allclose(out, _np_forward(spec, p, x), rtol=1e-4, atol=1e-5)


def test_two_layer_is_du_et_al_form(two_params, x):
    """``y = (1/sqrt(m)) a^T relu(W x)`` with ``a`` in {-1, +1}."""
    a = np.sign(np.asarray(two_params["fixed"]["B"]))
    W = np.asarray(two_params["trainable"][0], np.float64)
    want = np.maximum(x @ W.T, 0.0) @ a.T / math.sqrt(TWO.m)
    np.testing.assert_allclose(model.apply(TWO, two_params, x), want, rtol=1e-4, atol=1e-5)


def test_activation_is_used(deep_params, x):
    relu = np.asarray(model.apply(DEEP, deep_params, x))
    soft = model.NetSpec("deep", 8, 32, 2, 3, "softplus")
    gelu = model.NetSpec("deep", 8, 32, 2, 3, "gelu")
    out_soft = np.asarray(model.apply(soft, deep_params, x))
    np.testing.assert_allclose(out_soft, _np_forward(soft, deep_params, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(relu, out_soft, atol=1e-3)
    assert not np.allclose(relu, np.asarray(model.apply(gelu, deep_params, x)), atol=1e-3)


def test_hidden_and_preactivations(deep_params, two_params, x):
    p = deep_params
    hs = model.hidden(DEEP, p["trainable"], p["fixed"], x)
    feats = model.features(DEEP, p["fixed"], x)
    pre = model.preactivations(DEEP, p["trainable"], feats)
    assert len(hs) == DEEP.L + 1 and len(pre) == DEEP.L
    np.testing.assert_allclose(hs[0], np.maximum(x @ np.asarray(p["fixed"]["A"]).T, 0), rtol=1e-5,
                               atol=1e-6)
    for l in range(DEEP.L):
        np.testing.assert_array_equal(hs[l + 1], np.maximum(pre[l], 0))
        np.testing.assert_allclose(pre[l], hs[l] @ np.asarray(p["trainable"][l]).T, rtol=1e-4,
                                   atol=1e-5)
    np.testing.assert_allclose(hs[-1] @ np.asarray(p["fixed"]["B"]).T, model.apply(DEEP, p, x),
                               rtol=1e-5, atol=1e-6)
    # The two-layer net's input map is the identity and it has one hidden layer.
    np.testing.assert_array_equal(model.features(TWO, two_params["fixed"], x), x)
    assert len(model.hidden(TWO, two_params["trainable"], two_params["fixed"], x)) == 1


def test_sample_and_weighted_loss(deep_params, x):
    p = deep_params
    y = np.random.default_rng(4).standard_normal((6, 3)).astype(np.float32)
    feats = model.features(DEEP, p["fixed"], x)
    per = model.sample_losses(DEEP, p["trainable"], p["fixed"], feats, y)
    want = 0.5 * np.sum((_np_forward(DEEP, p, x) - y) ** 2, axis=1)
    np.testing.assert_allclose(per, want, rtol=1e-4)
    w = np.array([0.5, 0.0, 0.25, 0.25, 0.0, 0.0], np.float32)
    np.testing.assert_allclose(model.weighted_loss(DEEP, p["trainable"], p["fixed"], feats, y, w),
                               want @ w, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Flax NNX modules


@pytest.mark.parametrize("cls", ["deep", "two_layer"])
def test_nnx_modules(cls, x):
    rngs = nnx.Rngs(params=0)
    if cls == "deep":
        net = model.DeepReLUNet(8, 32, 2, 3, rngs=rngs)
        fixed_names = {"A", "B"}
    else:
        net = model.TwoLayerNet(8, 32, 3, rngs=rngs)
        fixed_names = {"B"}
    p = model.to_params(net)
    assert set(p["fixed"]) == fixed_names
    assert tuple(w.shape for w in p["trainable"]) == net.spec.layer_shapes
    # Only the W_l are nnx.Params (what an optimiser would train); A and B are Fixed.
    n_param = sum(a.size for a in jax.tree.leaves(nnx.state(net, nnx.Param)))
    assert n_param == net.spec.num_trainable
    n_fixed = sum(a.size for a in jax.tree.leaves(nnx.state(net, model.Fixed)))
    assert n_fixed == sum(np.size(v) for v in p["fixed"].values())
    np.testing.assert_allclose(net(x), _np_forward(net.spec, p, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", ["deep", "two_layer"])
def test_fused_backward_equals_grad_of_the_module(cls, x):
    """``model.backprop`` (the engine's fast path) against ``nnx.grad`` of the module's own
    weighted loss, with respect to its ``nnx.Param`` layers only."""
    rngs = nnx.Rngs(params=1)
    net = (model.DeepReLUNet(8, 32, 2, 3, rngs=rngs) if cls == "deep"
           else model.TwoLayerNet(8, 32, 3, rngs=rngs))
    y = jax.random.normal(jax.random.key(5), (x.shape[0], 3))
    w = jnp.linspace(0.0, 1.0, x.shape[0])

    def loss(module):
        return jnp.sum(w * 0.5 * jnp.sum((module(x) - y) ** 2, axis=-1))

    grads = nnx.to_pure_dict(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(net))["W"]
    p = model.split(net)
    mine = model.backprop(net.spec, p["fixed"], p["trainable"],
                          model.features(net.spec, p["fixed"], x), y, w)
    assert len(mine) == len(grads)
    for i, g in enumerate(mine):
        np.testing.assert_allclose(g, grads[i], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(mine[0]).max()) > 0


def test_engine_trains_a_module(x):
    """``engine.run_module`` splits the module, trains its ``W`` and merges them back: the same
    numbers as ``engine.run`` on ``to_params``; A and B unchanged; the input module unchanged."""
    from localsgd import data as dt
    from localsgd import engine as en

    net = model.DeepReLUNet(8, 16, 2, 1, rngs=nnx.Rngs(params=2))
    ds = dt.sphere(12, 8, 1, seed=0)
    clients = dt.to_clients(ds.x, ds.y, [np.arange(6), np.arange(6, 12)])
    cfg = en.RunConfig("local_gd", rounds=2, tau=2, eta=0.5)
    out, trained = en.run_module(cfg, net, clients, jax.random.key(0))
    ref = en.run(cfg, net.spec, model.to_params(net), clients, jax.random.key(0))
    after = model.to_params(trained)
    for a, b in zip(after["trainable"], ref.params["trainable"]):
        np.testing.assert_array_equal(a, b)
    for k in ("A", "B"):
        np.testing.assert_array_equal(after["fixed"][k], model.to_params(net)["fixed"][k])
    assert not np.array_equal(after["trainable"][0], model.to_params(net)["trainable"][0])
    with pytest.raises(ValueError, match="params must hold 2 trained layers"):
        model.merge(net, {"trainable": after["trainable"][:1]})
