"""Negative controls for chapter 12: the rate check of `localsgd.claims.two_layer` holds for Local
GD on a wide two-layer network with a small step and fails when the step is far too large for the
number of local steps."""

from __future__ import annotations

import jax
import numpy as np

from localsgd import diagnostics, experiments, theory
from localsgd.claims import all_hold
from localsgd.claims import two_layer as claims

N = 16


def _checks():
    exp = experiments.Experiment(
        dataset="sphere", n=N, d=16, num_clients=2, arch="two_layer", m=1024, L=1,
        algorithm="local_gd", tau=5, rounds=60, eta=0.2, eval_every=4, seeds=2)
    res = experiments.run(exp, cache=False)
    clients, _, _ = experiments.load_data(exp)
    x = clients.x[clients.mask > 0]
    spec = exp.net_spec()
    params0, _ = experiments.init_params(exp, spec)
    gram = jax.vmap(lambda p: diagnostics.ntk_gram(spec, p, x, outputs="full"))(params0)
    lam = np.linalg.eigvalsh(np.asarray(gram, np.float64))[:, 0]
    measured = claims.fitted_rates(res.iterations, res.metrics["loss"], floor=1e-9)
    return (claims.linearised_rate(measured, res.eta, lam, N)
            + claims.reaches(res.metrics["loss"][:, -1], eps=5e-2))


def test_linearised_rate_holds_on_a_wide_network_with_a_small_step(tmp_results):
    checks = _checks()
    assert all_hold(checks), [(c.name, c.measured) for c in checks if not c.holds]


def test_negative_control_12_two_layer_step_too_large(tmp_results, monkeypatch):
    rule = theory.ntk_step_size
    # 8 times the chapter's step: eta = 1.6 n / lambda_max, below the critical step of one GD step
    # but eta * tau = 8 n / lambda_max, far outside the small-eta-tau regime of the theorem
    monkeypatch.setattr(theory, "ntk_step_size", lambda *a, **k: 8.0 * rule(*a, **k))
    checks = _checks()
    assert not all_hold(checks)
    assert not checks[0].holds
