"""Negative controls for chapter 08: the verdict of ``claims.width_threshold`` holds for a small
correct phase diagram and fails when the width does not reach the network (every run trained at
one width, whatever its cell says)."""

from __future__ import annotations

import numpy as np
import pytest

from localsgd import experiments as ex
from localsgd import model
from localsgd.claims import all_hold
from localsgd.claims import width_threshold as wt

WIDTHS = [16, 32, 64, 128]
DELTAS = [0.6, 0.15]
SEEDS = 8
LIMITS = dict(eps=0.05, max_movement=0.3, max_flips=0.15)


def _diagram():
    """Success over ``WIDTHS`` x ``DELTAS`` (n = 16) and the chapter's checks on it."""
    base = ex.Experiment(
        dataset="sphere", n=16, d=32, num_clients=4, arch="deep", L=1, algorithm="local_gd",
        tau=2, eta=1.5, eta_rule="ntk", seeds=SEEDS, rounds=600, eval_every=10,
        metrics=("loss", "dist", "flips"),
    )
    res = ex.run_grid([base.replace(delta=v, m=m) for v in DELTAS for m in WIDTHS], cache=False)
    shape = (len(DELTAS), len(WIDTHS), SEEDS, -1)
    loss, mv, fl = (np.stack([r.metrics[k] for r in res]).reshape(shape)
                    for k in ("loss", "dist_rel", "flips"))
    ok = wt.success(loss, mv, fl, **LIMITS)
    k = ok.sum(-1)
    growth = wt.threshold_growth(1 / np.array(DELTAS), WIDTHS, k, np.full_like(k, SEEDS),
                                 bootstrap=100)
    return wt.checks({"1/δ": growth}, {"1/δ": ok.mean(-1)}, narrow_max=0.25, wide_min=0.75)


pytestmark = pytest.mark.usefixtures("tmp_results")


def test_08_width_threshold_correct_diagram_holds():
    checks = _diagram()
    assert all_hold(checks), [c for c in checks if not c.holds]


def test_negative_control_08_width_threshold_width_does_not_matter(monkeypatch):
    def one_width(self, d=None, d_out=None):
        return model.NetSpec(self.arch, d or self.d, 64, self.L, d_out or self.d_out,
                             self.activation)

    monkeypatch.setattr(ex.Experiment, "net_spec", one_width)
    checks = _diagram()
    assert not all_hold(checks)
    failing = {c.name for c in checks if not c.holds}
    assert any("success rises with m" in name for name in failing), failing
