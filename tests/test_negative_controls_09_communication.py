"""Chapter 09's verdict (localsgd.claims.communication) on correct runs built as the notebook
builds them (:func:`localsgd.claims.communication.plan`, small sizes), and with the two ``tau``
sweeps run silently wrong while reporting the requested configuration: half the step, one local
step instead of tau, no server average. Each must make the verdict fail, not crash; the other
arms (equal computation, width axis) are the correct runs, and every kernel model comes from the
configuration a run reports, which a wrong run does not change."""

from __future__ import annotations

import pytest

from localsgd.claims import all_hold
from localsgd.claims import communication as cc
from localsgd.claims import kernel_model as km
from localsgd.experiments import Experiment, run_grid

EPS = 0.01
BASE = Experiment(dataset="sphere", n=16, d=16, num_clients=2, data_seed=0, m=128, L=1,
                  algorithm="local_sgd", batch_size=2, eval_every=5, eta_rule="ntk", seeds=2)
PLAN = cc.plan(BASE, taus=[1, 4], c=0.7, rounds_shrinking=250, rounds_fixed=[250, 100], tau_cmp=4,
               step_grid=[0.7], rounds_cmp=250, widths=[64, 128, 256])
SWEEPS = ("shrinking", "fixed")


def _run(arms):
    return {arm: dict(zip(PLAN[arm], run_grid(list(PLAN[arm].values()), desc=arm)))
            for arm in arms}


def _checks(runs):
    preds = cc.predictions(runs)
    axis = km.width_axis(runs["width"], preds["width"], EPS)
    return cc.communication(runs, preds, axis, EPS)


@pytest.fixture(scope="module")
def correct(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSGD_RESULTS", str(tmp_path_factory.mktemp("results")))
        return _run(cc.ARMS)


def test_communication_holds_on_correct_runs(correct):
    checks = _checks(correct)
    assert all_hold(checks), [(c.name, c.measured) for c in checks if not c.holds]


def test_negative_control_09_half_step(wrong_verdict, correct):
    wrong_verdict("half_step", lambda: _checks({**correct, **_run(SWEEPS)}), every_run=False)


def test_negative_control_09_one_local_step(wrong_verdict, correct):
    wrong_verdict("one_local_step", lambda: _checks({**correct, **_run(SWEEPS)}), every_run=False)


def test_negative_control_09_no_averaging(wrong_verdict, correct):
    wrong_verdict("no_averaging", lambda: _checks({**correct, **_run(SWEEPS)}), every_run=False)


def test_plan_refuses_a_tau_cmp_outside_taus():
    with pytest.raises(ValueError, match="tau_cmp"):
        cc.plan(BASE, [1, 4], 0.8, 10, [10, 10], 2, [0.7], 10, [64, 128, 256])


def test_communication_refuses_a_shrinking_sweep_whose_eta_tau_varies(correct):
    runs = {**correct, "shrinking": correct["fixed"]}
    with pytest.raises(ValueError, match="eta \\* tau"):
        cc.communication(runs, {}, None, EPS)
