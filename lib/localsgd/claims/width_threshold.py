"""Chapter 08's checks: how wide is wide enough.

A run *succeeds* when it reaches the target loss within its budget while staying lazy: its
relative distance from initialisation and its fraction of flipped activations stay below stated
thresholds over the whole run (:func:`success`). Over a grid of widths ``m`` (columns) and a
second variable (rows: ``n`` or ``1/delta``), the success fraction is fitted per row by a
logistic curve in ``log m`` (:func:`fit_threshold`); the width where half the runs succeed is
the empirical threshold ``m*``. Its growth with the row variable is the slope of ``log m*``
against the log of that variable, with a bootstrap interval (:func:`threshold_growth`).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize

from .. import analysis
from . import Check

__all__ = ["checks", "fit_threshold", "is_lazy", "success", "threshold_growth"]


def is_lazy(movement, flips, max_movement: float, max_flips: float) -> np.ndarray:
    """Whether runs stay lazy: ``movement, flips: (..., E)`` recorded along each run (relative
    distance from initialisation, flip fraction) -> ``(...)`` booleans."""
    return (np.max(movement, axis=-1) <= max_movement) & (np.max(flips, axis=-1) <= max_flips)


def success(loss, movement, flips, *, eps: float, max_movement: float, max_flips: float):
    """Reached ``eps`` within the recorded budget while lazy: ``(..., E)`` arrays -> ``(...)``."""
    reached = np.min(loss, axis=-1) <= eps
    return reached & is_lazy(movement, flips, max_movement, max_flips)


def _negloglik(theta, logm, k, t):
    centre, slope = theta
    z = slope * (logm - centre)
    # log sigmoid(z) and log(1 - sigmoid(z)), stably
    return np.sum(t * np.logaddexp(0.0, -z) + (t - k) * z)


def fit_threshold(widths, successes, trials) -> tuple[float, float]:
    """Logistic fit of the success fraction against ``log m`` for one row:
    ``p(m) = 1 / (1 + exp(-s (log m - log m*)))``. ``widths, successes, trials: (C,)``. Half a
    success and half a failure are added to every cell (a Jeffreys-like prior), so that a
    perfectly separated row still has a finite fit. Returns ``(m*, s)``; ``m* = nan`` when the
    row's fractions do not cross one half inside the grid (the threshold is not bracketed)."""
    logm = np.log(np.asarray(widths, float))
    k = np.asarray(successes, float) + 0.5
    t = np.asarray(trials, float) + 1.0
    frac = k / t
    if not (frac.min() < 0.5 < frac.max()):
        return np.nan, np.nan
    start = np.array([np.mean(logm), 1.0])
    res = optimize.minimize(_negloglik, start, args=(logm, k, t), method="Nelder-Mead",
                            options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
    centre, slope = res.x
    return float(np.exp(np.clip(centre, -50.0, 50.0))), float(slope)


def _bootstrap_grid(successes, trials, rng):
    """Resample every cell's runs binomially, at its fraction shrunk by the same prior as the fit
    (half a success and half a failure), so that a cell at 0 or 1 still varies."""
    s, t = np.asarray(successes), np.asarray(trials)
    return rng.binomial(t, (s + 0.5) / (t + 1.0))


def threshold_growth(x, widths, successes, trials, bootstrap: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """Thresholds per row and their growth with the row variable.

    ``x: (R,)`` the row variable (``n`` or ``1/delta``), ``widths: (C,)``, ``successes,
    trials: (R, C)``. Returns a dict with ``m_star: (R,)``, ``slope: (R,)`` (logistic slopes),
    ``m_star_ci, slope_ci: (R, 2)`` (bootstrap percentile intervals), ``growth`` (the exponent
    of ``m* ~ x^growth``), ``growth_ci: (2,)`` and ``valid`` (bootstrap replicates in which every
    row's threshold was bracketed). A replicate with an unbracketed row is left out of the
    growth interval; with fewer than half valid, the interval is ``nan``.
    """
    x = np.asarray(x, float)
    successes, trials = np.asarray(successes), np.asarray(trials)
    if successes.shape != trials.shape or successes.shape != (x.size, len(widths)):
        raise ValueError(
            f"successes and trials must have shape (R={x.size}, C={len(widths)}), got "
            f"{successes.shape} and {trials.shape}"
        )
    fits = np.array([fit_threshold(widths, s, t) for s, t in zip(successes, trials)])
    rng = np.random.default_rng(seed)
    boot, growth = [], []
    for _ in range(bootstrap):
        b = np.array([fit_threshold(widths, s, t)
                      for s, t in zip(_bootstrap_grid(successes, trials, rng), trials)])
        boot.append(b)
        if np.all(np.isfinite(b[:, 0])):
            growth.append(analysis.fit(x, b[:, 0], log="xy").slope if x.size >= 3
                          else np.diff(np.log(b[:, 0]))[0] / np.diff(np.log(x))[0])
    boot = np.array(boot)  # (B, R, 2)
    q = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():  # a row never bracketed gives an all-nan slice: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = np.nanpercentile(boot, q, axis=0)  # (2, R, 2)
    ok = np.all(np.isfinite(fits[:, 0]))
    point = np.nan
    if ok:
        point = (analysis.fit(x, fits[:, 0], log="xy").slope if x.size >= 3
                 else np.diff(np.log(fits[:, 0]))[0] / np.diff(np.log(x))[0])
    valid = len(growth)
    growth_ci = np.percentile(growth, q) if valid >= bootstrap / 2 else np.array([np.nan, np.nan])
    return dict(m_star=fits[:, 0], slope=fits[:, 1], m_star_ci=ci[:, :, 0].T,
                slope_ci=ci[:, :, 1].T, growth=point, growth_ci=growth_ci, valid=valid)


def checks(diagrams: dict, frac: dict, *, narrow_max: float, wide_min: float) -> list[Check]:
    """The verdict of chapter 08.

    ``diagrams[name]``: :func:`threshold_growth`'s dict for the diagram over ``name`` (``"n"``,
    ``"1/δ"``); ``frac[name]: (R, C)`` the success fractions, widths increasing along ``C``.
    Checks, per diagram: the logistic slope in ``log m`` is positive in every row (lower end of
    its bootstrap interval); the threshold grows with the row variable (lower end of the growth
    exponent's interval above 0); the narrowest width fails in every row (success at most
    ``narrow_max``) and the widest succeeds (at least ``wide_min``).
    """
    out = []
    for name, g in diagrams.items():
        f = np.asarray(frac[name], float)
        low = np.min(g["slope_ci"][:, 0])
        out.append(Check(
            f"{name} diagram: success rises with m (smallest lower end of the rows' logistic "
            "slopes)", "> 0", low, bool(low > 0), basis="computed"))
        low = g["growth_ci"][0]
        out.append(Check(
            f"{name} diagram: m* grows with {name} (lower end of the exponent's interval; "
            f"fit {g['growth']:.2f})", "> 0", low, bool(low > 0), basis="computed"))
        out.append(Check.at_most(
            f"{name} diagram: success at the narrowest width (largest over rows)",
            np.max(f[:, 0]), narrow_max, ".3g"))
        out.append(Check.at_least(
            f"{name} diagram: success at the widest width (smallest over rows)",
            np.min(f[:, -1]), wide_min, ".3g"))
    return out
