"""Chapter 03's verdict (localsgd.claims.key_lemma) on a correct sweep of eta * tau over a width
axis, built as the notebook builds it, and on sweeps run silently wrong while reporting the
requested configuration: half the step, one local step instead of tau, no server average, a
quarter of the width. Each must make the verdict fail, not crash."""

from __future__ import annotations

import pytest

from localsgd import experiments
from localsgd.claims import all_hold, key_lemma

WIDTHS = (32, 128, 512)
ETA_TAU = (0.0025, 0.025, 0.25)  # in units of n / lambda_max(G_0)
SETTING = dict(n=16, d=16, num_clients=4, L=1, tau=4, rounds=8, eval_every=2, seeds=2)


def _experiments():
    return {(m, c): key_lemma.experiment(m, c, **SETTING) for m in WIDTHS for c in ETA_TAU}


def _sweep(predictions):
    results = {key: experiments.run(e) for key, e in _experiments().items()}
    return key_lemma.sweep(results, *predictions, bootstrap=200)


@pytest.fixture(scope="module")
def predictions():
    """The first-order coefficients and the kernel models of the requested runs: both come from
    the configurations the runs report, which a wrong run does not change."""
    exps = _experiments()
    return ({m: key_lemma.gap_coefficients(exps[(m, ETA_TAU[0])]) for m in WIDTHS},
            {key: key_lemma.kernel_gap(e) for key, e in exps.items()})


@pytest.fixture(scope="module")
def correct(tmp_path_factory, predictions):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSGD_RESULTS", str(tmp_path_factory.mktemp("results")))
        return _sweep(predictions)


def test_key_lemma_holds_on_a_correct_sweep(correct):
    checks = key_lemma.checks(correct)
    assert all_hold(checks), [c.name for c in checks if not c.holds]


def test_negative_control_03_half_step(wrong_verdict, predictions):
    wrong_verdict("half_step", lambda: key_lemma.checks(_sweep(predictions)))


def test_negative_control_03_one_local_step(wrong_verdict, predictions):
    wrong_verdict("one_local_step", lambda: key_lemma.checks(_sweep(predictions)))


def test_negative_control_03_no_averaging(wrong_verdict, predictions):
    wrong_verdict("no_averaging", lambda: key_lemma.checks(_sweep(predictions)))


def test_negative_control_03_quarter_width(wrong_verdict, predictions):
    wrong_verdict("quarter_width", lambda: key_lemma.checks(_sweep(predictions)))


def test_key_lemma_refuses_a_sweep_shorter_than_two_decades(correct):
    with pytest.raises(ValueError, match="eta_tau"):
        key_lemma.checks(correct._replace(eta_tau=correct.eta_tau / [1, 3, 30]))
