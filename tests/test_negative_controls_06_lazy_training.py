"""Chapter 06's verdict (localsgd.claims.lazy_training) on correct width axes of the deep and the
two-layer network, built as the notebook builds them, and with one network's axis run silently
wrong while reporting the requested configuration: half the step, one local step instead of tau,
no server average, a quarter of the width. Each must make the verdict fail, not crash, through a
check of the network that ran wrong; the wrong kinds alternate between the two networks (the
other network's correct runs are shared), so that each network's checks are seen to catch a
wrong run on their own."""

from __future__ import annotations

import pytest

from localsgd import experiments
from localsgd.claims import all_hold
from localsgd.claims import lazy_training as claims

WIDTHS = {"deep": (64, 256, 1024), "two_layer": (256, 1024, 4096)}
SETTING = dict(n=16, d=16, num_clients=2, L=1, tau=2, rounds=12, eval_every=4, eta=1.0, seeds=2)
LABEL = {"deep": "deep", "two_layer": "two-layer"}  # how the checks name each network


def _experiments(arch):
    return {m: claims.experiment(arch, m, **SETTING) for m in WIDTHS[arch]}


def _movement(arch, kernels):
    runs = {m: experiments.run(e) for m, e in _experiments(arch).items()}
    return claims.movement(runs, kernels[arch], bootstrap=200)


@pytest.fixture(scope="module")
def kernels():
    """The kernel models of the requested runs and their movement: both come from the
    configurations the runs report, which a wrong run does not change."""
    return {arch: {m: claims.kernel_movement(e) for m, e in _experiments(arch).items()}
            for arch in claims.ARCHS}


@pytest.fixture(scope="module")
def correct(tmp_path_factory, kernels):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSGD_RESULTS", str(tmp_path_factory.mktemp("results")))
        return {arch: _movement(arch, kernels) for arch in claims.ARCHS}


def test_lazy_training_holds_on_correct_runs(correct):
    checks = claims.checks(correct["deep"], correct["two_layer"])
    assert all_hold(checks), [c.name for c in checks if not c.holds]


def _fails(kind, arch, wrong, kernels, correct):
    applied = wrong(kind)
    mv = {**correct, arch: _movement(arch, kernels)}
    checks = claims.checks(mv["deep"], mv["two_layer"])
    assert applied and all(applied)
    failing = [c.name for c in checks if not c.holds]
    print(kind, f"({arch}) fails:", *failing, sep="\n  ")
    assert not all_hold(checks), f"{kind}: every check held"
    assert any(name.startswith(LABEL[arch]) for name in failing), failing


def test_negative_control_06_half_step(silently_wrong, kernels, correct):
    _fails("half_step", "deep", silently_wrong, kernels, correct)


def test_negative_control_06_one_local_step(silently_wrong, kernels, correct):
    _fails("one_local_step", "two_layer", silently_wrong, kernels, correct)


def test_negative_control_06_no_averaging(silently_wrong, kernels, correct):
    _fails("no_averaging", "deep", silently_wrong, kernels, correct)


def test_negative_control_06_quarter_width(silently_wrong, kernels, correct):
    _fails("quarter_width", "two_layer", silently_wrong, kernels, correct)


def test_movement_refuses_kernels_of_other_widths(kernels):
    # refused before any result is read
    with pytest.raises(ValueError, match="kernels"):
        claims.movement(dict.fromkeys(WIDTHS["two_layer"]),
                        {m: k for m, k in kernels["two_layer"].items() if m != 256})
