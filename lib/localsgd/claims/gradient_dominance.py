"""Chapter 02's checks: the gradient-dominance constant against ALS19's ``delta m / (d n^2)``, the
ratio ``||grad F||^2 / F`` along training against the Gram matrix at initialisation, and the
semi-smoothness of the steps Local GD takes.

The identity behind them: for the mean loss, ``||grad F||^2 / F = (2/n) r^T G r / r^T r``, which
lies in ``[2 lambda_min(G) / n, 2 lambda_max(G) / n]``; ALS19's lower bound is a bound on
``lambda_min(G)`` of the shape ``delta m / (d n^2)`` (``d`` the output dimension).
"""

from __future__ import annotations

import numpy as np

from .. import analysis
from . import Check

__all__ = ["kernel_scaling", "ratio_along_training", "semi_smoothness"]


def kernel_scaling(
    deltas, lam_delta, lam_inf_delta, ns, lam_n, lam_inf_n, *,
    als_allowance: float = 0.25, exponent_allowance: float = 0.5,
    upper: float = 1.1, lower: float = 0.25,
) -> list[Check]:
    """The constant of gradient dominance, ``lambda_min(G_0) / m``, against the separation and the
    sample count, beside ALS19's shape ``delta / n^2`` and the infinite-width kernel's values.

    Args:
      deltas: ``(D,)`` measured separations; ``ns``: ``(N,)`` sample counts.
      lam_delta, lam_n: ``lambda_min(G_0) / m`` of every initialisation, ``(S, D)`` and ``(S, N)``.
      lam_inf_delta, lam_inf_n: ``lambda_min`` of the infinite-width limit of ``G_0 / m`` on the
        same data (:func:`localsgd.theory.gram_infinity_deep`), ``(D,)`` and ``(N,)``.
      als_allowance: distance allowed between the limit kernel's exponent in ``delta`` and ALS19's
        ``1``; exponent_allowance: between the finite-width exponents and the limit's.
      upper, lower: band of ``lambda_min(G_0) / lambda_min(G_inf)``: at most ``upper`` for every
        seed (``lambda_min`` is concave, so fluctuations pull it below the limit), at least
        ``lower`` in the median.
    """
    lam_delta, lam_n = np.asarray(lam_delta, float), np.asarray(lam_n, float)
    inf_delta, inf_n = np.asarray(lam_inf_delta, float), np.asarray(lam_inf_n, float)
    lim_d, lim_n = analysis.exponent(deltas, inf_delta), analysis.exponent(ns, inf_n)
    fin_d = analysis.exponent(deltas, np.median(lam_delta, axis=0))
    fin_n = analysis.exponent(ns, np.median(lam_n, axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.concatenate([(lam_delta / inf_delta).ravel(), (lam_n / inf_n).ravel()])
    ratio = np.where(np.isfinite(ratio), ratio, np.nan)
    return [
        Check.between("exponent of λ_min(G_∞) in δ (limit kernel of these data) vs ALS19's δ¹",
                      lim_d, 1 - als_allowance, 1 + als_allowance, fmt=".3g", basis="theory"),
        Check.at_least("exponent of λ_min(G_∞) in n: no worse than ALS19's n⁻²", lim_n, -2.0,
                       basis="theory"),
        Check.between("exponent of the median λ_min(G₀)/m in δ, against the limit's", fin_d,
                      lim_d - exponent_allowance, lim_d + exponent_allowance, fmt=".3g",
                      basis="computed"),
        Check.between("exponent of the median λ_min(G₀)/m in n, against the limit's", fin_n,
                      lim_n - exponent_allowance, lim_n + exponent_allowance, fmt=".3g",
                      basis="computed"),
        Check.at_most("max λ_min(G₀)/m ÷ λ_min(G_∞) over δ, n and seeds",
                      float(np.max(ratio)) if np.all(np.isfinite(ratio)) else float("nan"), upper,
                      basis="computed"),
        Check.at_least("median λ_min(G₀)/m ÷ λ_min(G_∞)", float(np.median(ratio)), lower),
    ]


def ratio_along_training(
    widths, ratio_min, ratio_med, ratio_max, lam_min0, lam_max0, n: int, *,
    slope_tol: float = 0.2, lower_frac: float = 0.5, upper_frac: float = 1.25, diverged: int = 0,
) -> list[Check]:
    """``||grad F||^2 / F`` along Local GD against ``2 lambda(G_0) / n`` of each initialisation.

    Args:
      widths: ``(W,)``; ratio_min, ratio_med, ratio_max: the ratio's minimum, median and maximum
        over each run, ``(S, W)``; lam_min0, lam_max0: ``lambda_min(G_0)``, ``lambda_max(G_0)``
        of the same initialisations, ``(S, W)``; n: samples; diverged: runs that diverged.
    """
    ratio_med = np.asarray(ratio_med, float)
    slope = analysis.exponent(widths, np.median(ratio_med, axis=0))
    lower = float(np.min(np.asarray(ratio_min) / (2 * np.asarray(lam_min0) / n)))
    upper = float(np.max(np.asarray(ratio_max) / (2 * np.asarray(lam_max0) / n)))
    return [
        Check.between("exponent of the median ‖∇F‖²/F over training in m (ALS19: 1)", slope,
                      1 - slope_tol, 1 + slope_tol, basis="theory"),
        Check.at_least("min over training of ‖∇F‖²/F ÷ (2 λ_min(G₀)/n), worst seed and m", lower,
                       lower_frac, basis="computed"),
        Check.at_most("max over training of ‖∇F‖²/F ÷ (2 λ_max(G₀)/n), worst seed and m", upper,
                      upper_frac, basis="computed"),
        Check("runs that diverged", "none", diverged, diverged == 0, "tolerance"),
    ]


def semi_smoothness(residual, first_order, dot, bound: float) -> list[Check]:
    """Taylor residuals of the steps Local GD took: ``residual = F(W + W') - F(W) - <grad F, W'>``,
    ``first_order = |<grad F(W), W'>|`` and ``dot = <grad F(W), W'>``, all ``(R,)`` over the
    steps; ``bound`` the linearised model's ``tau eta / 2`` for ``|residual| / first_order``."""
    residual, first_order, dot = (np.asarray(a, float) for a in (residual, first_order, dot))
    worst = float(np.max(np.abs(residual) / first_order))
    descent = float(np.mean((dot < 0) & (residual < first_order)))
    return [
        Check.at_most("max |residual| / |⟨∇F, W′⟩| over the actual steps (bound τη/2)", worst,
                      bound, basis="computed"),
        Check.at_least("fraction of the actual steps that decrease F", descent, 1.0),
    ]
