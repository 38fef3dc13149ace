"""Negative controls for chapter 06: the checks of `localsgd.claims.lazy_training` hold on a small
lazy run and fail when the step is far above the critical one or the widths far too small."""

from __future__ import annotations

import numpy as np
import pytest

from localsgd import experiments, theory
from localsgd.claims import all_hold
from localsgd.claims import lazy_training as claims

COMMON = dict(dataset="sphere", n=16, d=16, num_clients=2, algorithm="local_gd", tau=2,
              rounds=12, eval_every=4, eta=1.0, eta_rule="ntk", seeds=2,
              metrics=("loss", "dist", "ever_flipped"))


def _runs(arch, widths):
    L = 2 if arch == "deep" else 1
    return [experiments.run(experiments.Experiment(arch=arch, m=m, L=L, **COMMON), cache=False)
            for m in widths]


@pytest.fixture(scope="module")
def two_layer_correct(tmp_path_factory):
    """The two-layer runs of a correct set-up, shared by the tests that break the deep network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSGD_RESULTS", str(tmp_path_factory.mktemp("results")))
        return _runs("two_layer", (64, 256, 1024)), (64, 256, 1024)


def _checks(deep_widths, two):
    deep = _runs("deep", deep_widths)
    runs, widths_two = two

    def end(res, k):
        return np.stack([r.metrics[k][:, -1] for r in res])

    abs_deep = np.stack([np.sqrt((r.metrics["dist"][:, -1, :] ** 2).sum(-1)) for r in deep])
    return claims.lazy_training(
        list(deep_widths), abs_deep, end(deep, "dist_rel"), end(deep, "ever_flipped"),
        list(widths_two), end(runs, "dist_rel"), diverged=sum(r.diverged for r in deep + runs))


def _failing(checks):
    return [c.name for c in checks if not c.holds]


def test_lazy_training_holds_on_a_small_correct_run(tmp_results, two_layer_correct):
    checks = _checks((64, 128, 256), two_layer_correct)
    assert all_hold(checks), _failing(checks)


def test_negative_control_06_lazy_training_step_above_critical(tmp_results, monkeypatch):
    rule = theory.ntk_step_size
    # four times the rule's step: eta = 4 n / lambda_max(G0), twice the critical step
    monkeypatch.setattr(theory, "ntk_step_size", lambda *a, **k: 4.0 * rule(*a, **k))
    widths_two = (64, 256, 1024)
    checks = _checks((64, 128, 256), (_runs("two_layer", widths_two), widths_two))
    assert not all_hold(checks)


def test_negative_control_06_lazy_training_width_far_too_small(tmp_results, two_layer_correct):
    checks = _checks((4, 8, 16), two_layer_correct)
    assert not all_hold(checks)
    assert not checks[1].holds  # the deep network's relative movement no longer falls like 1/m
