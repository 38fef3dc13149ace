"""Chapter 05's verdict (localsgd.claims.local_sgd) on its runs at small sizes, built as the
notebook builds them: it holds on correct runs and fails, without crashing, on runs that silently
take half the step, one local step instead of tau, no server averaging, a quarter of the width
or another batch size while reporting the requested configuration."""

from __future__ import annotations

import functools

import pytest

from localsgd import experiments, kernel
from localsgd.claims import all_hold
from localsgd.claims import local_sgd as claims

SIZES = dict(n=8, d=16, num_clients=2, data_seed=0, L=1, widths=[128, 256, 512], m=512, tau=2,
             batches=[1, 4], target=1.5, eps=1e-2, margin=1.5, max_rounds=60, seeds=4)


@pytest.fixture(autouse=True, scope="module")
def predict_once():
    """Every kernel model computed once for the whole file: it depends on the configuration a
    run reports alone, never on the run (which the wrong runs replace)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "predict", functools.cache(kernel.predict))
        yield


def verdict() -> list:
    """The chapter's checks on its runs at :data:`SIZES`, as the notebook computes them."""
    design = claims.design(**SIZES)
    unique = design.experiments()
    runs = design.assign(dict(zip(unique, experiments.run_grid(unique))))
    preds = design.assign({e: kernel.predict(e) for e in unique})
    checks = claims.local_sgd(runs, preds, claims.alternatives(runs), SIZES["eps"])
    print(*checks, sep="\n")
    return checks


def test_local_sgd_verdict_holds_on_correct_runs(patched_engine_results):
    assert all_hold(verdict())


@pytest.mark.parametrize("kind", ["half_step", "one_local_step", "no_averaging", "quarter_width"])
def test_negative_control_05(wrong_verdict, kind):
    wrong_verdict(kind, verdict, every_run=False)


def test_negative_control_05_other_batch(wrong_verdict):
    checks = wrong_verdict("other_batch", verdict, every_run=False)
    # the batch-size checks themselves see it, not only the distance bound
    assert not next(c for c in checks if "nearest other" in c.name).holds


def test_design_refuses_bad_batches_widths_and_target():
    with pytest.raises(ValueError, match="batches"):
        claims.design(**{**SIZES, "batches": [4]})
    with pytest.raises(ValueError, match="widths"):
        claims.design(**{**SIZES, "widths": [128, 512]})
    with pytest.raises(ValueError, match="target"):
        claims.design(**{**SIZES, "target": 2.0})
