"""Chapter 01's checks: the data are separated as constructed, the forward norms of ALS19's
initialisation concentrate at 1 as the concentration bound computes, and the tangent kernel at
initialisation is positive definite, its smallest eigenvalue growing with ``delta`` and falling
with ``n``.

The forward prediction. With ``A, W_l`` i.i.d. ``N(0, 2/m)`` and a unit input, every
``||h_l||^2`` is a mean of ``m`` terms ``2 phi(g)^2`` (``g ~ N(0, q)``, ``q`` the previous layer's
squared norm) with mean 1 and variance ``2^2 E[phi(g)^4] - 1 = 5``: ``E ||h_l||^2 = 1`` exactly,
and the relative fluctuations of the ``l + 1`` layers up to ``l`` add, so ``||h_l||^2`` has
standard deviation about ``sqrt(5 (l + 1) / m)`` and ``||h_l||`` half of it. The worst of the
``n (L + 1)`` norms of one draw then deviates from 1 by about
``eps(m) = 1/2 sqrt(5 (L + 1) / m) sqrt(2 log(2 n (L + 1)))`` (a Gaussian union bound): ALS19's
``sqrt(L log(nL) / m)`` with its constant computed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from .. import analysis
from . import Check

__all__ = ["deviations", "forward_deviation_bound", "forward_stability", "kernel_positivity",
           "separation"]

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def forward_deviation_bound(m, n: int, L: int):
    """``eps(m)``: the predicted worst ``| ||h_il|| - 1 |`` over ``n`` samples and layers
    ``h_0..h_L`` of one draw (see the module docstring). ``m`` a scalar or ``(W,)``."""
    m = np.asarray(m, float)
    return 0.5 * np.sqrt(5.0 * (L + 1) / m) * math.sqrt(2.0 * math.log(2.0 * n * (L + 1)))


def deviations(norms):
    """The forward norms' distance from 1 per draw: ``norms: (W, S, L + 1, n)`` -> ``(worst,
    layer_mean)``, each ``(S, W)``: the max over ``i, l`` of ``| ||h_il|| - 1 |`` and the max
    over ``l`` of ``| mean_i ||h_il|| - 1 |``."""
    norms = np.asarray(norms, float)
    return np.abs(norms - 1).max(axis=(2, 3)).T, np.abs(norms.mean(axis=3) - 1).max(axis=2).T


def forward_stability(
    widths, norms, *, slack: float = 1.0, slope_band=(-0.75, -0.25), se_count: float = 4.0
) -> list[Check]:
    """Forward norms at ALS19's initialisation against the predicted concentration.

    Args:
      widths: ``(W,)``; norms: ``(W, S, L + 1, n)`` the norms ``||h_il||`` of ``S`` draws per width.
      slack: allowance on :func:`forward_deviation_bound` (a tolerance: the bound is a union of
        Gaussian tails, the norms are only nearly Gaussian).
      slope_band: allowed exponent of the worst deviation in ``m`` (theory: ``-1/2``).
      se_count: how many predicted standard errors the layer means may miss 1 by.
    """
    widths = np.asarray(widths, float)
    norms = np.asarray(norms, float)
    _, S, layers, n = norms.shape
    worst = np.median(deviations(norms)[0], axis=0)  # (W,) median over draws
    bound = forward_deviation_bound(widths, n, layers - 1)
    excess = float(np.max(worst / bound))
    fit = analysis.fit(widths, worst, log="xy")
    sq_mean = (norms[-1] ** 2).mean(axis=(0, 2))  # (layers,) E ||h_l||^2 at the widest width
    se = np.sqrt(5.0 * np.arange(1, layers + 1) / (widths[-1] * S))
    return [
        Check.at_most("max over m of the worst |‖h_il‖ − 1| ÷ its predicted ε(m)", excess, slack,
                      basis="computed"),
        Check.between("exponent of the worst deviation in m (theory −1/2)", fit.slope,
                      *slope_band, basis="theory"),
        Check.at_most(f"max over l of |mean ‖h_l‖² − 1| ÷ its std error, m = {int(widths[-1])}",
                      float(np.max(np.abs(sq_mean - 1) / se)), se_count, basis="computed"),
    ]


def separation(constructed, measured, *, tol: float = 1e-5) -> list[Check]:
    """The separation ``data.separation`` measures against the one ``data.sphere`` constructs,
    ``(P,)`` each, to float32 storage precision ``tol``."""
    err = float(np.max(np.abs(np.asarray(measured, float) - np.asarray(constructed, float))))
    return [Check.at_most("max |measured δ − constructed δ| (sphere)", err, tol)]


def kernel_positivity(lam_min, lam_max, deltas, lam_by_delta, ns, lam_by_n) -> list[Check]:
    """``lambda_min(G_0)`` against the eigen-solver's round-off, and its direction in ``delta``
    and ``n``.

    Args:
      lam_min, lam_max: ``lambda_min`` and ``lambda_max`` of every Gram matrix drawn (any shape,
        the same one); deltas, lam_by_delta: ``(D,)`` and the median ``lambda_min`` at each;
      ns, lam_by_n: ``(N,)`` and the median at each.
    """
    cond = float(np.min(np.asarray(lam_min, float) / np.asarray(lam_max, float)))
    rho_d = float(spearmanr(deltas, lam_by_delta).statistic)
    rho_n = float(spearmanr(ns, lam_by_n).statistic)
    return [
        Check.at_least("min λ_min(G₀) / λ_max(G₀) (float32 round-off of the solver: 100 ε)",
                       cond, 100 * FLOAT32_EPS, fmt=".2e", basis="computed"),
        Check.at_least("Spearman(δ, median λ_min): grows with δ (ALS19's δ)", rho_d, 0.99,
                       basis="theory"),
        Check.at_most("Spearman(n, median λ_min): falls with n (ALS19's 1/n²)", rho_n, -0.99,
                      basis="theory"),
    ]
