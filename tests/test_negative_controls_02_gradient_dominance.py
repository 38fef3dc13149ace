"""Negative controls for chapter 02: the checks of `localsgd.claims.gradient_dominance` hold on a
small correct run and fail on deliberately wrong ones (duplicated inputs, a wrong initialisation
variance, a step above the critical one), and the checks of its training runs (the ratio along
training and the runs against their kernel models over a width axis) come out "does not hold",
without crashing, on runs that silently do something else than they report (``WRONG_RUNS`` of
tests/conftest.py: half the step, one local step, no averaging, a quarter of the width)."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from localsgd import data, diagnostics, engine, experiments, model, theory
from localsgd.claims import all_hold
from localsgd.claims import gradient_dominance as gd
from localsgd.claims import kernel_model as km

N, D, L, M = 16, 16, 2, 512
DELTAS = [0.05, 0.1, 0.2, 0.4]
NS = [8, 16, 32]


def _sweep(duplicate: bool = False):
    def inputs(n, delta):
        x = data.sphere(n, D, delta=delta, seed=0).x.copy()
        if duplicate:  # two identical samples: delta = 0, outside ALS19's assumption
            x[1] = x[0]
        return x

    exp = experiments.Experiment(n=N, d=D, m=M, L=L, seeds=2)
    spec = exp.net_spec()
    params0, _ = experiments.init_params(exp, spec)
    xd = [inputs(N, dl) for dl in DELTAS]
    xn = [inputs(k, 0.2) for k in NS]
    lam_d, inf_d = theory.kernel_constants(spec, params0, xd)
    lam_n, inf_n = theory.kernel_constants(spec, params0, xn)
    return gd.kernel_scaling(DELTAS, lam_d, inf_d, NS, lam_n, inf_n)


def _failing(checks):
    return {c.name for c in checks if not c.holds}


def test_kernel_scaling_holds_on_a_correct_run():
    checks = _sweep()
    assert all_hold(checks), _failing(checks)


def test_negative_control_02_gradient_dominance_duplicated_inputs():
    checks = _sweep(duplicate=True)
    assert not all_hold(checks)
    assert any(r"\(\lambda_{\min}(G_\infty)\) in \(\delta\)" in name for name in _failing(checks))


def test_negative_control_02_gradient_dominance_wrong_init_variance(monkeypatch):
    init = model.init

    def wide_variance(key, spec, dtype=np.float32):  # N(0, 8/m) instead of N(0, 2/m)
        p = init(key, spec, dtype)
        return {**p, "trainable": tuple(math.sqrt(4.0) * w for w in p["trainable"])}

    monkeypatch.setattr(model, "init", wide_variance)
    checks = _sweep()
    assert not all_hold(checks)
    assert any(r"\(\div\) \(\lambda_{\min}(G_\infty)\)" in name for name in _failing(checks))


@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_ratio_along_training_fails_when_the_ratio_collapses(bad):
    widths = [64, 128, 256]
    lam = np.array([[0.1 * m for m in widths]] * 2)
    med = 2 * lam / 32
    healthy = gd.Training(widths, {}, med, med, med, lam, 3 * lam, 0)
    assert all_hold(gd.ratio_along_training(healthy, 32))
    checks = gd.ratio_along_training(healthy._replace(low=med * bad), 32)
    assert not all_hold(checks)


def _semi_smoothness(scale: float, rounds: int = 6):
    """Local GD (K = 2, tau = 2) one round at a time from one initialisation, with the step
    ``scale * n / lambda_max(G0)``; the semi-smoothness checks with the bound for the chapter's
    step fraction 0.5."""
    exp = experiments.Experiment(n=N, d=D, num_clients=2, m=128, L=L, tau=2, seeds=1)
    spec = exp.net_spec()
    clients, _, _ = experiments.load_data(exp)
    params0, keys = experiments.init_params(exp, spec)
    p0 = jax.tree.map(lambda a: a[0], params0)
    eta = float(theory.ntk_step_size(spec, p0, clients.x[clients.mask > 0], scale))
    cfg = dataclasses.replace(exp.run_config(eta), rounds=1, eval_every=1, metrics=("loss",))
    out = engine.run(cfg, spec, p0, clients, keys[0])
    iterates = [p0["trainable"], out.params["trainable"]]
    for _ in range(rounds - 1):
        out = engine.run(cfg, spec, p0, clients, keys[0], start=out.state)
        iterates.append(out.params["trainable"])
    residual, dot, _ = theory.taylor_residuals(spec, p0["fixed"], iterates, clients)
    return gd.semi_smoothness(residual, np.abs(dot), dot, bound=2 * 0.5 / 2)


def test_semi_smoothness_holds_at_the_chapter_step():
    checks = _semi_smoothness(0.5)
    assert all_hold(checks), _failing(checks)


def test_negative_control_02_gradient_dominance_step_above_critical():
    # 2.5 n / lambda_max(G0): above the linearised model's critical step 2 n / lambda_max
    checks = _semi_smoothness(2.5)
    assert not all_hold(checks)
    assert not checks[-1].holds  # some steps increase F


def test_limit_kernel_is_what_the_empirical_gram_tends_to():
    x = data.sphere(8, D, delta=0.2, seed=1).x
    limit = theory.gram_infinity_deep(x, L)
    errors = []
    for m in (128, 4096):
        exp = experiments.Experiment(n=8, d=D, m=m, L=L, seeds=2)
        spec = exp.net_spec()
        params0, _ = experiments.init_params(exp, spec)
        grams = jax.vmap(lambda p, s=spec: diagnostics.ntk_gram(s, p, x))(params0)
        grams = np.asarray(grams, np.float64) / m
        errors.append(np.median([np.linalg.norm(g - limit, 2) for g in grams]))
    errors = np.array(errors) / np.linalg.norm(limit, 2)
    assert errors[1] < 0.1
    assert errors[1] < errors[0] / 2  # concentration in m (m^{-1/2} predicts a factor ~5.7)


def test_gram_infinity_deep_refuses_bad_input():
    with pytest.raises(ValueError, match="L must"):
        theory.gram_infinity_deep(np.eye(3), 0)
    with pytest.raises(ValueError, match="x must"):
        theory.gram_infinity_deep(np.ones(3), 1)


# the chapter's training runs at small sizes, built and checked by the notebook's own functions
TRAIN_WIDTHS = (64, 256, 1024)
TRAIN = dict(n=16, d=16, num_clients=2, L=1, tau=2, eta=0.5, rounds=30, eval_every=2, seeds=2)


def _training_checks():
    results = dict(zip(TRAIN_WIDTHS, experiments.run_grid(
        [gd.ratio_run(m, **TRAIN) for m in TRAIN_WIDTHS], desc="Local GD")))
    stats = gd.training_statistics(results)
    return gd.training_checks(stats, km.width_axis(results, km.predictions(results)), TRAIN["n"])


def test_training_checks_hold_on_correct_runs(patched_engine_results):
    checks = _training_checks()
    assert all_hold(checks), _failing(checks)


def _wrong_training(silently_wrong, kind):
    applied = silently_wrong(kind)
    checks = _training_checks()
    assert all(applied)
    assert not all_hold(checks)
    failing = _failing(checks)
    assert any(r"\(\sqrt{m}\,D\)" in name for name in failing), failing


def test_negative_control_02_half_step(silently_wrong):
    _wrong_training(silently_wrong, "half_step")


def test_negative_control_02_one_local_step(silently_wrong):
    _wrong_training(silently_wrong, "one_local_step")


def test_negative_control_02_no_averaging(silently_wrong):
    _wrong_training(silently_wrong, "no_averaging")


def test_negative_control_02_quarter_width(silently_wrong):
    _wrong_training(silently_wrong, "quarter_width")
