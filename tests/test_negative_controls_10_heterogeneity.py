"""Chapter 10's verdict (localsgd.claims.heterogeneity) on correct runs, built as the notebook
builds them (:func:`localsgd.claims.heterogeneity.plan` from one base configuration, the kernel
models of the runs' reported configurations, the same checks), and with every run silently wrong
while reporting the requested configuration. Each wrong kind must make the verdict fail, not
crash."""

from __future__ import annotations

import numpy as np
import pytest

from localsgd import experiments, kernel
from localsgd.claims import all_hold
from localsgd.claims import heterogeneity as ch

BASE = experiments.Experiment(dataset="sphere", n=16, d=16, d_out=4, num_clients=4, data_seed=2,
                              m=64, L=1, algorithm="local_sgd", batch_size=2, tau=4, rounds=200,
                              eval_every=10, seeds=3)
ALPHAS = [0.5]
WIDTHS = [32, 64, 128]
OTHERS = []
C, PROX_MU, EPS = 1.9, 0.1, 0.01
PARTS = ch.partitions(ALPHAS)
PLAN = ch.plan(BASE, PARTS, WIDTHS, C, OTHERS, PROX_MU)


@pytest.fixture(scope="module")
def models():
    """The kernel models of the planned runs, the infinite-width ones of the widest width and the
    partitions' label skews: all from the requested configurations, which a wrong run reports
    unchanged."""
    # kernel.predict of each run, through predict_many: one kernel per width for every partition
    preds = {"width": {}}
    for m in WIDTHS:
        keys = [(m, p) for p in PARTS]
        preds["width"].update(zip(keys, kernel.predict_many([PLAN["width"][k] for k in keys])))
    for arm in OTHERS:
        preds[arm] = dict(zip(PARTS, kernel.predict_many([PLAN[arm][p] for p in PARTS])))
    infinite = {p: kernel.predict(PLAN["width"][(max(WIDTHS), p)], "infinite") for p in PARTS}
    return preds, infinite, ch.label_skews([PLAN["fixed"][p] for p in PARTS])


def _checks(models):
    """The notebook's verdict checks over freshly run experiments of :data:`PLAN`."""
    preds, infinite, skew = models
    runs = {arm: dict(zip(exps, experiments.run_grid(list(exps.values()), desc=arm)))
            for arm, exps in PLAN.items()}
    axis = ch.pooled_width_axis(runs["width"], preds["width"], EPS, bootstrap=200)
    sk = ch.skew_axis(skew, runs["width"], preds["width"], infinite, bootstrap=200)
    others_d = {a: (BASE.m, np.concatenate([kernel.distance(runs[a][p], preds[a][p], EPS)
                                            for p in PARTS])) for a in OTHERS}
    widest = [runs["width"][(int(axis.widest), p)] for p in PARTS]
    return ch.heterogeneity(axis, sk, widest, EPS, others_d)


def test_heterogeneity_holds_on_correct_runs(models, tmp_results):
    checks = _checks(models)
    assert all_hold(checks), [(c.name, c.measured) for c in checks if not c.holds]


def test_negative_control_10_half_step(wrong_verdict, models):
    wrong_verdict("half_step", lambda: _checks(models))


def test_negative_control_10_no_averaging(wrong_verdict, models):
    wrong_verdict("no_averaging", lambda: _checks(models))


def test_negative_control_10_one_local_step(wrong_verdict, models):
    wrong_verdict("one_local_step", lambda: _checks(models))
