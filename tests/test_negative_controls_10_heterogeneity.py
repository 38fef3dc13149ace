"""Negative controls for chapter 10: the checks of ``localsgd.claims.heterogeneity`` hold on a
small correct run and fail on a deliberately wrong one, built here (never offered by the API)."""

from __future__ import annotations

import jax
import pytest

from localsgd import data, engine
from localsgd import experiments as ex
from localsgd.claims import all_hold
from localsgd.claims import heterogeneity as ch

TAU, C, EPS = 4, 1.9, 0.01
PARTITIONS = (("iid", 1.0), ("dirichlet", 1.0), ("shards", 1.0))
BASE = ex.Experiment(dataset="sphere", n=32, d=32, d_out=4, num_clients=4, data_seed=2, m=128,
                     L=1, algorithm="local_sgd", batch_size=2, tau=TAU, rounds=200, eval_every=5,
                     seeds=3)


def _runs():
    exps = [BASE.replace(partition=s, alpha=a) for s, a in PARTITIONS]
    shrinking = [ex.run(e.replace(eta=C / TAU), cache=False) for e in exps]
    fixed = [ex.run(e.replace(eta=C), cache=False) for e in exps]
    return shrinking, fixed


@pytest.fixture(scope="module")
def skews():
    _, _, labels = ex.load_data(BASE)
    return [data.label_skew(labels, data.partition(labels, 4, s, alpha=a, seed=2))
            for s, a in PARTITIONS]


def test_heterogeneity_checks_hold_on_a_correct_run(skews):
    checks = ch.heterogeneity(skews, *_runs(), EPS)
    assert all_hold(checks), [c for c in checks if not c.holds]


def test_negative_control_10_heterogeneity_no_averaging(skews, monkeypatch,
                                                         patched_engine_results):
    # The server keeps client 0's model instead of averaging: on skewed clients it never learns
    # the other clients' classes.
    monkeypatch.setattr(engine, "layout_for", lambda config: "vmap")  # server step: _average
    monkeypatch.setattr(engine, "_average", lambda w, trees: jax.tree.map(lambda a: a[0], trees))
    checks = ch.heterogeneity(skews, *_runs(), EPS)
    assert not all_hold(checks)
    assert not checks[0].holds  # seeds that miss eps


def test_heterogeneity_refuses_runs_of_other_steps(skews):
    e = BASE.replace(rounds=5, eval_every=5, seeds=1)
    runs = [ex.run(e.replace(partition=s, eta=C), cache=False) for s in ("iid", "shards")]
    with pytest.raises(ValueError, match="divided by tau"):
        ch.heterogeneity(skews[::2], runs, runs, EPS)
