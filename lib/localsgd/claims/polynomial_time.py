"""Chapter 07's checks: iterations to reach a target loss, predicted run by run from each run's own
initialisation, and their growth in ``n``, ``1/delta`` and ``L`` beside the ALS19 bound.

The prediction for one run is :func:`localsgd.theory.iterations_to_eps` with the run's initial
loss ``F0``, its step ``eta`` and the smallest eigenvalue of its NTK Gram matrix at
initialisation (:func:`init_min_eigenvalues`). The exponents of ALS19's gradient-descent bound,
``T = O(n^6 L^2 / delta^2 log(1/eps))`` (their Theorem 1), are upper bounds on the measured ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, theory
from . import Check

__all__ = [
    "ALS19_EXPONENTS", "checks", "eps_linearity", "exponents", "init_min_eigenvalues", "measured",
    "predicted",
]

# ALS19, Theorem 1: T = O(n^6 L^2 / delta^2 * log(1/eps)) for gradient descent.
ALS19_EXPONENTS = {"n": 6.0, "1/δ": 2.0, "L": 2.0}


def init_min_eigenvalues(exp, with_prediction: bool = False):
    """``lambda_min(G_0)`` of every seed of ``exp`` (an :class:`~localsgd.experiments.Experiment`),
    from the same initialisations the run starts from (:func:`localsgd.experiments.init_params`):
    ``(S,)``.

    With ``with_prediction`` also ``F0: (S,)`` and ``eta: (S,)`` (the step ``exp.eta_rule``
    gives), known before the run: ``(lam_min, F0, eta)``, to size a run's horizon."""
    from .. import experiments as ex
    from .. import model

    clients, _, _ = ex.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, _ = ex.init_params(exp, spec)
    x = jnp.asarray(clients.x[clients.mask > 0])
    lam = np.asarray(jax.vmap(lambda p: theory.min_eig_at_init(spec, p, x))(params0))
    if not with_prediction:
        return lam
    y = jnp.asarray(clients.y[clients.mask > 0])
    F0 = jax.vmap(lambda p: jnp.mean(0.5 * jnp.sum((model.apply(spec, p, x) - y) ** 2, -1)))
    if exp.eta_rule == "ntk":
        eta = jax.vmap(lambda p: theory.ntk_step_size(spec, p, x, exp.eta))(params0)
    else:
        eta = jnp.full((exp.seeds,), exp.eta)
    return lam, np.asarray(F0(params0)), np.asarray(eta)


def predicted(result, lam_min, eps) -> np.ndarray:
    """Predicted iterations to each ``eps: (E,)`` for every seed of ``result``: ``(S, E)``."""
    F0 = np.asarray(result.metrics["loss"])[:, 0]
    eps = np.asarray(eps, float)
    return theory.iterations_to_eps(
        F0[:, None], eps[None, :], np.asarray(result.eta)[:, None],
        np.asarray(lam_min)[:, None], result.config.n,
    )


def measured(result, eps) -> np.ndarray:
    """Measured iterations to each ``eps: (E,)`` for every seed: ``(S, E)`` (inf: not reached)."""
    loss = np.asarray(result.metrics["loss"])
    return np.stack([analysis.iterations_to(result.iterations, loss, e) for e in eps], axis=-1)


def exponents(x, T_measured, T_predicted, bootstrap: int = 1000, seed: int = 0):
    """Exponents of ``T ~ x^p`` for one sweep: ``x: (P,)``, ``T_*: (P, S)``. Returns
    ``((p, low, high), p_pred)``: the measured exponent with its bootstrap interval over seeds
    (:func:`localsgd.analysis.bootstrap_loglog`) and the exponent of the predicted counts; ``nan``
    where too few counts are finite and positive to fit (a run that never got there)."""
    x = np.asarray(x, float)
    T_predicted = np.where(np.asarray(T_predicted) > 0, T_predicted, np.nan)
    try:
        fit = analysis.bootstrap_loglog(x, T_measured, bootstrap=bootstrap, seed=seed)
    except ValueError:
        fit = (np.nan, np.nan, np.nan)
    X = np.repeat(x[:, None], np.shape(T_predicted)[1], axis=1)
    try:
        pred = analysis.fit(X, T_predicted, log="xy").slope
    except ValueError:
        pred = np.nan
    return fit, pred


def eps_linearity(T, eps) -> np.ndarray:
    """R² of the line ``T = a + b log(1/eps)`` for every run: ``T: (R, E)`` -> ``(R,)``; a run
    that missed some ``eps`` gets ``nan``."""
    T = np.asarray(T, float)
    x = np.log(1.0 / np.asarray(eps, float))
    out = np.full(T.shape[0], np.nan)
    for r, row in enumerate(T):
        if np.all(np.isfinite(row)):
            out[r] = analysis.fit(x, row).r2
    return out


def checks(
    ratio,
    r2_eps,
    exponents: dict,
    exponents_pred: dict,
    movement,
    flips,
    *,
    factor: float,
    slack: float,
    r2_min: float,
    exponent_tol: float,
    max_movement: float,
    max_flips: float,
) -> list[Check]:
    """The verdict of chapter 07.

    ``ratio: (R,)`` measured / predicted iterations of every run and target (inf when a run
    never got there): at most ``factor``, and at least ``1 / slack`` (the prediction is an upper
    bound for the linearised model, so ratios below 1 are its slack); ``r2_eps: (R,)`` from
    :func:`eps_linearity`; ``exponents[name] = (p, low, high)`` fitted on measured counts with a
    bootstrap interval, which must not lie above the ALS19 bound's exponent (its lower end at
    most the bound); ``exponents_pred[name]`` the exponent of the predicted counts, within
    ``exponent_tol`` of the measured one; ``movement``, ``flips: (R,)`` each run's largest
    relative distance from initialisation and flip fraction.
    """
    ratio = np.asarray(ratio, float)
    out = [
        Check(
            "runs that reached ε", predicted=f"all {ratio.size}",
            measured=int(np.isfinite(ratio).sum()), holds=bool(np.all(np.isfinite(ratio))),
            basis="computed",
        ),
        Check.at_most("largest measured / predicted iterations", np.max(ratio), factor, ".3g"),
        Check.at_least("smallest measured / predicted iterations", np.min(ratio), 1 / slack, ".3g"),
        Check.at_least("smallest R² of T against log(1/ε)", np.nanmin(np.where(
            np.isfinite(r2_eps), r2_eps, -np.inf)), r2_min, ".3g"),
        Check.at_most("largest relative movement ‖W − W₀‖/‖W₀‖", np.max(movement), max_movement,
                      ".3g"),
        Check.at_most("largest fraction of flipped activations", np.max(flips), max_flips, ".3g"),
    ]
    for name, (p, low, high) in exponents.items():
        bound, pred = ALS19_EXPONENTS[name], exponents_pred[name]
        out.append(Check(
            f"exponent in {name}: lower end of the 95% interval (fit {p:.2f}, upper {high:.2f})",
            predicted=f"≤ {bound:g} (ALS19 bound)", measured=low,
            holds=bool(low <= bound), basis="theory",
        ))
        out.append(Check.at_most(
            f"exponent in {name}: |measured − predicted from init| (predicted {pred:.2f})",
            abs(p - pred), exponent_tol, ".3g",
        ))
    return out
