"""Negative controls for the reproducibility appendix: the checks of
`localsgd.claims.reproducibility` hold for two runs of one configuration and its cache hit, and
fail when a run is not a function of its configuration, when the cache returns another
configuration's entry, and when an installed package differs from its pin."""

from __future__ import annotations

import numpy as np

from localsgd import experiments
from localsgd.claims import all_hold
from localsgd.claims import reproducibility as claims
from localsgd_book import environment

EXP = experiments.Experiment(dataset="sphere", n=8, d=4, d_out=1, num_clients=2, m=16, L=1,
                             algorithm="local_sgd", batch_size=2, rounds=4, tau=2, eta=0.5,
                             metrics=("loss",), seeds=1)


def _checks(first, second, hit, n_mismatch=0):
    other = EXP.replace(seed=EXP.seed + 1).key()
    return claims.reproducibility(first, second, hit, True, EXP.key(), other, 3, n_mismatch)


def test_reproducibility_holds_for_two_runs_and_a_cache_hit(tmp_results):
    first = claims.arrays(experiments.run(EXP, cache=False))
    second = claims.arrays(experiments.run(EXP, cache=False))
    experiments.run(EXP, cache=True)
    hit = claims.arrays(experiments.run(EXP, cache=True))
    checks = _checks(first, second, hit)
    assert all_hold(checks), [(c.name, c.measured) for c in checks if not c.holds]


def test_negative_control_13_reproducibility_run_not_a_function_of_its_config(tmp_results):
    # the "second run" draws another initialisation: what a run reading global state would do
    first = claims.arrays(experiments.run(EXP, cache=False))
    other = claims.arrays(experiments.run(EXP.replace(seed=EXP.seed + 7), cache=False))
    checks = _checks(first, other, first)
    assert not all_hold(checks)
    assert not checks[0].holds and checks[0].measured > 0


def test_negative_control_13_reproducibility_stale_cache_and_changed_dtype():
    first = {"metrics/loss": np.array([1.0, 0.5], np.float32), "rounds": np.array([1, 2])}
    stale = {"metrics/loss": np.array([1.0, 0.5], np.float64), "rounds": np.array([1, 2])}
    assert claims.max_diff(first, stale) == 0.0  # equal values, yet not the stored arrays
    checks = _checks(first, first, stale)
    assert not all_hold(checks) and not checks[1].holds
    missing = {"metrics/loss": first["metrics/loss"]}
    assert claims.max_diff(first, missing) == float("inf")


def test_negative_control_13_reproducibility_environment_off_its_pins(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("numpy==0.0.1  # not the installed one\nno-such-package-xyz==1.0\n")
    pinned = environment.pins(req)
    assert pinned == {"numpy": "0.0.1", "no-such-package-xyz": "1.0"}
    mismatches = environment.mismatches(pinned)
    assert set(mismatches) == {"numpy", "no-such-package-xyz"}
    assert mismatches["no-such-package-xyz"][0] is None
    checks = _checks({}, {}, {}, n_mismatch=len(mismatches))
    assert not all_hold(checks) and not checks[3].holds
    assert "✗" in environment.versions_table(pinned)
