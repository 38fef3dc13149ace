"""Negative controls for chapter 12: the training part of its verdict (Local GD and Local SGD over
a width axis against the kernel models of their own runs, the linearised rate, the target loss and
the movement; :func:`localsgd.claims.two_layer.training_checks`) holds on correct runs and comes
out "does not hold", without crashing, on runs that silently do something else than they report
(``WRONG_RUNS`` of tests/conftest.py). The runs are built and compared by the notebook's own
functions, at small sizes; the chapter's Gram checks use no training run, so a wrong run cannot
change them."""

from __future__ import annotations

from localsgd import experiments
from localsgd.claims import all_hold
from localsgd.claims import two_layer as claims

WIDTHS = (64, 256, 1024)
PARAMS = dict(n=16, d=16, num_clients=2, tau=4, rounds=80, eta=0.2, batch_size=4, eval_every=4,
              seeds=2)
EPS = 1e-2  # reached by the kernel model in about 200 of the 320 iterations


def _checks():
    runs = {alg: dict(zip(WIDTHS, experiments.run_grid(
        [claims.training_run(m, alg, **PARAMS) for m in WIDTHS], desc=alg)))
        for alg in ("local_gd", "local_sgd")}
    lam_min, _, _ = claims.gram_at_init(claims.training_run(max(WIDTHS), **PARAMS))
    cmp = claims.compare(runs["local_gd"], runs["local_sgd"], EPS)
    return claims.training_checks(cmp, runs["local_gd"], runs["local_sgd"], lam_min, EPS)


def _failing(checks):
    return [c.name for c in checks if not c.holds]


def test_training_verdict_holds_on_correct_runs(patched_engine_results):
    checks = _checks()
    assert all_hold(checks), _failing(checks)


def _wrong(silently_wrong, kind):
    applied = silently_wrong(kind)
    checks = _checks()
    assert any(applied)
    assert not all_hold(checks)
    return _failing(checks)


def test_negative_control_12_half_step(silently_wrong):
    failing = _wrong(silently_wrong, "half_step")
    assert any(r"\(\sqrt{m}\,D\)" in name for name in failing), failing


def test_negative_control_12_one_local_step(silently_wrong):
    failing = _wrong(silently_wrong, "one_local_step")
    assert any(r"\(\sqrt{m}\,D\)" in name for name in failing), failing


def test_negative_control_12_no_averaging(silently_wrong):
    failing = _wrong(silently_wrong, "no_averaging")
    assert any(r"\(\sqrt{m}\,D\)" in name for name in failing), failing


def test_negative_control_12_quarter_width(silently_wrong):
    failing = _wrong(silently_wrong, "quarter_width")
    assert any(r"\(\sqrt{m}\,D\)" in name for name in failing), failing


def test_negative_control_12_other_batch(silently_wrong):
    failing = _wrong(silently_wrong, "other_batch")
    assert any(name.startswith("Local SGD") for name in failing), failing
