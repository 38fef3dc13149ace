"""Chapter 04's verdict (localsgd.claims.local_gd) on Local GD with the theorems' step, and on
wrong runs: clients whose gradients use the wrong labels, and a width far too small."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from localsgd import experiments, model
from localsgd.claims import all_hold
from localsgd.claims.local_gd import lambda_min, local_gd

TAUS, C, EPS, ROUNDS = (1, 4), 0.5, 1e-2, 240


def theorem_runs(m=128):
    """Local GD at the theorems' step, eta = C n / (lambda_max(G0) tau), for every tau."""
    exps = {t: experiments.Experiment(n=16, d=32, num_clients=4, m=m, L=1, algorithm="local_gd",
                                      tau=t, eta=C / t, rounds=ROUNDS, eval_every=8, seeds=2)
            for t in TAUS}
    return {t: experiments.run(e, cache=False) for t, e in exps.items()}, lambda_min(exps[1])


pytestmark = pytest.mark.usefixtures("patched_engine_results")


def test_local_gd_verdict_holds_at_the_theorems_step():
    runs, lam = theorem_runs()
    checks = local_gd(runs, lam, EPS)
    print(*checks, sep="\n")
    assert all_hold(checks), checks


def test_negative_control_04_local_gd_wrong_labels(monkeypatch):
    backprop = model.backprop

    def wrong_labels(spec, fixed, W, f, y, w, update=None):
        # each client steps on its samples paired with another sample's label
        return backprop(spec, fixed, W, f, jnp.roll(y, 1, axis=0), w, update)

    monkeypatch.setattr(model, "backprop", wrong_labels)  # the engine calls model.backprop
    runs, lam = theorem_runs()
    checks = local_gd(runs, lam, EPS)
    print(*checks, sep="\n")
    assert not all_hold(checks)
    assert not any(c.holds for c in checks if "rounds to ε / linearised" in c.name)


def test_negative_control_04_local_gd_width_far_too_small():
    runs, lam = theorem_runs(m=8)
    checks = local_gd(runs, lam, EPS)
    print(*checks, sep="\n")
    assert not all_hold(checks)


def test_local_gd_refuses_a_single_tau():
    with pytest.raises(ValueError, match="theorem_runs"):
        local_gd({1: None}, [1.0], EPS)
