"""Chapter 06's verdict (localsgd.claims.lazy_training) on correct width axes of the deep and the
two-layer network, built as the notebook builds them, and on axes run silently wrong while
reporting the requested configuration: half the step, one local step instead of tau, no server
average, a quarter of the width. Each must make the verdict fail, not crash."""

from __future__ import annotations

import pytest

from localsgd import experiments
from localsgd.claims import all_hold
from localsgd.claims import lazy_training as claims

WIDTHS = {"deep": (64, 256, 1024), "two_layer": (256, 1024, 4096)}
SETTING = dict(n=16, d=16, num_clients=2, L=1, tau=2, rounds=12, eval_every=4, eta=1.0, seeds=2)


def _experiments(arch):
    return {m: claims.experiment(arch, m, **SETTING) for m in WIDTHS[arch]}


def _checks(kernels):
    mv = {arch: claims.movement({m: experiments.run(e) for m, e in _experiments(arch).items()},
                                kernels[arch], bootstrap=200) for arch in claims.ARCHS}
    return claims.checks(mv["deep"], mv["two_layer"])


@pytest.fixture(scope="module")
def kernels():
    """The kernel models of the requested runs and their movement: both come from the
    configurations the runs report, which a wrong run does not change."""
    return {arch: {m: claims.kernel_movement(e) for m, e in _experiments(arch).items()}
            for arch in claims.ARCHS}


def test_lazy_training_holds_on_correct_runs(tmp_results, kernels):
    checks = _checks(kernels)
    assert all_hold(checks), [c.name for c in checks if not c.holds]


def _fails(kind, wrong, kernels):
    applied = wrong(kind)
    checks = _checks(kernels)
    assert applied and all(applied)
    print(kind, "fails:", *(c.name for c in checks if not c.holds), sep="\n  ")
    assert not all_hold(checks), f"{kind}: every check held"


def test_negative_control_06_half_step(silently_wrong, kernels):
    _fails("half_step", silently_wrong, kernels)


def test_negative_control_06_one_local_step(silently_wrong, kernels):
    _fails("one_local_step", silently_wrong, kernels)


def test_negative_control_06_no_averaging(silently_wrong, kernels):
    _fails("no_averaging", silently_wrong, kernels)


def test_negative_control_06_quarter_width(silently_wrong, kernels):
    _fails("quarter_width", silently_wrong, kernels)


def test_movement_refuses_kernels_of_other_widths(tmp_results, kernels):
    runs = {m: experiments.run(e) for m, e in _experiments("two_layer").items()}
    with pytest.raises(ValueError, match="kernels"):
        claims.movement(runs, {m: k for m, k in kernels["two_layer"].items() if m != 256})
