"""Negative controls for chapter 06: the checks of `localsgd.claims.lazy_training` hold on a small
lazy run and fail when the step is far above the critical one or the widths far too small."""

from __future__ import annotations

import numpy as np

from localsgd import experiments, theory
from localsgd.claims import all_hold
from localsgd.claims import lazy_training as claims

COMMON = dict(dataset="sphere", n=16, d=16, num_clients=2, algorithm="local_gd", tau=2,
              rounds=12, eval_every=4, eta=1.0, eta_rule="ntk", seeds=2,
              metrics=("loss", "dist", "ever_flipped"))


def _checks(widths=(64, 128, 256), widths_two=(64, 256, 1024)):
    Exp = experiments.Experiment
    deep = [experiments.run(Exp(arch="deep", m=m, L=2, **COMMON), cache=False) for m in widths]
    two = [experiments.run(Exp(arch="two_layer", m=m, L=1, **COMMON), cache=False)
           for m in widths_two]
    end = lambda res, k: np.stack([r.metrics[k][:, -1] for r in res])  # noqa: E731
    abs_deep = np.stack([np.sqrt((r.metrics["dist"][:, -1, :] ** 2).sum(-1)) for r in deep])
    return claims.lazy_training(
        list(widths), abs_deep, end(deep, "dist_rel"), end(deep, "ever_flipped"), list(widths_two),
        end(two, "dist_rel"), diverged=sum(r.diverged for r in deep + two))


def _failing(checks):
    return [c.name for c in checks if not c.holds]


def test_lazy_training_holds_on_a_small_correct_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    checks = _checks()
    assert all_hold(checks), _failing(checks)


def test_negative_control_06_lazy_training_step_above_critical(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    rule = theory.ntk_step_size
    # four times the rule's step: eta = 4 n / lambda_max(G0), twice the critical step
    monkeypatch.setattr(theory, "ntk_step_size", lambda *a, **k: 4.0 * rule(*a, **k))
    assert not all_hold(_checks())


def test_negative_control_06_lazy_training_width_far_too_small(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    checks = _checks(widths=(4, 8, 16), widths_two=(4, 8, 16))
    assert not all_hold(checks)
