"""Chapter 05's verdict (localsgd.claims.local_sgd) on Local SGD at one step for every batch
size over ten seeds, and on wrong runs: minibatches that never change (each client always steps
on the same b of its samples), and a step above the critical one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from localsgd import engine, experiments, theory
from localsgd.claims import all_hold
from localsgd.claims.local_gd import lambda_min
from localsgd.claims.local_sgd import local_sgd

BATCHES, EPS = (1, 4), 1e-2


def runs(eta=0.5, eta_rule="ntk"):
    exps = {b: experiments.Experiment(n=16, d=32, num_clients=4, m=128, L=1, algorithm="local_sgd",
                                      batch_size=b, tau=4, eta=eta, eta_rule=eta_rule, rounds=96,
                                      eval_every=3, seeds=10)
            for b in BATCHES}
    return {b: experiments.run(e, cache=False) for b, e in exps.items()}, lambda_min(exps[1])


pytestmark = pytest.mark.usefixtures("patched_engine_results")


def test_local_sgd_verdict_holds_at_one_step_for_every_batch():
    res, lam = runs()
    checks = local_sgd(res, lam, EPS)
    print(*checks, sep="\n")
    assert all_hold(checks), checks


def test_negative_control_05_local_sgd_same_minibatch_every_step(monkeypatch):
    def first_b(scores, b):  # the client's first b samples, whatever the draw
        return jnp.broadcast_to(jnp.arange(b), scores.shape[:-1] + (b,))

    monkeypatch.setattr(engine, "_pick", first_b)
    monkeypatch.setattr(engine, "_minibatch_indices",
                        lambda key, mask, tau, b: first_b(jnp.zeros((tau,) + mask.shape), b))
    res, lam = runs()
    checks = local_sgd(res, lam, EPS)
    print(*checks, sep="\n")
    assert not all_hold(checks)
    assert not next(c for c in checks if c.name.startswith("b = 1: fitted")).holds


def test_negative_control_05_local_sgd_step_above_critical():
    exp = experiments.Experiment(n=16, d=32, num_clients=4, m=128, L=1, seeds=10)
    clients, _, _ = experiments.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], 1)
    params0, _ = experiments.init_params(exp, spec)
    x = jnp.asarray(clients.x[clients.mask > 0])
    lam_max = jax.vmap(lambda p: theory.ntk_max_eigenvalue(spec, p, x))(params0)
    critical = float(jnp.min(theory.critical_step_size(lam_max, x.shape[0])))
    res, lam = runs(eta=3.0 * critical, eta_rule="fixed")
    checks = local_sgd(res, lam, EPS)
    print(*checks, sep="\n")
    assert not all_hold(checks)
