"""Chapter 03 (the key lemma): the gap between a client's gradient at its local model and at the
averaged model, ``||grad F_k(W_k) - grad F_k(W_bar)|| / ||grad F_k(W_bar)||``, is small in
proportion to ``eta * tau``.

The measurement is the run's ``gap_rel`` metric (recorded at the end of every round, before the
average); the prediction is the first-order term :func:`localsgd.theory.gap_first_order` at the
run's own initialisation, times the run's own ``eta * tau``.
"""

from __future__ import annotations

import jax
import numpy as np

from .. import analysis, experiments, theory
from . import Check

__all__ = ["gap_coefficients", "key_lemma", "measured_gap", "predicted_gap"]


def measured_gap(result) -> float:
    """Median of ``gap_rel`` over seeds, recorded rounds after round 0 (where every local model is
    the average) and clients: a scalar."""
    return float(np.median(np.asarray(result.metrics["gap_rel"])[:, 1:]))


def gap_coefficients(exp) -> np.ndarray:
    """:func:`localsgd.theory.gap_first_order` at each of ``exp``'s initialisations, ``(S, K)``:
    the first-order relative gap per unit of ``eta * tau`` (it depends on the data, the network
    and the seeds, not on the step). Computes from the initialisation only; runs no training."""
    clients, _, _ = experiments.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, _ = experiments.init_params(exp, spec)
    one = jax.jit(lambda p: theory.gap_first_order(spec, p, clients))
    return np.asarray(jax.lax.map(one, params0))


def predicted_gap(result, coefficients=None) -> float:
    """The first-order prediction for ``result``'s run: ``eta * tau * ||H_k (g_k - g)|| / ||g_k||``
    with the step each seed used (``result.eta: (S,)``) and the coefficients of
    :func:`gap_coefficients` (computed for ``result.config`` when not given); median over seeds
    and clients."""
    if coefficients is None:
        coefficients = gap_coefficients(result.config)
    eta_tau = np.asarray(result.eta, float)[:, None] * result.config.tau
    return float(np.median(eta_tau * np.asarray(coefficients)))


def key_lemma(
    eta_tau,
    measured,
    predicted,
    *,
    label: str = "",
    slope_band=(0.8, 1.4),
    ratio_band=(0.5, 2.0),
    small_max: float = 0.1,
) -> list[Check]:
    """The key lemma's checks for one sweep of ``eta * tau`` (one width).

    ``eta_tau, measured, predicted: (C,)``: the sweep's ``eta * tau`` (any fixed unit), the
    measured relative gaps (:func:`measured_gap`) and their first-order predictions
    (:func:`predicted_gap`). Needs ``C >= 3`` values spanning at least two decades. Checks:

    * the log-log slope of the measured gap against ``eta * tau`` lies in ``slope_band`` (the
      first-order term is exactly linear; ``slope_band`` allows for the second-order terms);
    * at the smallest ``eta * tau`` the measured gap over the prediction lies in ``ratio_band``;
    * at the smallest ``eta * tau`` the measured gap is at most ``small_max``.
    """
    x, y, p = (np.asarray(a, float).ravel() for a in (eta_tau, measured, predicted))
    if not x.size == y.size == p.size or x.size < 3:
        raise ValueError(
            f"eta_tau, measured and predicted must hold the same number (>= 3) of values, got "
            f"{x.size}, {y.size}, {p.size}"
        )
    if not np.all(x > 0) or x.max() / x.min() < 99.9:
        raise ValueError(f"eta_tau must be positive and span two decades, got {x.tolist()}")
    fit = analysis.fit(x, y, log="xy")
    i = int(np.argmin(x))
    at = f"{label}η·τ = {x[i]:.3g}"
    return [
        Check.between(f"{label}log-log slope of the relative gap against η·τ", fit.slope,
                      *slope_band, fmt=".2f", basis="tolerance"),
        Check.between(f"{at}: measured / first-order predicted gap", y[i] / p[i], *ratio_band,
                      fmt=".2f", basis="computed"),
        Check.at_most(f"{at}: relative gap", y[i], small_max, fmt=".2f", basis="tolerance"),
    ]
