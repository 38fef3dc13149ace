"""Chapter 04 (Local GD converges linearly): with the theorems' step, which shrinks as
``eta = c n / (lambda_max(G_0) tau)``, the measured rate per iteration is the linearised model's
``-log(1 - eta lambda_min(G_0) / n)^2`` (:func:`localsgd.theory.linear_rate`, from each run's own
initialisation), and the rounds to reach ``eps`` do not change with ``tau``. A network far too
narrow for the theory does not follow the linearised prediction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, experiments, theory
from . import Check

__all__ = ["fitted_rates", "lambda_min", "linearised_iterations", "local_gd", "predicted_rates",
           "rate_ratio", "rounds_to"]


def lambda_min(exp) -> np.ndarray:
    """``lambda_min`` of the NTK Gram (all ``n`` samples) at each of ``exp``'s initialisations,
    the ones its runs start from. Computes from the initialisation only. ``(S,)``."""
    clients, _, _ = experiments.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, _ = experiments.init_params(exp, spec)
    x = jnp.asarray(clients.x[clients.mask > 0])
    return np.asarray(jax.lax.map(jax.jit(lambda p: theory.min_eig_at_init(spec, p, x)), params0))


def fitted_rates(result, start: float = 0.3, floor: float = 1e-9) -> np.ndarray:
    """Per seed, the rate ``r`` of ``F_t ~ exp(-r t)`` per iteration, fitted over the recorded
    points with ``floor < F <= start * F_0`` (after the transient of the fast eigen-directions,
    above float32 round-off); NaN for a seed with fewer than 3 such points. ``(S,)``."""
    loss = np.asarray(result.metrics["loss"], float)
    keep = np.isfinite(loss) & (loss <= start * loss[:, :1]) & (loss > floor)
    return analysis.linear_rates(result.iterations, loss, keep)


def predicted_rates(result, lam_min) -> np.ndarray:
    """Per seed, the linearised model's rate per iteration, ``-log linear_rate(eta, lam_min, n)``,
    with the step each seed used (``result.eta``) and ``lam_min: (S,)``, the smallest eigenvalue
    of that seed's NTK Gram at initialisation (:func:`localsgd.theory.min_eig_at_init`).
    Returns ``(S,)``."""
    return theory.log_rate(result.eta, lam_min, result.config.n)


def linearised_iterations(result, lam_min, eps: float) -> np.ndarray:
    """Per seed, the linearised model's iterations to ``eps`` from that seed's ``F_0``,
    ``log(F_0 / eps)`` over the predicted rate: an upper bound for that model (its slowest
    direction). ``lam_min: (S,)``; returns ``(S,)``."""
    f0 = np.asarray(result.metrics["loss"], float)[:, 0]
    return np.log(f0 / eps) / predicted_rates(result, lam_min)


def _worst(ratios) -> float:
    """The ratio farthest from 1 on a log scale; NaN if any is not a positive number."""
    r = np.asarray(ratios, float)
    if not np.all(np.isfinite(r) & (r > 0)):
        return float("nan")
    return float(r[np.argmax(np.abs(np.log(r)))])


def rate_ratio(result, lam_min) -> float:
    """Measured over predicted rate for the seed farthest from 1 (on a log scale); NaN when a
    seed has no fit."""
    return _worst(fitted_rates(result) / predicted_rates(result, lam_min))


def rounds_to(result, eps: float) -> np.ndarray:
    """Per seed, communication rounds until ``F <= eps`` (interpolated; inf if never). ``(S,)``."""
    loss = np.asarray(result.metrics["loss"], float)
    return analysis.iterations_to(result.iterations, loss, eps) / result.config.tau


def local_gd(
    theorem_runs: dict,
    lam_min,
    eps: float,
    small_run=None,
    small_lam_min=None,
    *,
    rate_band=(0.5, 2.0),
    rounds_spread_max: float = 1.5,
) -> list[Check]:
    """The chapter's checks.

    ``theorem_runs``: ``{tau: Result}`` of Local GD with the theorems' step (``eta`` proportional
    to ``1/tau``), all of one width and the same seeds, whose NTK ``lambda_min`` at
    initialisation is ``lam_min: (S,)``. ``small_run``, ``small_lam_min``: optionally a run at a
    width far too small, with its own ``lambda_min``. Checks, for every ``tau``: the measured
    rate over the linearised prediction within ``rate_band`` for every seed, and every seed
    reaching ``eps`` within ``rate_band[1]`` times the linearised model's rounds
    ``log(F_0 / eps) / (tau * rate)`` (an upper bound for that model, set by its slowest
    direction); across ``tau``: the largest over the smallest median
    rounds to ``eps`` at most ``rounds_spread_max`` (under this step the theory's rounds do not
    fall with ``tau``); for the narrow run, a ratio *outside* ``rate_band``.
    """
    if len(theorem_runs) < 2:
        raise ValueError(f"theorem_runs must hold two or more taus, got {list(theorem_runs)}")
    checks, rounds = [], {}
    for tau, res in sorted(theorem_runs.items()):
        ratio = rate_ratio(res, lam_min)
        checks.append(Check.between(f"τ = {tau}: fitted / linearised rate (worst seed)", ratio,
                                    *rate_band, fmt=".2f", basis="computed"))
        r = rounds_to(res, eps)
        rounds[tau] = float(np.median(r))
        pred = linearised_iterations(res, lam_min, eps) / tau
        checks.append(Check.at_most(f"τ = {tau}: rounds to ε / linearised bound (worst seed)",
                                    float(np.max(r / pred)), rate_band[1], fmt=".2f",
                                    basis="computed"))
    med = np.array(list(rounds.values()))
    spread = float(med.max() / med.min()) if np.all(np.isfinite(med)) else float("inf")
    checks.append(Check.at_most("median rounds to ε: largest / smallest over τ", spread,
                                rounds_spread_max, fmt=".2f", basis="theory"))
    if small_run is not None:
        r = rate_ratio(small_run, small_lam_min)
        band = f"outside [{rate_band[0]:g}, {rate_band[1]:g}]"
        outside = not (rate_band[0] <= r <= rate_band[1])
        name = f"m = {small_run.config.m} (too narrow): fitted / linearised rate (worst seed)"
        checks.append(Check(name, band, r, outside, "computed"))
    return checks
