"""localsgd.experiments (config validation, runner, cache) and localsgd.analysis (fits)."""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest

from localsgd import analysis
from localsgd import diagnostics as dg
from localsgd import engine as en
from localsgd import experiments as ex

# Small enough to compile and run in about a second; the same shapes as the other test files.
BASE = ex.Experiment(dataset="sphere", n=16, d=8, d_out=1, num_clients=2, m=32, L=2,
                     algorithm="local_gd", rounds=4, tau=2, eta=0.3, eta_rule="fixed", seeds=2)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def base_result():
    return ex.run(BASE, cache=False)


# ---------------------------------------------------------------------------------------------
# analysis


def test_fit_line_recovers_slope():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 10, 50)
    y = 3.0 - 2.0 * x + 0.01 * rng.standard_normal(50)
    s, a, se = analysis.fit_line(x, y)
    assert abs(s + 2.0) < 4 * se and 0 < se < 1e-2
    assert a == pytest.approx(3.0, abs=0.02)
    s, a, se = analysis.fit_line([0, 1, 2, np.nan], [1, 3, 5, 100])  # NaN rows are dropped
    assert (s, a) == pytest.approx((2.0, 1.0)) and se == pytest.approx(0.0, abs=1e-12)
    assert analysis.fit_line([1, 2], [5, 1]) == pytest.approx((-4.0, 9.0, 0.0))
    with pytest.raises(ValueError, match="x"):
        analysis.fit_line([1.0, np.nan], [1.0, 2.0])


def test_loglog_slope():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    p, se = analysis.loglog_slope(x, 5.0 * x**1.5)
    assert p == pytest.approx(1.5) and se == pytest.approx(0.0, abs=1e-10)


def test_linear_rate_of_exact_exponential():
    t = np.arange(0, 50, 5.0)
    F = 2.0 * np.exp(-0.3 * t)
    r, se = analysis.linear_rate(t, F)
    assert r == pytest.approx(0.3, rel=1e-10) and se == pytest.approx(0.0, abs=1e-10)
    # A plateau at the floating-point floor is excluded by ``floor``.
    F_floor = np.maximum(F, 1e-4)  # the last three records sit on the floor
    assert analysis.linear_rate(t, F_floor)[0] < 0.25
    assert analysis.linear_rate(t, F_floor, floor=1e-4)[0] == pytest.approx(0.3, rel=1e-8)
    assert analysis.log_linearity(t, F) == pytest.approx(1.0)
    assert analysis.log_linearity(t + 1, (t + 1) ** -2.0) < 0.95
    # An exact zero has no logarithm: it is left out of the fit, not scored as a perfect line.
    bent = np.array([1.0, 0.5, 0.4, 0.35, 0.0])
    assert analysis.log_linearity(np.arange(5.0), bent) < 0.95


def test_iterations_to_interpolates_log_linearly():
    it = np.array([0, 10, 20, 30])
    loss = np.array([[1.0, 0.1, 0.01, 0.001],
                     [1.0, 0.5, 0.4, 0.3],
                     [0.01, 0.001, 0.0001, 0.0001]])
    got = analysis.iterations_to(it, loss, 10**-1.5)
    assert got[0] == pytest.approx(15.0)
    assert got[1] == np.inf
    assert got[2] == 0.0
    assert analysis.iterations_to(it, loss[0], 0.001) == pytest.approx(30.0)
    assert analysis.iterations_to(it, loss[0], 10**-2.25) == pytest.approx(22.5)
    assert analysis.iterations_to(it, loss.reshape(3, 1, 4), 0.05).shape == (3, 1)


def test_band():
    v = np.arange(11.0)[:, None] * np.array([1.0, 2.0])
    med, lo, hi = analysis.band(v)
    np.testing.assert_allclose(med, [5, 10])
    np.testing.assert_allclose(lo, [1, 2])
    np.testing.assert_allclose(hi, [9, 18])


# ---------------------------------------------------------------------------------------------
# Experiment validation


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"dataset": "mnist"}, "dataset"),
        ({"n": 1}, "n"),
        ({"n": 16.0}, "n"),
        ({"n": -1, "dataset": "digits"}, "n"),
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 17}, "num_clients"),
        ({"partition": "random"}, "partition"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"delta": "0.1"}, "delta"),
        ({"eta_rule": "adaptive"}, "eta_rule"),
        ({"eta_rule": "ntk", "eta": 2.0}, "eta"),
        ({"seeds": 0}, "seeds"),
        ({"seed": -1}, "seed"),
        ({"data_seed": -1}, "data_seed"),
        ({"client_rows": -1}, "client_rows"),
        ({"targets": "noise"}, "targets"),
        ({"dataset": "idx"}, "idx_images"),
        ({"arch": "cnn"}, "arch"),
        ({"m": 0}, "m"),
        ({"L": 0}, "L"),
        ({"activation": "tanh"}, "activation"),
        ({"algorithm": "fedavg"}, "algorithm"),
        ({"rounds": 0}, "rounds"),
        ({"tau": 0}, "tau"),
        ({"eta": 0.0}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"eta": "0.1"}, "eta"),
        ({"algorithm": "local_sgd"}, "batch_size"),
        ({"batch_size": 4}, "batch_size"),
        ({"eval_every": 3}, "eval_every"),
        ({"metrics": ("loss", "accuracy")}, "metrics"),
    ],
)
def test_experiment_rejects_bad_field(changes, field):
    with pytest.raises(ValueError, match=field):
        BASE.replace(**changes)


def test_experiment_key():
    assert BASE.key() == ex.Experiment(**{**BASE.__dict__}).key()
    assert BASE.key() != BASE.replace(rounds=8).key()
    assert BASE.key() != BASE.replace(seed=1).key()
    assert BASE.key() != BASE.replace(data_seed=1).key()


def test_batch_size_larger_than_a_client_is_refused_before_work(results_dir, monkeypatch):
    exp = BASE.replace(algorithm="local_sgd", batch_size=9)  # clients hold 8 samples each

    def boom(*a, **k):
        raise AssertionError("sweep must not run")

    monkeypatch.setattr("localsgd.engine.sweep", boom)
    with pytest.raises(ValueError, match="batch_size"):
        ex.run(exp)
    assert not (results_dir / "cache").exists() or not any((results_dir / "cache").iterdir())


def test_client_rows_below_the_largest_client_is_refused_before_work(results_dir, monkeypatch):
    monkeypatch.setattr("localsgd.engine.sweep", lambda *a, **k: pytest.fail("sweep ran"))
    with pytest.raises(ValueError, match="client_rows"):
        ex.run(BASE.replace(client_rows=7))  # clients hold 8 samples each


def test_padding_changes_neither_a_full_batch_run_nor_its_kernel_model():
    """Local GD reads every real row and no padding: the same losses with clients padded to 8
    (their size) and to 13 rows; so does its kernel model."""
    from localsgd import kernel

    exp = BASE.replace(dtype="float64", rounds=6, eval_every=2, metrics=("loss", "outputs"))
    bare, padded = ex.run(exp, cache=False), ex.run(exp.replace(client_rows=13), cache=False)
    assert ex.load_data(exp.replace(client_rows=13))[0].mask.shape[1] == 13
    np.testing.assert_allclose(padded.metrics["loss"], bare.metrics["loss"], rtol=1e-10)
    np.testing.assert_allclose(kernel.predict(padded.config).loss, kernel.predict(exp).loss,
                               rtol=1e-10)


def test_digits_n_too_large_is_refused():
    with pytest.raises(ValueError, match="n"):
        ex.load_data(ex.Experiment(dataset="digits", n=5000))


# ---------------------------------------------------------------------------------------------
# Running


def test_run_shapes_and_provenance(base_result):
    r = base_result
    assert r.metrics["loss"].shape == (2, 5)
    np.testing.assert_array_equal(r.rounds, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(r.iterations, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(r.eta, [0.3, 0.3])
    np.testing.assert_array_equal(r.diverged_at, [-1, -1])
    assert not r.diverged and r.divergence_message() is None
    assert r.provenance["key"] == BASE.key() and r.provenance["config"]["m"] == 32
    assert np.all(r.metrics["loss"][:, -1] < r.metrics["loss"][:, 0])


def test_run_is_deterministic_and_seeds_differ(base_result):
    again = ex.run(BASE, cache=False)
    for k in base_result.metrics:
        np.testing.assert_array_equal(again.metrics[k], base_result.metrics[k])
    np.testing.assert_array_equal(again.eta, base_result.eta)
    loss = base_result.metrics["loss"]
    assert not np.allclose(loss[0], loss[1])  # seeds 0 and 1
    # Seed s of a run is seed + s: the run starting at seed 1 begins with the old second seed.
    shifted = ex.run(BASE.replace(seed=1), cache=False)
    np.testing.assert_allclose(shifted.metrics["loss"][0], loss[1], rtol=1e-6)
    assert not np.allclose(shifted.metrics["loss"][1], loss[1])


def test_run_matches_engine_run(base_result):
    """The runner is a thin layer: seed s equals engine.run on the same data, init and key."""
    clients, _, _ = ex.load_data(BASE)
    spec = BASE.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, keys = ex.init_params(BASE, spec)
    p1 = jax.tree.map(lambda a: a[1], params0)
    one = en.run(BASE.run_config(), spec, p1, clients, keys[1])
    np.testing.assert_allclose(base_result.metrics["loss"][1], one.metrics["loss"], rtol=1e-5)


def test_ntk_eta_rule(base_result):
    exp = BASE.replace(eta_rule="ntk", eta=0.5)
    res = ex.run(exp, cache=False)
    clients, _, _ = ex.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, _ = ex.init_params(exp, spec)
    x = clients.x[clients.mask > 0]
    grams = jax.jit(jax.vmap(lambda p: dg.ntk_gram(spec, p, x, outputs="full")))(params0)
    for s in range(2):
        lam_max = np.linalg.eigvalsh(np.asarray(grams[s], np.float64))[-1]
        assert res.eta[s] == pytest.approx(0.5 * 16 / lam_max, rel=1e-3)
    assert not np.allclose(res.eta[0], res.eta[1])


def test_divergence_through_the_runner():
    res = ex.run(BASE.replace(eta=1e10), cache=False)
    assert res.diverged and np.all(res.diverged_at >= 1)
    for v in res.metrics.values():
        assert np.all(np.isfinite(v))
    msg = res.divergence_message()
    assert "eta" in msg and "seed 0" in msg


def test_digits_run_reports_test_metrics():
    exp = ex.Experiment(dataset="digits", n=60, num_clients=3, m=32, L=1, rounds=2, eta=0.1,
                        eta_rule="fixed")
    res = ex.run(exp, cache=False)
    acc, loss = res.test["accuracy"], res.test["loss"]
    assert acc.shape == (1,) and 0.0 <= acc[0] <= 1.0
    assert loss.shape == (1,) and np.isfinite(loss[0]) and loss[0] > 0


def test_digits_run_records_the_test_outputs_its_test_metrics_are_computed_from():
    exp = ex.Experiment(dataset="digits", n=60, num_clients=3, m=32, L=1, rounds=2, eta=0.1,
                        eta_rule="fixed", seeds=2, metrics=("loss", "test_outputs"))
    res = ex.run(exp, cache=False)
    _, test, _ = ex.load_data(exp)
    out = res.metrics["test_outputs"]
    assert out.shape == (2, exp.run_config().evaluations, test.x.shape[0], 10)
    # the last recorded outputs are the final model's, whose test metrics the run reports
    np.testing.assert_allclose(
        np.mean(np.argmax(out[:, -1], -1) == test.labels, -1), res.test["accuracy"])
    np.testing.assert_allclose(
        np.mean(0.5 * np.sum((out[:, -1] - test.y) ** 2, -1), -1), res.test["loss"], rtol=1e-5)
    assert not np.allclose(out[:, 0], out[:, -1])


def test_test_outputs_need_a_test_split():
    with pytest.raises(ValueError, match="metrics.*test split"):
        ex.Experiment(dataset="sphere", metrics=("loss", "test_outputs"))


def test_run_grid_rejects_non_experiments():
    with pytest.raises(ValueError, match="exps"):
        ex.run_grid([BASE, {"n": 4}])


# ---------------------------------------------------------------------------------------------
# Cache


def _json_roundtrip(d):
    """Provenance as the cache stores it (JSON: tuples become lists)."""
    return json.loads(json.dumps(d))


def _cache_file(results_dir):
    files = list((results_dir / "cache").glob("*.npz"))
    assert len(files) == 1
    return files[0]


def test_cache_hit_returns_identical_arrays(results_dir, monkeypatch):
    first = ex.run(BASE)
    path = _cache_file(results_dir)
    assert path.name.startswith(BASE.key())

    def boom(*a, **k):
        raise AssertionError("a cache hit must not recompute")

    monkeypatch.setattr("localsgd.engine.sweep", boom)
    second = ex.run(BASE)
    assert second.metrics.keys() == first.metrics.keys()
    for k in first.metrics:
        np.testing.assert_array_equal(second.metrics[k], first.metrics[k])
    for name in ("rounds", "eta", "diverged_at"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.provenance == _json_roundtrip(first.provenance)
    # Another config misses the cache (and so reaches the patched sweep).
    with pytest.raises(AssertionError, match="recompute"):
        ex.run(BASE.replace(rounds=2))


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "edit_header", "truncate",
                                    "garbage"])
def test_corrupt_cache_is_recomputed_with_a_warning(results_dir, damage):
    first = ex.run(BASE)
    path = _cache_file(results_dir)
    blob = bytearray(path.read_bytes())
    if damage == "flip_payload":
        blob[-20] ^= 0xFF
        blob[-21] ^= 0x0F
    elif damage == "flip_header":
        blob[40] ^= 0x01
    elif damage == "edit_header":  # still valid JSON of the same length: only the checksum knows
        i = blob.find(b'"platform": "') + len(b'"platform": "')
        assert i > 20
        blob[i] = ord("x") if blob[i] != ord("x") else ord("y")
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob = bytearray(b"not a cache file")
    path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="unreadable"):
        again = ex.run(BASE)
    for k in first.metrics:
        np.testing.assert_array_equal(again.metrics[k], first.metrics[k])
    # The entry was rewritten: the next run is a clean hit.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = ex.run(BASE)
    assert hit.provenance == _json_roundtrip(again.provenance)


def test_cache_false_writes_nothing(results_dir):
    ex.run(BASE, cache=False)
    assert not (results_dir / "cache").exists() or not any((results_dir / "cache").iterdir())
