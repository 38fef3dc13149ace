"""Negative controls for chapter 07: the verdict of ``claims.polynomial_time`` holds for a small
correct sweep over the separation delta and fails when the prediction comes from a wrong
initialisation or when the network is far too narrow for the prediction's regime."""

from __future__ import annotations

import numpy as np
import pytest

from localsgd import experiments as ex
from localsgd import theory
from localsgd.claims import all_hold
from localsgd.claims import polynomial_time as pt

EPS = [0.1, 0.05, 0.02]
DELTAS = [0.6, 0.3, 0.15]
SETTINGS = dict(factor=6.0, slack=4.0, r2_min=0.9, exponent_tol=0.75, max_movement=0.3,
                max_flips=0.15)


def _experiment(delta, m):
    return ex.Experiment(
        dataset="sphere", n=16, d=32, delta=delta, num_clients=4, arch="deep", m=m, L=2,
        algorithm="local_gd", tau=2, eta=1.5, eta_rule="ntk", seeds=2, rounds=4, eval_every=4,
        metrics=("loss", "dist", "flips"),
    )


def _checks(m, monkeypatch=None, init_scale=None):
    """A sweep over ``DELTAS`` at width ``m``, with a horizon of three times the largest
    prediction (one horizon for all, so one compiled program), fed to the chapter's checks. With
    ``init_scale`` the prediction's lambda_min comes from weights drawn with ``init_scale**2``
    times the right variance (the runs themselves are the right ones)."""
    exps = [_experiment(delta, m) for delta in DELTAS]
    plans = [pt.init_min_eigenvalues(e, with_prediction=True) for e in exps]
    longest = max(theory.iterations_to_eps(F0, min(EPS), eta, lam, 16).max()
                  for lam, F0, eta in plans)
    # capped, for a far too narrow net whose Gram may even be singular (no prediction at all)
    rounds = 4 * int(min(np.ceil(3 * longest / 8), 500)) if longest > 0 else 2000
    right = ex.init_params

    def wrong(e, spec):
        params, keys = right(e, spec)
        params["trainable"] = [w * init_scale for w in params["trainable"]]
        return params, keys

    T, P, move, flips = [], [], [], []
    for exp, (lam, _, _) in zip(exps, plans):
        res = ex.run(exp.replace(rounds=rounds), cache=False)
        if init_scale is not None:
            with monkeypatch.context() as mp:
                mp.setattr(ex, "init_params", wrong)
                lam = pt.init_min_eigenvalues(exp)
        T.append(pt.measured(res, EPS))
        P.append(pt.predicted(res, lam, EPS))
        move.append(res.metrics["dist_rel"].max(axis=1))
        flips.append(res.metrics["flips"].max(axis=1))
    T, P = np.stack(T), np.stack(P)
    x = 1 / np.array(DELTAS)
    fit, p_pred = pt.exponents(x, T[:, :, -1], P[:, :, -1], bootstrap=100)
    exps, pred = {"1/δ": fit}, {"1/δ": p_pred}
    r2 = pt.eps_linearity(T.reshape(-1, len(EPS)), EPS)
    return pt.checks((T / P).ravel(), r2, exps, pred, np.ravel(move), np.ravel(flips), **SETTINGS)


pytestmark = pytest.mark.usefixtures("tmp_results")


def test_07_polynomial_time_correct_sweep_holds():
    checks = _checks(m=64)
    assert all_hold(checks), [c for c in checks if not c.holds]


def test_negative_control_07_polynomial_time_lambda_min_from_wrong_init(monkeypatch):
    checks = _checks(m=64, monkeypatch=monkeypatch, init_scale=2.0)
    assert not all_hold(checks)
    failing = {c.name for c in checks if not c.holds}
    assert any("measured / predicted" in name for name in failing), failing


def test_negative_control_07_polynomial_time_width_far_too_small():
    checks = _checks(m=4)
    assert not all_hold(checks)
    failing = {c.name for c in checks if not c.holds}
    assert failing & {"largest relative movement ‖W − W₀‖/‖W₀‖",
                      "largest measured / predicted iterations", "runs that reached ε"}, failing
