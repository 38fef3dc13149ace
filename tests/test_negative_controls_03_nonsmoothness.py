"""Chapter 03's verdict (localsgd.claims.key_lemma) on a correct sweep of eta * tau, and on a
sweep whose clients never average: the gap then grows with the rounds, not with eta * tau."""

from __future__ import annotations

import dataclasses

import pytest

from localsgd import experiments
from localsgd.claims import all_hold
from localsgd.claims.key_lemma import key_lemma, measured_gap, predicted_gap

ETA_TAU = (0.003, 0.03, 0.3)  # in units of n / lambda_max(G_0): eta_rule="ntk" with eta = c / tau
TAU, ROUNDS = 4, 12


def sweep(width=128):
    return [
        experiments.Experiment(
            n=32, d=16, num_clients=4, m=width, L=1, algorithm="local_gd", tau=TAU, eta=c / TAU,
            rounds=ROUNDS, eval_every=3, metrics=("gap",), seeds=1)
        for c in ETA_TAU
    ]


def never_average(exp):
    """The same clients and steps, but the server's average is never sent back: every client
    runs all its rounds * tau steps from the initialisation on its own data (one long round, at
    whose end the gap to the clients' average is recorded)."""
    return exp.replace(tau=exp.tau * exp.rounds, rounds=1, eval_every=1)


def verdict(exps):
    results = [experiments.run(e, cache=False) for e in exps]
    # the prediction for the run as it was meant to be (same initialisation and step)
    meant = [dataclasses.replace(r, config=e) for r, e in zip(results, sweep())]
    return key_lemma(ETA_TAU, [measured_gap(r) for r in results], [predicted_gap(r) for r in meant])


pytestmark = pytest.mark.usefixtures("tmp_results")


def test_key_lemma_holds_for_local_gd():
    checks = verdict(sweep())
    print(*checks, sep="\n")
    assert all_hold(checks), checks


def test_negative_control_03_nonsmoothness_no_averaging():
    checks = verdict([never_average(e) for e in sweep()])
    print(*checks, sep="\n")
    assert not all_hold(checks)
    ratio = next(c for c in checks if "predicted" in c.name)
    assert not ratio.holds and ratio.measured > 2, ratio


def test_key_lemma_refuses_a_sweep_shorter_than_two_decades():
    with pytest.raises(ValueError, match="eta_tau"):
        key_lemma([0.01, 0.03, 0.09], [0.001, 0.003, 0.009], [0.001, 0.003, 0.009])
