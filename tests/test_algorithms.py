"""localsgd.engine and the algorithm registry: identities between the algorithms, unequal
clients, determinism, sweeps, resuming, divergence and input validation.

Every distinct (config, network, data shape) compiles a new program (about a second on CPU), so the
tests share a few configurations; ``eta`` and the key are traced and cost no recompilation.
Which identities hold *bitwise* on CPU and which only to float32 rounding is stated per test.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd import algorithms as algs
from localsgd import data as dt
from localsgd import diagnostics as dg
from localsgd import engine as en
from localsgd import model

D, M, B = 8, 32, 2
SPEC = model.NetSpec("deep", D, M, 2, 1)
PARTS = [np.array([0, 5, 9]), np.array([1, 2, 3, 4, 6, 7, 8]), np.arange(10, 24)]  # sizes 3, 7, 14
SGD = en.RunConfig("local_sgd", rounds=6, tau=1, eta=0.5, batch_size=B)
LGD = en.RunConfig("local_gd", rounds=5, tau=1, eta=0.5)
GD = en.RunConfig("gd", rounds=5, eta=0.5)


@pytest.fixture(scope="module")
def ds():
    return dt.sphere(24, D, 1, seed=0)


@pytest.fixture(scope="module")
def unequal(ds):
    return dt.to_clients(ds.x, ds.y, PARTS)


@pytest.fixture(scope="module")
def one_client(ds):
    return dt.to_clients(ds.x, ds.y, [np.arange(24)])


@pytest.fixture(scope="module")
def p0():
    return model.init(jax.random.key(0), SPEC)


@pytest.fixture(scope="module")
def sgd_out(p0, unequal):
    return en.run(SGD, SPEC, p0, unequal, jax.random.key(1))


@pytest.fixture(scope="module")
def lgd_out(p0, unequal):
    return en.run(LGD, SPEC, p0, unequal, jax.random.key(1))


def _leaves(out):
    return [np.asarray(w) for w in out.params["trainable"]]


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def _assert_bitwise(a, b):
    assert a.keys() == b.keys() if isinstance(a, dict) else True
    for x, y in (zip(a.values(), b.values()) if isinstance(a, dict) else zip(a, b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------
# Identities


def test_tau1_local_sgd_equals_minibatch_sgd(p0, unequal, sgd_out):
    """Same key, same minibatches: averaging the models after one step equals stepping along the
    averaged gradient, up to float32 rounding (the two orders of operations differ), also with
    unequal clients and FedAvg's n_k / n weights."""
    key = jax.random.key(1)
    cfg = en.RunConfig("minibatch_sgd", rounds=6, eta=0.5, batch_size=B)
    mb = en.run(cfg, SPEC, p0, unequal, key)
    np.testing.assert_allclose(sgd_out.metrics["loss"], mb.metrics["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(_leaves(sgd_out), _leaves(mb)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert _max_diff(_leaves(sgd_out), p0["trainable"]) > 1e-2  # it did train
    # With another key the minibatches differ, and so do the weights, far beyond the tolerance.
    other = en.run(cfg, SPEC, p0, unequal, jax.random.key(2))
    assert _max_diff(_leaves(other), _leaves(mb)) > 1e-3


def test_single_client_local_gd_equals_gd(p0, one_client):
    """K = 1: Local GD with tau = 5 for R rounds is GD for 5R steps. Bitwise on CPU: the same
    gradient steps in the same order, and averaging one model multiplies by exactly 1."""
    key = jax.random.key(0)
    local = en.run(en.RunConfig("local_gd", rounds=4, tau=5, eta=0.5), SPEC, p0, one_client, key)
    gd = en.run(en.RunConfig("gd", rounds=20, eta=0.5, eval_every=5), SPEC, p0, one_client, key)
    _assert_bitwise(_leaves(local), _leaves(gd))
    _assert_bitwise(local.metrics, gd.metrics)
    np.testing.assert_array_equal(local.rounds * 5, gd.rounds)
    assert local.metrics["loss"][-1] < 0.5 * local.metrics["loss"][0]


def test_local_gd_on_identical_clients_equals_gd(ds, p0, one_client):
    """K identical clients (data.replicate): every client takes the same steps, so Local GD is
    centralised GD; equal to float32 rounding (the average multiplies by 1/3 and sums 3 terms)."""
    key = jax.random.key(0)
    rep = en.run(en.RunConfig("local_gd", rounds=4, tau=5, eta=0.5), SPEC, p0,
                 dt.replicate(ds.x, ds.y, 3), key)
    gd = en.run(en.RunConfig("gd", rounds=20, eta=0.5, eval_every=5), SPEC, p0, one_client, key)
    for a, b in zip(_leaves(rep), _leaves(gd)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rep.metrics["loss"], gd.metrics["loss"], rtol=1e-5)


def test_gd_equals_local_gd_on_pooled_data(p0, unequal):
    """``gd`` on clients is ``local_gd`` with K = 1 on ``data.pooled``; bitwise on CPU (the same
    rows in the same order, padding included)."""
    key = jax.random.key(0)
    gd = en.run(GD, SPEC, p0, unequal, key)
    pooled = en.run(LGD, SPEC, p0, dt.pooled(unequal), key)
    _assert_bitwise(_leaves(gd), _leaves(pooled))
    _assert_bitwise(gd.metrics, pooled.metrics)


def test_local_gd_tau1_equals_gd_with_unequal_clients(p0, unequal, lgd_out):
    """tau = 1: sum_k (n_k/n) (W - eta grad F_k) = W - eta grad F, so Local GD is GD whatever the
    partition, provided the server weights clients by n_k / n. To float32 rounding."""
    gd = en.run(GD, SPEC, p0, unequal, jax.random.key(0))
    for a, b in zip(_leaves(lgd_out), _leaves(gd)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # An unweighted average of the clients' steps would land elsewhere.
    g = dg.client_grads(SPEC, p0["trainable"], p0["fixed"], unequal, per_client=False)
    plain = [w - 0.5 * jnp.mean(gk, axis=0) for w, gk in zip(p0["trainable"], g)]
    weighted = [w - 0.5 * jnp.tensordot(unequal.weight, gk, axes=1)
                for w, gk in zip(p0["trainable"], g)]
    assert _max_diff(plain, weighted) > 1e-4


def test_gd_is_gradient_descent_on_the_global_loss(p0, unequal):
    """Five ``gd`` rounds against five explicit steps ``W <- W - eta grad F(W)``."""
    gd = en.run(GD, SPEC, p0, unequal, jax.random.key(0))
    loss_and_grad = jax.jit(dg.loss_and_grad, static_argnums=0)
    W, losses = p0["trainable"], []
    for _ in range(5):
        F, g = loss_and_grad(SPEC, {"trainable": W, "fixed": p0["fixed"]}, unequal)
        losses.append(float(F))
        W = tuple(w - 0.5 * gw for w, gw in zip(W, g))
    losses.append(float(loss_and_grad(SPEC, {"trainable": W, "fixed": p0["fixed"]}, unequal)[0]))
    np.testing.assert_allclose(gd.metrics["loss"], losses, rtol=1e-5)
    for a, b in zip(_leaves(gd), W):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_average():
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32))
    copies4 = jax.tree.map(lambda w: jnp.stack([w] * 4), W)
    # Weights 1/4 are exact in binary: averaging 4 copies returns the model bitwise.
    _assert_bitwise(algs._average(jnp.full((4,), 0.25), copies4), W)
    copies3 = jax.tree.map(lambda w: jnp.stack([w] * 3), W)
    third = jnp.asarray(dt.replicate(np.ones((2, 1)), np.ones((2, 1)), 3).weight)  # 1/3 each
    for a, b in zip(algs._average(third, copies3), W):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    stack = jax.tree.map(lambda w: jnp.asarray(rng.standard_normal((3,) + w.shape), jnp.float32), W)
    wts = np.array([0.2, 0.3, 0.5], np.float32)
    for a, s in zip(algs._average(jnp.asarray(wts), stack), stack):
        np.testing.assert_allclose(a, np.tensordot(wts, np.asarray(s), axes=1), rtol=1e-5,
                                   atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Unequal clients: padding


def test_minibatch_indices_use_only_real_samples(unequal):
    mask = jnp.asarray(unequal.mask)
    sizes = unequal.sizes
    steps = 2000  # independent draws per step: one key, many steps
    idx = np.asarray(en._minibatch_indices(jax.random.key(3), mask, steps, B))
    assert idx.shape == (steps, 3, B)
    for k, n_k in enumerate(sizes):
        picks = idx[:, k, :]
        assert picks.max() < n_k and picks.min() >= 0  # to_clients puts real rows first
        assert np.all(picks[:, 0] != picks[:, 1])  # without replacement
        # Uniform: each real sample is picked with probability b / n_k per step.
        counts = np.bincount(picks.ravel(), minlength=n_k)
        expected = steps * B / n_k
        sd = math.sqrt(steps * (B / n_k) * (1 - B / n_k))
        assert np.all(np.abs(counts - expected) < 5 * sd), (k, counts, expected)


def test_padding_never_enters_training(p0, unequal, sgd_out, lgd_out):
    """Make the padded rows absurd (inputs 3.0, targets 1e6): any minibatch or gradient that
    touched them would change the run. Bitwise identical."""
    pad = unequal.mask[..., None] == 0
    junk = unequal._replace(x=np.where(pad, 3.0, unequal.x).astype(np.float32),
                            y=np.where(pad, 1e6, unequal.y).astype(np.float32))
    key = jax.random.key(1)
    _assert_bitwise(en.run(SGD, SPEC, p0, junk, key).metrics, sgd_out.metrics)
    _assert_bitwise(_leaves(en.run(SGD, SPEC, p0, junk, key)), _leaves(sgd_out))
    _assert_bitwise(_leaves(en.run(LGD, SPEC, p0, junk, key)), _leaves(lgd_out))


def test_recorded_loss_is_plain_mean_over_samples(ds, p0, unequal, lgd_out):
    def np_loss(params):
        h = np.maximum(ds.x @ np.asarray(params["fixed"]["A"], np.float64).T, 0)
        for W in params["trainable"]:
            h = np.maximum(h @ np.asarray(W, np.float64).T, 0)
        out = h @ np.asarray(params["fixed"]["B"], np.float64).T
        return np.mean(0.5 * np.sum((out - ds.y) ** 2, axis=1))

    assert lgd_out.metrics["loss"][0] == pytest.approx(np_loss(p0), rel=1e-5)
    assert lgd_out.metrics["loss"][-1] == pytest.approx(np_loss(lgd_out.params), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_key_same_run_bitwise(p0, unequal, sgd_out):
    again = en.run(SGD, SPEC, p0, unequal, jax.random.key(1))
    _assert_bitwise(again.metrics, sgd_out.metrics)
    _assert_bitwise(_leaves(again), _leaves(sgd_out))
    other = en.run(SGD, SPEC, p0, unequal, jax.random.key(7))
    assert not np.array_equal(other.metrics["loss"][1:], sgd_out.metrics["loss"][1:])
    assert other.metrics["loss"][0] == sgd_out.metrics["loss"][0]  # same start


# ---------------------------------------------------------------------------------------------
# Sweep


def test_sweep_equals_separate_runs(p0, unequal):
    """Run s of a sweep equals ``run`` with params0[s], keys[s], etas[s] to float32 rounding (not
    bitwise on CPU: vmapped matrix products are batched differently)."""
    keys = jax.random.split(jax.random.key(5), 3)
    inits = [model.init(jax.random.key(10 + s), SPEC) for s in range(3)]
    params0 = jax.tree.map(lambda *a: jnp.stack(a), *inits)
    etas = [0.1, 0.3, 0.5]
    sw = en.sweep(SGD, SPEC, params0, unequal, keys, etas=etas)
    sw_default = en.sweep(SGD, SPEC, params0, unequal, keys)
    assert sw.metrics["loss"].shape == (3, SGD.evaluations)
    for s in range(3):
        ps = inits[s]
        for cfg, out in ((en.RunConfig("local_sgd", 6, 1, etas[s], B), sw), (SGD, sw_default)):
            one = en.run(cfg, SPEC, ps, unequal, keys[s])
            np.testing.assert_allclose(out.metrics["loss"][s], one.metrics["loss"], rtol=1e-5,
                                       atol=1e-6)
            for a, b in zip(out.params["trainable"], _leaves(one)):
                np.testing.assert_allclose(a[s], b, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(out.rounds[s], one.rounds)
            assert int(out.diverged_at[s]) == int(one.diverged_at) == -1
    # The seeds are different runs.
    assert not np.allclose(sw.metrics["loss"][0], sw.metrics["loss"][1])


@pytest.mark.parametrize("etas", [[0.1, 0.2], [0.1, -0.2, 0.3], [0.1, float("nan"), 0.3]])
def test_sweep_rejects_bad_etas(p0, unequal, etas):
    keys = jax.random.split(jax.random.key(0), 3)
    params0 = jax.tree.map(lambda a: jnp.stack([a] * 3), p0)
    with pytest.raises(ValueError, match="etas"):
        en.sweep(SGD, SPEC, params0, unequal, keys, etas=etas)


# ---------------------------------------------------------------------------------------------
# Resume


def test_resume_equals_one_long_run_bitwise(p0, unequal):
    def cfg(R):
        return en.RunConfig("local_sgd", rounds=R, tau=1, eta=0.5, batch_size=B, eval_every=4,
                            metrics=("loss", "ever_flipped"))

    key = jax.random.key(4)
    first = en.run(cfg(8), SPEC, p0, unequal, key)
    rest = en.run(cfg(12), SPEC, p0, unequal, key, start=first.state)
    whole = en.run(cfg(20), SPEC, p0, unequal, key)
    for k in whole.metrics:
        np.testing.assert_array_equal(np.concatenate([first.metrics[k], rest.metrics[k]]),
                                      whole.metrics[k])
    np.testing.assert_array_equal(np.concatenate([first.rounds, rest.rounds]), whole.rounds)
    np.testing.assert_array_equal(whole.rounds, [0, 4, 8, 12, 16, 20])
    _assert_bitwise(_leaves(rest), _leaves(whole))
    assert int(rest.state.round) == 20 and int(first.state.round) == 8
    assert whole.metrics["ever_flipped"][-1] > 0  # the carried state is not trivially empty


# ---------------------------------------------------------------------------------------------
# Divergence


def test_divergence_is_reported_and_weights_stay_finite(p0, unequal):
    cfg = en.RunConfig("local_gd", rounds=5, tau=1, eta=1e10)  # LGD's program, another eta
    out = en.run(cfg, SPEC, p0, unequal, jax.random.key(0))
    assert int(out.diverged_at) >= 1
    assert all(np.all(np.isfinite(w)) for w in _leaves(out))
    # Training stopped at the last weights whose loss was finite: every record after the one
    # that saw the divergence is finite and frozen.
    r = int(out.diverged_at)
    loss = np.asarray(out.metrics["loss"])
    assert r < len(loss) - 1
    # Here the loss overflows after round 1 while the weights are still finite (they turn
    # non-finite only in round 2): the recorded loss catches it at round 1.
    assert r == 1 and not np.isfinite(loss[1])
    assert np.all(np.isfinite(loss[r + 1:])) and np.all(loss[r + 1:] == loss[-1])
    msg = en.divergence_message(cfg, int(out.diverged_at))
    assert "eta" in msg and "1" in msg and "10000000000.0" in msg
    assert en.divergence_message(cfg, -1) is None
    assert "tau" in en.divergence_message(en.RunConfig("local_gd", rounds=5, tau=3, eta=1.0), 2)


def test_runs_under_float64(p0, unequal):
    """``dtype="float64"`` runs in float64 from float32 inputs (JAX's 64-bit mode on for the run
    only); the float32 default runs in float32 even from float64 parameters."""
    cfg = en.RunConfig("local_gd", rounds=4, tau=2, eta=0.01, eval_every=2, dtype="float64")
    out = en.run(cfg, SPEC, p0, unequal, jax.random.key(0))
    assert out.params["trainable"][0].dtype == np.float64
    assert int(out.diverged_at) == -1 and np.all(np.isfinite(out.metrics["loss"]))
    assert jnp.zeros(1).dtype == jnp.float32  # the 64-bit mode did not leak out of the run
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), p0)
        out32 = en.run(dataclasses.replace(cfg, dtype="float32"), SPEC, p64, unequal,
                       jax.random.key(0))
    assert out32.params["trainable"][0].dtype == np.float32


def test_converging_run_reports_no_divergence(lgd_out):
    assert int(lgd_out.diverged_at) == -1
    assert lgd_out.metrics["loss"][-1] < lgd_out.metrics["loss"][0]


# ---------------------------------------------------------------------------------------------
# Recorded metrics


def test_all_metrics(p0, unequal):
    # local_gd compiles in about half the time of local_sgd with every metric; the clients'
    # different data make the local models drift apart all the same.
    cfg = en.RunConfig("local_gd", rounds=2, tau=3, eta=0.1, metrics=tuple(en.METRICS))
    probe = unequal.x[0, :2]
    out = en.run(cfg, SPEC, p0, unequal, jax.random.key(2), probe=probe)
    m, E, K, L = out.metrics, cfg.evaluations, 3, SPEC.L
    want_keys = {k for name in en.METRICS for k in en.METRICS[name]}
    assert set(m) == want_keys
    shapes = {"loss": (E,), "client_loss": (E, K), "grad_norm": (E,), "pl_ratio": (E,),
              "dist": (E, L), "dist_rel": (E,), "flips": (E,), "ever_flipped": (E,),
              "forward_norms": (E, L + 1), "gap": (E, K), "gap_rel": (E, K),
              "local_flips": (E, K), "drift": (E, K),
              "outputs": (E,) + unequal.y.shape, "test_outputs": (E, 2, SPEC.d_out)}
    for k, shape in shapes.items():
        assert m[k].shape == shape, k
        assert np.all(np.isfinite(m[k])), k
    np.testing.assert_array_equal(out.rounds, [0, 1, 2])
    # At round 0 nothing has moved (the gap and drift compare W with sum_k (n_k/n) W, which is W up
    # to rounding).
    for k in ("dist", "dist_rel", "flips", "ever_flipped", "local_flips"):
        np.testing.assert_array_equal(m[k][0], 0.0)
    assert np.all(m["gap_rel"][0] < 1e-5) and np.all(m["drift"][0] < 1e-5 * m["dist"][1].sum())
    # After training the local models drift apart and their gradients differ.
    assert np.all(m["drift"][1:] > 0) and np.all(m["gap"][1:] > 0) and np.all(m["dist"][1:] > 0)
    # Consistency with the diagnostics and between metrics.
    np.testing.assert_allclose(m["pl_ratio"], m["grad_norm"] ** 2 / m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["client_loss"] @ unequal.weight, m["loss"], rtol=1e-5)
    assert np.all(np.diff(m["ever_flipped"]) >= 0) and np.all(m["ever_flipped"] >= m["flips"])
    x_real = unequal.x[unequal.mask > 0]
    norms, gnorm, rel = jax.jit(lambda p, W: (
        dg.forward_norms(SPEC, p, x_real).mean(axis=1), dg.grad_norm(SPEC, p, unequal),
        dg.relative_distance(W, p["trainable"])))(p0, out.params["trainable"])
    np.testing.assert_allclose(m["forward_norms"][0], norms, rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"][0], gnorm, rtol=1e-5)
    np.testing.assert_allclose(m["dist_rel"][-1], rel, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"algorithm": "fedavg"}, "algorithm"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"tau": 0}, "tau"),
        ({"tau": True}, "tau"),
        ({"algorithm": "gd", "tau": 2, "batch_size": None}, "tau"),
        ({"algorithm": "minibatch_sgd", "tau": 3}, "tau"),
        ({"eta": 0}, "eta"),
        ({"eta": -1}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"eta": float("inf")}, "eta"),
        ({"eta": "0.1"}, "eta"),
        ({"eta": True}, "eta"),
        ({"batch_size": None}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"algorithm": "local_gd", "batch_size": 4}, "batch_size"),
        ({"algorithm": "gd", "batch_size": 4}, "batch_size"),
        ({"eval_every": 0}, "eval_every"),
        ({"rounds": 10, "eval_every": 3}, "eval_every"),
        ({"metrics": ("loss", "accuracy")}, "metrics"),
        ({"metrics": ()}, "metrics"),
    ],
)
def test_run_config_rejects_bad_field(changes, field):
    kw = {"algorithm": "local_sgd", "rounds": 6, "tau": 1, "eta": 0.1, "batch_size": 2}
    kw.update(changes)
    with pytest.raises(ValueError, match=field):
        en.RunConfig(**kw)


def test_run_config_properties():
    cfg = en.RunConfig("local_sgd", rounds=12, tau=3, eta=0.1, batch_size=2, eval_every=4,
                       metrics=["loss"])
    assert cfg.steps == 36 and cfg.evaluations == 4 and cfg.metrics == ("loss",)
    hash(cfg)  # usable as a static jit argument


def _bad_inputs(p0, unequal):
    nan_x = unequal.x.copy()
    nan_x[1, 0, 3] = np.nan
    nan_y = unequal.y.copy()
    nan_y[2, 5, 0] = np.inf
    return [
        ("batch_size", en.RunConfig("local_sgd", 2, 1, 0.1, batch_size=4), SPEC, p0, unequal),
        ("data.x", LGD, model.NetSpec("deep", D + 1, M, 2, 1), p0, unequal),
        ("data.y", LGD, model.NetSpec("deep", D, M, 2, 3), p0, unequal),
        ("data.x", LGD, SPEC, p0, unequal._replace(x=nan_x)),
        ("data.y", LGD, SPEC, p0, unequal._replace(y=nan_y)),
        ("data.x", LGD, SPEC, p0, unequal._replace(x=unequal.x[0])),
        ("data.mask", LGD, SPEC, p0, unequal._replace(mask=unequal.mask * np.array([[1], [0], [1]],
                                                                                   np.float32))),
        ("params0", LGD, model.NetSpec("deep", D, M, 3, 1), p0, unequal),
    ]


@pytest.mark.parametrize("case", range(8))
def test_check_inputs_names_the_bad_input(p0, unequal, case):
    field, cfg, spec, params, data = _bad_inputs(p0, unequal)[case]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        en.check_inputs(cfg, spec, params, data)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):  # run() checks before work
        en.run(cfg, spec, params, data, jax.random.key(0))


def test_sweep_checks_inputs(p0, unequal):
    params0 = jax.tree.map(lambda a: jnp.stack([a] * 2), p0)
    cfg = en.RunConfig("local_sgd", 2, 1, 0.1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        en.sweep(cfg, SPEC, params0, unequal, jax.random.split(jax.random.key(0), 2))


# ---------------------------------------------------------------------------------------------
# FedProx and SCAFFOLD against a plain per-client loop (NumPy, float64)


def _np_grad(p, W, x, y, w):
    """Gradient of ``sum_i w_i 1/2 ||B h_L(x_i) - y_i||^2`` for the deep ReLU net, by hand."""
    A, Bm = (np.asarray(p["fixed"][k], np.float64) for k in ("A", "B"))
    hs, pre = [np.maximum(x @ A.T, 0)], []
    for Wl in W:
        pre.append(hs[-1] @ Wl.T)
        hs.append(np.maximum(pre[-1], 0))
    delta = (w[:, None] * (hs[-1] @ Bm.T - y)) @ Bm
    grads = [None] * len(W)
    for l in reversed(range(len(W))):
        delta = delta * (pre[l] > 0)
        grads[l] = delta.T @ hs[l]
        delta = delta @ W[l]
    return grads


def _np_federated(p0, data, key, cfg, rule):
    """``cfg.rounds`` rounds of a federated algorithm, written as a loop over rounds, clients and
    local steps. ``rule(W_k, g, ctx) -> new W_k`` is the client step; the minibatches are the
    engine's draws (the sampling is tested above), so that the runs can be compared step by step.
    Returns the final averaged weights."""
    x, y, mask = (np.asarray(a, np.float64) for a in (data.x, data.y, data.mask))
    weight = np.asarray(data.weight, np.float64)
    K, b, tau = x.shape[0], cfg.batch_size, cfg.tau
    Wbar = [np.asarray(w, np.float64) for w in p0["trainable"]]
    c_k = [[np.zeros_like(w) for w in Wbar] for _ in range(K)]
    for r in range(cfg.rounds):
        idx = np.asarray(en._minibatch_indices(jax.random.fold_in(key, r), mask, tau, b))
        c = [sum(weight[k] * c_k[k][l] for k in range(K)) for l in range(len(Wbar))]
        models = []
        for k in range(K):
            Wk = [w.copy() for w in Wbar]
            for t in range(tau):
                i = idx[t, k]
                g = _np_grad(p0, Wk, x[k][i], y[k][i], np.full(b, 1.0 / b))
                Wk = [rule(Wk[l], g[l], (Wbar[l], c_k[k][l], c[l])) for l in range(len(Wk))]
            c_k[k] = [c_k[k][l] - c[l] + (Wbar[l] - Wk[l]) / (tau * cfg.eta)
                      for l in range(len(Wk))]
            models.append(Wk)
        Wbar = [sum(weight[k] * models[k][l] for k in range(K)) for l in range(len(Wbar))]
    return Wbar


@pytest.mark.parametrize("layout", ["map", "vmap"])
@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_fedprox_and_scaffold_equal_a_plain_loop(p0, unequal, algorithm, layout):
    """FedProx (``W - eta (g + mu (W - W_bar))``) and SCAFFOLD (``W - eta (g - c_k + c)``, the
    control variates carried across rounds) in float64 against a NumPy loop written here, to
    1e-10 (float32 would give ~1e-6). Both differ from Local SGD with the same draws."""
    mu = 0.7
    cfg = en.RunConfig(algorithm, rounds=3, tau=3, eta=0.3, batch_size=B, layout=layout,
                       prox_mu=mu if algorithm == "fedprox" else 0.0, dtype="float64")
    rules = {
        "fedprox": lambda W, g, ctx: W - cfg.eta * (g + mu * (W - ctx[0])),
        "scaffold": lambda W, g, ctx: W - cfg.eta * (g - ctx[1] + ctx[2]),
    }
    key = jax.random.key(1)
    out = en.run(cfg, SPEC, p0, unequal, key)
    want = _np_federated(p0, unequal, key, cfg, rules[algorithm])
    for a, w in zip(_leaves(out), want):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12)
    plain = _np_federated(p0, unequal, key, cfg, lambda W, g, ctx: W - cfg.eta * g)
    assert _max_diff(want, plain) > 1e-4  # the algorithm's own term matters here
    if algorithm == "scaffold":
        c = out.state.client_state
        assert c[0].shape == (3,) + SPEC.layer_shapes[0] and np.abs(np.asarray(c[0])).max() > 0


SPEC1 = model.NetSpec("deep", D, M, 1, 2)  # one trained layer, two outputs: layout="lowrank"


@pytest.fixture(scope="module")
def unequal2(ds):
    y2 = np.concatenate([ds.y, -0.5 * ds.y], axis=1)
    return dt.to_clients(ds.x, y2, PARTS)


def test_lowrank_layout_equals_a_plain_loop(unequal2):
    """``layout="lowrank"`` (the clients' steps as low-rank corrections to the server's model) in
    float64 against the NumPy loop of Local SGD, to 1e-10; a run that forgets the corrections
    (every step from the server's model) is far from it."""
    p0 = model.init(jax.random.key(0), SPEC1)
    cfg = en.RunConfig("local_sgd", rounds=3, tau=3, eta=0.3, batch_size=B, layout="lowrank",
                       dtype="float64")
    key = jax.random.key(1)
    out = en.run(cfg, SPEC1, p0, unequal2, key)
    want = _np_federated(p0, unequal2, key, cfg, lambda W, g, ctx: W - cfg.eta * g)
    np.testing.assert_allclose(_leaves(out)[0], want[0], rtol=1e-10, atol=1e-12)
    one = _np_federated(p0, unequal2, key, dataclasses.replace(cfg, tau=1),
                        lambda W, g, ctx: W - 3 * cfg.eta * g)
    assert _max_diff(want, one) > 1e-4


@pytest.mark.parametrize("arch, algorithm", [("deep", "local_gd"), ("two_layer", "local_sgd")])
def test_lowrank_layout_equals_the_map_layout(unequal2, arch, algorithm):
    """Full local gradients, and the two-layer net (whose trained layer reads the inputs), in
    float64: the same weights and recorded outputs as ``layout="map"``, to 1e-10."""
    spec = model.NetSpec(arch, D, M, 1, 2)
    p0 = model.init(jax.random.key(0), spec)
    outs = [en.run(en.RunConfig(algorithm, rounds=4, tau=3, eta=0.3, eval_every=2,
                                batch_size=B if algorithm == "local_sgd" else None,
                                metrics=("loss", "outputs"), layout=layout, dtype="float64"),
                   spec, p0, unequal2, jax.random.key(1)) for layout in ("map", "lowrank")]
    np.testing.assert_allclose(_leaves(outs[1])[0], _leaves(outs[0])[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(outs[1].metrics["outputs"], outs[0].metrics["outputs"],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec, cfg, why", [
    (SPEC, en.RunConfig("local_sgd", rounds=2, batch_size=B, layout="lowrank"), "L=2"),
    (SPEC1, en.RunConfig("fedprox", rounds=2, batch_size=B, prox_mu=0.1, layout="lowrank"),
     "fedprox"),
    (SPEC1, en.RunConfig("local_sgd", rounds=2, batch_size=B, metrics=("loss", "drift"),
                         layout="lowrank"), "drift"),
])
def test_lowrank_layout_refuses_what_it_cannot_run(unequal2, spec, cfg, why):
    p0 = model.init(jax.random.key(0), spec)
    data = unequal2 if spec.d_out == 2 else dt.to_clients(*_xy(unequal2), PARTS)
    with pytest.raises(ValueError, match=f"layout='lowrank'.*{why}"):
        en.run(cfg, spec, p0, data, jax.random.key(1))


def _xy(data):
    """The pooled rows of ``data`` with its first output only."""
    m = np.asarray(data.mask) > 0
    return np.asarray(data.x)[m], np.asarray(data.y)[m][:, :1]


def test_scaffold_resumes_with_its_control_variates(p0, unequal):
    """Two runs continued through ``state`` end where one run of their total length does: the
    control variates travel in ``TrainState.client_state``."""
    def cfg(R):
        return en.RunConfig("scaffold", rounds=R, tau=2, eta=0.3, batch_size=B)

    key = jax.random.key(4)
    first = en.run(cfg(2), SPEC, p0, unequal, key)
    rest = en.run(cfg(2), SPEC, p0, unequal, key, start=first.state)
    whole = en.run(cfg(4), SPEC, p0, unequal, key)
    _assert_bitwise(_leaves(rest), _leaves(whole))
    _assert_bitwise(rest.state.client_state, whole.state.client_state)
    dropped = en.run(cfg(2), SPEC, p0, unequal, key, start=first.state._replace(
        client_state=jax.tree.map(jnp.zeros_like, first.state.client_state)))
    assert _max_diff(_leaves(dropped), _leaves(whole)) > 1e-6


def test_fedprox_with_mu_zero_is_local_sgd_bitwise(p0, unequal):
    key = jax.random.key(1)
    prox = en.run(en.RunConfig("fedprox", rounds=3, tau=2, eta=0.3, batch_size=B), SPEC, p0,
                  unequal, key)
    lsgd = en.run(en.RunConfig("local_sgd", rounds=3, tau=2, eta=0.3, batch_size=B), SPEC, p0,
                  unequal, key)
    for a, b in zip(_leaves(prox), _leaves(lsgd)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1", True, 1e300])
def test_prox_mu_is_validated(bad):
    with pytest.raises(ValueError, match="prox_mu"):
        en.RunConfig("fedprox", rounds=2, eta=0.1, batch_size=2, prox_mu=bad)


def test_prox_mu_only_for_fedprox():
    with pytest.raises(ValueError, match="prox_mu must be 0 for algorithm='local_sgd'"):
        en.RunConfig("local_sgd", rounds=2, eta=0.1, batch_size=2, prox_mu=0.5)


# ---------------------------------------------------------------------------------------------
# float64


def test_float64_run_matches_float64_reference_beyond_float32(ds, p0, one_client):
    """``dtype="float64"``: weights, data and step size in float64. Twenty GD steps against the
    NumPy float64 loop agree to 1e-12; the float32 run is off by far more (~1e-7), so the float64
    run is not float32 in disguise (as when eta or the weights were rounded to float32)."""
    eta = 0.3 + 1e-9  # not a float32 number: rounding it to float32 would show
    key = jax.random.key(0)
    cfg = en.RunConfig("local_gd", rounds=4, tau=5, eta=eta, dtype="float64")
    out64 = en.run(cfg, SPEC, p0, one_client, key)
    out32 = en.run(dataclasses.replace(cfg, dtype="float32"), SPEC, p0, one_client, key)
    x, y = np.asarray(ds.x, np.float64), np.asarray(ds.y, np.float64)
    W = [np.asarray(w, np.float64) for w in p0["trainable"]]
    for _ in range(20):
        g = _np_grad(p0, W, x, y, np.full(24, 1 / 24))
        W = [w - eta * gw for w, gw in zip(W, g)]
    err64 = _max_diff(_leaves(out64), W)
    err32 = _max_diff(_leaves(out32), W)
    assert out64.params["trainable"][0].dtype == np.float64
    assert out64.metrics["loss"].dtype == np.float64
    assert err64 < 1e-12 and err32 > 1e-8, (err64, err32)


@pytest.mark.parametrize("eta, field", [(1e39, "eta"), (1e-50, "eta")])
def test_eta_must_be_representable_in_dtype(eta, field):
    with pytest.raises(ValueError, match=f"{field} must be representable in float32"):
        en.RunConfig("local_gd", rounds=2, eta=eta)
    en.RunConfig("local_gd", rounds=2, eta=eta, dtype="float64")  # fine there


def test_layout_is_validated():
    with pytest.raises(ValueError, match="layout must be one of"):
        en.RunConfig("local_gd", rounds=2, layout="threads")
    with pytest.raises(ValueError, match="clients_together"):
        en.RunConfig("local_gd", rounds=2, clients_together=0)


def test_configs_differing_in_eta_share_a_program():
    a = en.RunConfig("local_gd", rounds=2, eta=0.1)
    b = en.RunConfig("local_gd", rounds=2, eta=0.2)
    assert a == b and hash(a) == hash(b) and a.eta != b.eta
    assert a != en.RunConfig("local_gd", rounds=2, eta=0.1, layout="vmap")


def test_registry_entries():
    assert set(algs.ALGORITHMS) >= {"local_sgd", "local_gd", "gd", "minibatch_sgd", "fedprox",
                                    "scaffold"}
    with pytest.raises(ValueError, match="already registered"):
        algs.register(algs.Algorithm("local_sgd"))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        algs.get("fedavg")


# ---------------------------------------------------------------------------------------------
# Divergence does not depend on what is recorded


BLOWUP = dict(n=12, d=5, m=16, L=1, num_clients=3, rounds=6, eval_every=2, eta_rule="fixed")


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("algorithm", ["local_gd", "local_sgd"])
def test_divergence_verdict_independent_of_recorded_metrics(results_dir, algorithm):
    """eta = 1e12: the same seed gives the same divergence round and the same trajectory whatever
    is recorded (before, with only ``flips`` or ``pl_ratio`` recorded the run went on, and
    ``pl_ratio`` recorded NaN without the run being marked diverged)."""
    from localsgd.experiments import Experiment, run

    extra = {"algorithm": algorithm, "batch_size": 2 if algorithm == "local_sgd" else None}
    res = {m: run(Experiment(**BLOWUP, **extra, eta=1e12, metrics=m), cache=False)
           for m in (("loss",), ("flips",), ("pl_ratio",), ("loss", "flips", "pl_ratio"))}
    verdicts = {m: r.diverged_at.tolist() for m, r in res.items()}
    assert all(r.diverged for r in res.values()), verdicts
    assert len({tuple(v) for v in verdicts.values()}) == 1, verdicts
    full = res[("loss", "flips", "pl_ratio")].metrics
    for m, r in res.items():
        for k, v in r.metrics.items():
            assert np.all(np.isfinite(v)), (m, k, v)
            np.testing.assert_array_equal(v, full[k])  # the same trajectory


@pytest.mark.parametrize("algorithm", ["local_gd", "local_sgd"])
def test_blowup_that_collapses_is_reported_by_name(results_dir, algorithm):
    """eta = 1e6: the loss jumps by orders of magnitude, then every ReLU dies and the loss sits
    at a constant with a zero gradient. Before, ``diverged`` was False and there was no message;
    now the run is stopped at the blow-up and the message names it and the parameter to lower."""
    from localsgd.experiments import Experiment, run

    extra = {"algorithm": algorithm, "batch_size": 2 if algorithm == "local_sgd" else None}
    r = run(Experiment(**BLOWUP, **extra, eta=1e6, metrics=("loss",)), cache=False)
    assert r.diverged
    msg = r.divergence_message()
    assert "Lower eta" in msg and ("loss grew" in msg or "inactive" in msg or "non-finite" in msg)
    # The recorded loss never shows the blow-up: training stopped at the last good weights.
    loss = r.metrics["loss"][0]
    assert np.all(loss <= en.GROWTH * loss[0])


def test_dead_network_is_reported(p0, unequal):
    """A network whose last hidden layer is inactive on every sample has a zero gradient and
    stops learning for good: the guard stops it and names the cause."""
    dead = {"trainable": (p0["trainable"][0], -jnp.abs(p0["trainable"][1]) - 1.0),
            "fixed": p0["fixed"]}  # W_2 h_1 < 0 for every h_1 >= 0
    out = en.run(en.RunConfig("local_gd", rounds=2, tau=1, eta=0.1), SPEC, dead, unequal,
                 jax.random.key(0))
    assert int(out.diverged_at) == 1 and en.WHY[int(out.diverged_why)] == "all units dead"
    msg = en.divergence_message(en.RunConfig("local_gd", rounds=2, eta=0.1), 1, out.diverged_why)
    assert "inactive on every sample" in msg and "Lower eta" in msg


# ---------------------------------------------------------------------------------------------
# Client optimisers as Optax transformations


@pytest.mark.parametrize("layout", ["map", "vmap"])
def test_optax_sgd_client_equals_the_fused_update(p0, unequal, layout):
    """An entry whose client optimiser is ``optax.sgd(eta)`` gives Local SGD's numbers (to
    float32 rounding: the update is applied after the whole gradient, not fused per layer)."""
    import optax

    name = "local_sgd_optax_test"
    if name not in algs.REGISTRY:
        algs.register(algs.Algorithm(name, stochastic=True,
                                     optimizer=lambda eta, config: optax.sgd(eta)))
    key = jax.random.key(1)
    kw = dict(rounds=3, tau=3, eta=0.3, batch_size=B, layout=layout)
    via_optax = en.run(en.RunConfig(name, **kw), SPEC, p0, unequal, key)
    fused = en.run(en.RunConfig("local_sgd", **kw), SPEC, p0, unequal, key)
    for a, b in zip(_leaves(via_optax), _leaves(fused)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(via_optax.metrics["loss"], fused.metrics["loss"], rtol=1e-5)
    momentum = en.run(en.RunConfig("local_sgd_momentum", **kw), SPEC, p0, unequal, key)
    assert _max_diff(_leaves(momentum), _leaves(fused)) > 1e-3  # momentum does change the run


@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_fedprox_and_scaffold_through_experiment_in_chunks(results_dir, algorithm):
    """Both run through ``Experiment``; run in checkpointed chunks (each continuing from the
    previous chunk's state, SCAFFOLD's control variates included) they end with exactly the
    numbers of one uninterrupted run."""
    from localsgd.experiments import Experiment, run

    exp = Experiment(n=24, d=6, m=16, L=1, num_clients=3, rounds=4, tau=2, eta=0.2,
                     eta_rule="fixed", algorithm=algorithm, batch_size=2, seeds=2,
                     prox_mu=0.5 if algorithm == "fedprox" else 0.0,
                     metrics=("loss", "client_loss"), partition="shards")
    whole = run(exp, cache=False)
    chunks = run(exp.replace(checkpoint_every=2), cache=False)
    for k in whole.metrics:
        np.testing.assert_array_equal(chunks.metrics[k], whole.metrics[k])
    loss = whole.metrics["loss"]
    assert not whole.diverged and loss[:, -1].max() < loss[:, 0].min()
    plain = run(exp.replace(algorithm="local_sgd", prox_mu=0.0), cache=False)
    assert not np.allclose(plain.metrics["loss"], whole.metrics["loss"])


def test_float64_experiment_keeps_eta_and_weights_in_float64(results_dir):
    """``Experiment(dtype="float64")``: the step size is not rounded to float32, the clients'
    averaging weights are ``n_k / n`` in float64 (7/24 is not a float32 number), and the recorded
    loss agrees with a float64 ``engine.run`` given those weights to 1e-13."""
    from localsgd import experiments as ex

    exp = ex.Experiment(n=24, d=6, m=16, L=1, num_clients=3, rounds=3, tau=2, eta=0.3 + 1e-9,
                        eta_rule="fixed", algorithm="local_gd", partition="dirichlet",
                        dtype="float64")
    res = ex.run(exp, cache=False)
    assert res.eta.dtype == np.float64 and res.eta[0] == 0.3 + 1e-9
    assert res.metrics["loss"].dtype == np.float64
    clients, _, _ = ex.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, keys = ex.init_params(exp, spec)
    mask = np.asarray(clients.mask, np.float64)
    weight = mask.sum(1) / mask.sum()
    assert np.any(weight.astype(np.float32) != weight)  # the float32 weights would be rounded
    ref = en.run(exp.run_config(), spec, jax.tree.map(lambda a: a[0], params0),
                 clients._replace(weight=weight), keys[0])
    np.testing.assert_allclose(res.metrics["loss"][0], ref.metrics["loss"], rtol=1e-13)
    f32 = ex.run(exp.replace(dtype="float32"), cache=False)
    assert np.max(np.abs(f32.metrics["loss"] - res.metrics["loss"])) > 1e-9
