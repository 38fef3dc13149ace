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
from . import Check, Tolerance

__all__ = ["FLOAT32_EPS", "TOLERANCES", "deviations", "forward_deviation_bound",
           "forward_stability", "kernel_positivity", "separation"]

FLOAT32_EPS = float(np.finfo(np.float32).eps)
_FIRST = "set with the chapter's first version and not moved since"

TOLERANCES = {
    "separation": Tolerance(
        1e-5, "prior",
        r"largest $\lvert$measured $-$ constructed $\delta\rvert$: the inputs are stored in "
        r"float32 (relative precision $1.2 \times 10^{-7}$), so distances of order 1 agree to "
        rf"about $10^{{-7}}$; a hundredfold margin; {_FIRST}"),
    "forward_slack": Tolerance(
        1.0, "theory",
        r"the worst $\lvert \Vert h_{i,l}\Vert - 1\rvert$ over a draw, in units of the computed "
        r"$\varepsilon(m)$: a Gaussian union bound over the $n(L+1)$ norms of one draw, so an "
        r"upper bound, with no allowance"),
    "forward_exponent": Tolerance(
        (-0.75, -0.25), "prior",
        r"exponent in $m$ of that worst deviation: ALS19's forward-stability lemma gives $-1/2$ "
        rf"(deviations of order $\sqrt{{L \log(nL)/m}}$), within a quarter; {_FIRST}"),
    "layer_mean_std_errors": Tolerance(
        4.0, "prior",
        r"how many predicted standard errors $\sqrt{5(l+1)/(mS)}$ each layer's mean of "
        r"$\Vert h_{i,l}\Vert^2$ may miss its expectation 1 by (a two-sided Gaussian tail of "
        rf"$6 \times 10^{{-5}}$ per layer); {_FIRST}"),
    "conditioning": Tolerance(
        100 * FLOAT32_EPS, "prior",
        r"smallest $\lambda_{\min}(G_0)/\lambda_{\max}(G_0)$ that tells a positive definite "
        r"Gram matrix from the float32 eigen-solver's round-off (100 machine epsilons, "
        rf"$\approx 1.2 \times 10^{{-5}}$); {_FIRST}"),
    "monotone": Tolerance(
        0.99, "prior",
        r"Spearman correlation of the median $\lambda_{\min}(G_0)$ with $\delta$ (and minus "
        r"that with $n$): above 0.99 means strictly monotone over the sweep, the direction of "
        rf"ALS19's $\delta/n^2$; {_FIRST}"),
}


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


def forward_stability(widths, norms) -> list[Check]:
    """Forward norms at ALS19's initialisation against the predicted concentration, within
    :data:`TOLERANCES` (``forward_slack``, ``forward_exponent``, ``layer_mean_std_errors``).

    Args:
      widths: ``(W,)``; norms: ``(W, S, L + 1, n)`` the norms ``||h_il||`` of ``S`` draws per width.
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
    slack, band, se_count = (TOLERANCES[k] for k in ("forward_slack", "forward_exponent",
                                                     "layer_mean_std_errors"))
    dev = r"\(\max_{i,l} |\|h_{i,l}\| - 1|\)"
    return [
        Check.at_most(rf"largest over \(m\) of {dev} \(\div\) its computed "
                      r"\(\varepsilon(m)\) (median over draws)", excess, slack.value, fmt=".3g",
                      basis=slack.basis),
        Check.between(rf"exponent in \(m\) of {dev} (ALS19: \(-1/2\))", fit.slope,
                      *band.value, fmt=".3g", basis=band.basis),
        Check.at_most(r"largest over \(l\) of \(|\overline{\|h_l\|^2} - 1|\) in predicted "
                      rf"standard errors at \(m = {int(widths[-1])}\)",
                      float(np.max(np.abs(sq_mean - 1) / se)), se_count.value, fmt=".3g",
                      basis=se_count.basis),
    ]


def separation(constructed, measured) -> list[Check]:
    """The separation ``data.separation`` measures against the one ``data.sphere`` constructs,
    ``(P,)`` each, to float32 storage precision (``TOLERANCES["separation"]``)."""
    err = float(np.max(np.abs(np.asarray(measured, float) - np.asarray(constructed, float))))
    tol = TOLERANCES["separation"]
    return [Check.at_most(r"largest \(|\delta_{\mathrm{measured}} - "
                          r"\delta_{\mathrm{constructed}}|\) (sphere)", err, tol.value,
                          fmt=".1e", basis=tol.basis)]


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
    cond_tol, mono = TOLERANCES["conditioning"], TOLERANCES["monotone"]
    return [
        Check.at_least(r"smallest \(\lambda_{\min}(G_0) / \lambda_{\max}(G_0)\) (float32 "
                       r"round-off of the solver: \(100\,\epsilon\))", cond, cond_tol.value,
                       fmt=".2e", basis=cond_tol.basis),
        Check.at_least(r"Spearman correlation of \(\delta\) and the median "
                       r"\(\lambda_{\min}(G_0)\): grows with \(\delta\) (ALS19's "
                       r"\(\delta\))", rho_d, mono.value, fmt=".3g", basis=mono.basis),
        Check.at_most(r"Spearman correlation of \(n\) and the median \(\lambda_{\min}(G_0)\): "
                      r"falls with \(n\) (ALS19's \(1/n^2\))", rho_n, -mono.value, fmt=".3g",
                      basis=mono.basis),
    ]
