"""Chapter 04's verdict (localsgd.claims.local_gd) on its runs at small sizes, built as the
notebook builds them: it holds on correct runs and fails, without crashing, on runs that silently
take half the step, one local step instead of tau, no server averaging or a quarter of the width
while reporting the requested configuration."""

from __future__ import annotations

import pytest

from localsgd import experiments, kernel
from localsgd.claims import all_hold
from localsgd.claims import local_gd as claims

SIZES = dict(n=8, d=16, num_clients=2, data_seed=0, L=1, widths=[128, 256, 512], m=512,
             taus=[1, 4], axis_tau=4, c=1.0, rounds=24, fixed_rounds=12, seeds=2)
EPS = 1e-2


def verdict() -> list:
    """The chapter's checks on its runs at :data:`SIZES`, as the notebook computes them."""
    design = claims.design(**SIZES)
    unique = design.experiments()
    runs = design.assign(dict(zip(unique, experiments.run_grid(unique))))
    preds = design.assign({e: kernel.predict(e) for e in unique})
    lam = claims.lambda_min(design.theorem[SIZES["taus"][0]])
    checks = claims.local_gd(runs, preds, lam, EPS)
    print(*checks, sep="\n")
    return checks


def test_local_gd_verdict_holds_on_correct_runs(patched_engine_results):
    assert all_hold(verdict())


@pytest.mark.parametrize("kind", ["half_step", "one_local_step", "no_averaging", "quarter_width"])
def test_negative_control_04(wrong_verdict, kind):
    wrong_verdict(kind, verdict, every_run=False)


def test_design_refuses_a_single_tau_and_too_few_widths():
    with pytest.raises(ValueError, match="taus"):
        claims.design(**{**SIZES, "taus": [4]})
    with pytest.raises(ValueError, match="widths"):
        claims.design(**{**SIZES, "widths": [128, 512]})
