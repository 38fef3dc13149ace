"""Negative controls for chapter 07: the chapter's verdict (``claims.polynomial_time.checks``) on
small versions of its runs, built by the same functions as the notebook (a width axis, a sweep
over ``1/delta``, the infinite-width kernel model over ``n``), holds for correct runs and fails,
without crashing, when every run silently takes a wrong step, one local step instead of ``tau``,
no server averaging, or a quarter of the width, while reporting the requested configuration.
(The chapter runs Local GD, full-batch: a wrong batch size does not apply.)"""

from __future__ import annotations

import pytest

from localsgd.claims import all_hold
from localsgd.claims import polynomial_time as pt
from localsgd.experiments import Experiment

EPS = [0.1, 0.05, 0.02]
WIDTHS = [32, 128, 512]
DELTAS = [0.6, 0.3]


def _verdict():
    base = Experiment(
        dataset="sphere", n=8, d=32, num_clients=4, arch="deep", L=1, algorithm="local_gd",
        tau=2, eta=0.5, eta_rule="ntk", seeds=2, rounds=2, eval_every=2,
        metrics=("loss", "outputs"),
    )
    _, axis = pt.width_axis(base, WIDTHS, EPS, bootstrap=200)
    sweeps = {"1/δ": pt.sweep(base.replace(m=128), [1 / v for v in DELTAS],
                              [dict(delta=v) for v in DELTAS], EPS)}
    limits = {"n": pt.limit_sweep(base.replace(delta=0.3), [16, 32, 64],
                                  [dict(n=v) for v in (16, 32, 64)], EPS)}
    return pt.checks(axis, sweeps, limits, EPS)


def test_07_polynomial_time_correct_runs_hold(tmp_results):
    checks = _verdict()
    assert all_hold(checks), [c for c in checks if not c.holds]


@pytest.mark.parametrize("kind", ["half_step", "one_local_step", "no_averaging", "quarter_width"])
def test_negative_control_07(wrong_verdict, kind):
    wrong_verdict(kind, _verdict)
