"""One set of field checks (localsgd.config) for RunConfig, Experiment and NetSpec: every bad
field is a ValueError naming it, at construction, before any work."""

from __future__ import annotations

import pytest

from localsgd import config as cf
from localsgd import model
from localsgd.experiments import Experiment

SMALL = dict(n=12, d=5, m=16, L=1, num_clients=3, rounds=2)


def test_seed_too_large_for_a_prng_seed_is_refused_at_construction():
    with pytest.raises(ValueError, match="seed must be at most"):
        Experiment(**SMALL, seed=2**64)
    with pytest.raises(ValueError, match="seed must be at most"):
        Experiment(**SMALL, seed=2**31 - 2, seeds=3)  # seed + 2 would overflow int32
    Experiment(**SMALL, seed=2**31 - 3, seeds=3)


def test_unhashable_metric_name_is_a_value_error_naming_metrics():
    with pytest.raises(ValueError, match="metrics must be"):
        Experiment(**SMALL, metrics=(["loss"],))
    with pytest.raises(ValueError, match="metrics must be"):
        cf.RunConfig("local_gd", metrics=({"loss": 1},))


def test_unhashable_activation_is_a_value_error_naming_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        Experiment(**SMALL, activation=["relu"])
    with pytest.raises(ValueError, match="arch must be one of"):
        model.NetSpec(arch=["deep"])


@pytest.mark.parametrize("eta", [1e39, 1e-50])
def test_fixed_eta_outside_float32_is_refused_at_construction(eta):
    with pytest.raises(ValueError, match="eta must be representable in float32"):
        Experiment(**SMALL, eta=eta, eta_rule="fixed")


def test_float64_experiment_accepts_a_float64_eta():
    exp = Experiment(**SMALL, eta=1e-50, eta_rule="fixed", dtype="float64")
    assert exp.run_config().dtype == "float64"


@pytest.mark.parametrize("field, value", [("dtype", "float16"), ("dtype", None),
                                          ("prox_mu", -1.0), ("alpha", float("nan")),
                                          ("delta", 1.5), ("num_clients", 1.0), ("n", True)])
def test_experiment_fields_checked_by_the_shared_helpers(field, value):
    with pytest.raises(ValueError, match=field):
        Experiment(**{**SMALL, field: value})


def test_prox_mu_reaches_the_run_config():
    exp = Experiment(**SMALL, algorithm="fedprox", batch_size=2, prox_mu=0.25)
    assert exp.run_config().prox_mu == 0.25
    assert exp.key() != exp.replace(prox_mu=0.5).key()
    assert exp.key() != exp.replace(dtype="float64").key()  # dtype is in the cache key


@pytest.mark.parametrize("helper, args, match", [
    (cf.check_int, ("k", 2.0, 1), "k must be an integer >= 1"),
    (cf.check_int, ("k", True, 0), "k must be an integer"),
    (cf.check_int, ("k", 5, 0, 4), r"k must be at most 4 \(the compiled program indexes it in "
     r"int32\), got 5"),
    (cf.check_float, ("x", "1"), "x must be a positive finite number"),
    (cf.check_float, ("x", 0.0, 0.0, 1.0), r"x must be a finite number in \(0, 1\]"),
    (cf.check_float, ("x", 1e-300, 0.0, 1.0), None),
    (cf.check_choice, ("c", ["a"], ("a",)), "c must be one of"),
])
def test_helpers(helper, args, match):
    if match is None:
        helper(*args)
        with pytest.raises(ValueError, match="representable in float32"):
            helper(*args, dtype="float32")
        return
    with pytest.raises(ValueError, match=match):
        helper(*args)
