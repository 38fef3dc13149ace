"""Chapter 08's runs and checks: how wide is wide enough.

Over a grid of widths ``m`` (columns) and a second variable (rows: ``n`` or ``1/delta``), every
cell trains several seeds (:func:`diagram`) and each run is judged in two ways:

* it *converges lazily* (:func:`success`) when it reaches the target loss within the budget
  while its relative distance from initialisation and its fraction of flipped activations stay
  below :data:`TOLERANCES` ``["max_movement"]`` and ``["max_flips"]`` over the whole run;
* it *follows its kernel model* (:func:`follows`) when its distance ``D`` to the kernel model of
  its own initialisation (:func:`localsgd.kernel.distance`, up to the kernel model's time to the
  target) is at most :data:`TOLERANCES` ``["max_distance"]``.

The success fraction of each row is fitted by a logistic curve in ``log m``
(:func:`fit_threshold`); the width where half the runs succeed is the empirical threshold ``m*``,
and its growth with the row variable is the slope of ``log m*`` against the log of that
variable, with a bootstrap interval (:func:`threshold_growth`). One row of a diagram is also a
width axis for the shared checks of :mod:`localsgd.claims.kernel_model`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from .. import analysis, kernel
from .. import experiments as ex
from . import Check, Tolerance
from . import kernel_model as km

__all__ = [
    "NOTIONS", "TOLERANCES", "Diagram", "checks", "diagram", "distance_growth",
    "fit_threshold", "follows", "growths", "is_lazy", "success", "threshold_growth", "width_axis",
]

TOLERANCES = {
    "max_movement": Tolerance(
        0.3, "prior",
        "fixed before any run: a run is lazy while its weights stay within 30 % of their "
        r"initial norm, $\Vert W_t - W_0 \Vert_F \le 0.3\, \Vert W_0 \Vert_F$"),
    "max_flips": Tolerance(
        0.15, "prior",
        "fixed before any run: a run is lazy while at most 15 % of its activation patterns "
        "differ from initialisation"),
    "max_distance": Tolerance(
        0.2, "prior",
        "fixed before any run: a run follows its kernel model while its outputs stay within a "
        r"fifth of the initial residual of the kernel model's, $D \le 0.2$ (about the kernel "
        r"model's own residual at the target, $\sqrt{\varepsilon / F_0} = 0.22$ for "
        r"$\varepsilon = 0.05$ and $F_0 = 1$)"),
    "narrow_max": Tolerance(
        0.2, "prior",
        "fixed before any run: at the narrowest width at most a fifth of a row's runs succeed "
        "(the grid starts below the threshold)"),
    "wide_min": Tolerance(
        0.8, "prior",
        "fixed before any run: at the widest width at least four fifths of a row's runs succeed "
        "(the grid ends above the threshold)"),
    "sqrt_m_distance": Tolerance(
        3.9, "ci-fit",
        r"the largest $\sqrt{m}\, D$ over the ci profile's width axis (the row $\delta = 0.3$, "
        r"$n = 16$ at $m = 32, 64, 128$; 16 seeds each), 2.62 at $m = 64$, times 1.5 for the "
        "seeds and widths of the default profile, rounded down"),
    "critical": km.TOLERANCES["critical"],
}

# The two ways a run succeeds: name -> words for tables and figures.
NOTIONS = {"lazy": "reaches ε while lazy", "kernel": "follows its kernel model"}


def is_lazy(movement, flips) -> np.ndarray:
    """Whether runs stay lazy: ``movement, flips: (..., E)`` recorded along each run (relative
    distance from initialisation, flip fraction) -> ``(...)`` booleans."""
    return ((np.max(movement, axis=-1) <= TOLERANCES["max_movement"].value)
            & (np.max(flips, axis=-1) <= TOLERANCES["max_flips"].value))


def success(loss, movement, flips, *, eps: float) -> np.ndarray:
    """Reached ``eps`` within the recorded budget while lazy: ``(..., E)`` arrays -> ``(...)``."""
    return (np.min(loss, axis=-1) <= eps) & is_lazy(movement, flips)


def follows(distance) -> np.ndarray:
    """Whether runs follow their kernel models: ``D`` ``(...)`` -> ``(...)`` booleans (a
    non-finite ``D`` does not)."""
    d = np.asarray(distance, float)
    return np.isfinite(d) & (d <= TOLERANCES["max_distance"].value)


class Diagram(NamedTuple):
    """One phase diagram: ``x: (R,)`` the row variable, ``widths: (C,)``; per row, width and
    seed ``(R, C, S)``: ``reached`` (the target within the budget), ``lazy``, ``distance``
    (``D``), ``critical`` (``eta * sharpness``); ``results, preds``: ``R x C`` nested lists of the
    runs and their kernel models; ``eps`` the target."""

    x: np.ndarray
    widths: np.ndarray
    reached: np.ndarray
    lazy: np.ndarray
    distance: np.ndarray
    critical: np.ndarray
    results: list
    preds: list
    eps: float

    def successes(self, notion: str) -> np.ndarray:
        """``(R, C, S)`` booleans: the runs that succeed in the sense ``notion`` (one of
        :data:`NOTIONS`)."""
        if notion == "lazy":
            return self.reached & self.lazy
        if notion == "kernel":
            return follows(self.distance)
        raise ValueError(f"notion must be one of {tuple(NOTIONS)}, got {notion!r}")


def diagram(base, x, rows, widths, eps: float, desc: str = "diagram") -> Diagram:
    """Runs ``base.replace(m=m, **row)`` for every row (one dict of fields for every value of
    ``x: (R,)``) and width, with their kernel models (:func:`localsgd.kernel.predict`). ``base``
    must record ``("loss", "dist", "flips", "outputs")``; its ``rounds`` are the budget."""
    widths = [int(m) for m in widths]
    exps = [base.replace(m=m, **row) for row in rows for m in widths]
    res = ex.run_grid(exps, desc=desc)
    preds = [kernel.predict(e) for e in exps]
    R, C = len(rows), len(widths)
    grid = (R, C, -1)
    loss = np.stack([r.metrics["loss"] for r in res])
    mv = np.stack([r.metrics["dist_rel"] for r in res])
    fl = np.stack([r.metrics["flips"] for r in res])
    reached = (np.min(loss, axis=-1) <= eps).reshape(grid)
    lazy = is_lazy(mv, fl).reshape(grid)
    dist = np.stack([kernel.distance(r, p, eps) for r, p in zip(res, preds)]).reshape(grid)
    crit = np.stack([p.critical for p in preds]).reshape(grid)
    nested = [res[i * C:(i + 1) * C] for i in range(R)], [preds[i * C:(i + 1) * C]
                                                          for i in range(R)]
    return Diagram(np.asarray(x, float), np.asarray(widths), reached, lazy, dist, crit,
                   *nested, float(eps))


def width_axis(dg: Diagram, row: int, bootstrap: int = 1000) -> km.WidthAxis:
    """Row ``row`` of a diagram as a width axis (:func:`localsgd.claims.kernel_model.width_axis`),
    ``D`` up to the kernel model's time to the target as in the diagram. Its ``eps`` is then set
    to None: the network's iterations over its kernel model's are kept in ``ratio`` but not
    checked in this chapter."""
    widths = [int(m) for m in dg.widths]
    axis = km.width_axis(dict(zip(widths, dg.results[row])), dict(zip(widths, dg.preds[row])),
                         eps=dg.eps, bootstrap=bootstrap)
    return axis._replace(eps=None)


def _logistic_fit(logm, k, t):
    """Maximum-likelihood ``(a, b)`` of ``p = sigmoid(a + b log m)`` for binomial counts ``k``
    of ``t`` trials at every ``logm: (C,)``, for any leading shape of ``k, t: (..., C)`` (every
    count strictly between 0 and its trials): Newton's method on the convex negative
    log-likelihood, from the weighted least-squares fit of the empirical logits, each step
    halved until the likelihood does not fall. Returns ``a, b`` of the leading shape."""
    frac = k / t
    w = t * frac * (1 - frac)  # the logits' inverse variances
    X = np.stack([np.ones_like(logm), logm], axis=-1)  # (C, 2)

    def solve(H, g):  # H: (..., 2, 2), g: (..., 2)
        return np.linalg.solve(H, g[..., None])[..., 0]

    theta = solve(np.einsum("...c,ci,cj->...ij", w, X, X),
                  np.einsum("...c,...c,ci->...i", w, np.log(frac / (1 - frac)), X))

    def nll(theta):
        z = theta @ X.T
        return np.sum(t * np.logaddexp(0.0, -z) + (t - k) * z, axis=-1)

    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta @ X.T)))
        g = np.einsum("...c,ci->...i", t * p - k, X)
        H = np.einsum("...c,ci,cj->...ij", t * p * (1 - p), X, X)
        step, f0 = solve(H, g), nll(theta)
        for _ in range(30):  # halve where the likelihood would fall
            worse = nll(theta - step) > f0 + 1e-12 * np.abs(f0)
            if not worse.any():
                break
            step = np.where(worse[..., None], step / 2, step)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-12:
            break
    return theta[..., 0], theta[..., 1]


def fit_threshold(widths, successes, trials) -> tuple[float, float]:
    """Logistic fit of the success fraction against ``log m`` for one row:
    ``p(m) = 1 / (1 + exp(-s (log m - log m*)))``. ``widths, successes, trials: (C,)``. Half a
    success and half a failure are added to every cell (a Jeffreys-like prior), so that a
    perfectly separated row still has a finite fit. Returns ``(m*, s)``; ``m* = nan`` when the
    row's fractions do not cross one half inside the grid (the threshold is not bracketed)."""
    m_star, slope = fit_thresholds(widths, successes, trials)
    return float(m_star), float(slope)


def fit_thresholds(widths, successes, trials) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_threshold` of many rows at once: ``successes, trials: (..., C)`` -> ``(m*,
    s)``, each of the leading shape."""
    logm = np.log(np.asarray(widths, float))
    k = np.asarray(successes, float) + 0.5
    t = np.asarray(trials, float) + 1.0
    frac = k / t
    bracketed = (frac.min(axis=-1) < 0.5) & (0.5 < frac.max(axis=-1))
    a, b = _logistic_fit(logm, k, t)
    centre = np.clip(-a / b, -50.0, 50.0)
    return np.where(bracketed, np.exp(centre), np.nan), np.where(bracketed, b, np.nan)


def _bootstrap_grid(successes, trials, rng):
    """Resample every cell's runs binomially, at its fraction shrunk by the same prior as the fit
    (half a success and half a failure), so that a cell at 0 or 1 still varies."""
    s, t = np.asarray(successes), np.asarray(trials)
    return rng.binomial(t, (s + 0.5) / (t + 1.0))


def _growth(x, m_star) -> float:
    """The exponent of ``m* ~ x^p``: a least-squares fit over three or more rows, the slope
    between two."""
    if x.size >= 3:
        return analysis.fit(x, m_star, log="xy").slope
    return float(np.diff(np.log(m_star))[0] / np.diff(np.log(x))[0])


def threshold_growth(x, widths, successes, trials, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Thresholds per row and their growth with the row variable.

    ``x: (R,)`` the row variable (``n`` or ``1/delta``), ``widths: (C,)``, ``successes,
    trials: (R, C)``. Returns a dict with ``m_star: (R,)``, ``slope: (R,)`` (logistic slopes),
    ``m_star_ci, slope_ci: (R, 2)`` (bootstrap percentile intervals at the level of
    :data:`localsgd.claims.kernel_model.TOLERANCES` ``["level"]``), ``growth`` (the exponent of
    ``m* ~ x^growth``; NaN when a row's threshold is not bracketed), ``growth_ci: (2,)`` and
    ``valid`` (bootstrap replicates in which every row's threshold was bracketed). A replicate
    with an unbracketed row is left out of the growth interval; with fewer than half valid, the
    interval is NaN.
    """
    x = np.asarray(x, float)
    successes, trials = np.asarray(successes), np.asarray(trials)
    if successes.shape != trials.shape or successes.shape != (x.size, len(widths)):
        raise ValueError(
            f"successes and trials must have shape (R={x.size}, C={len(widths)}), got "
            f"{successes.shape} and {trials.shape}"
        )
    level = km.TOLERANCES["level"].value
    fits = np.stack(fit_thresholds(widths, successes, trials), axis=-1)  # (R, 2)
    rng = np.random.default_rng(seed)
    draws = np.stack([_bootstrap_grid(successes, trials, rng) for _ in range(bootstrap)])
    boot = np.stack(fit_thresholds(widths, draws, np.broadcast_to(trials, draws.shape)),
                    axis=-1)  # (B, R, 2)
    growth = [_growth(x, b[:, 0]) for b in boot if np.all(np.isfinite(b[:, 0]))]
    q = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():  # a row never bracketed gives an all-nan slice: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = np.nanpercentile(boot, q, axis=0)  # (2, R, 2)
    point = _growth(x, fits[:, 0]) if np.all(np.isfinite(fits[:, 0])) else np.nan
    valid = len(growth)
    growth_ci = np.percentile(growth, q) if valid >= bootstrap / 2 else np.array([np.nan, np.nan])
    return dict(m_star=fits[:, 0], slope=fits[:, 1], m_star_ci=ci[:, :, 0].T,
                slope_ci=ci[:, :, 1].T, growth=point, growth_ci=growth_ci, valid=valid)


def growths(dg: Diagram, bootstrap: int = 1000) -> dict:
    """:func:`threshold_growth` of a diagram for every notion of :data:`NOTIONS`:
    ``{notion: dict}``."""
    out = {}
    for i, notion in enumerate(NOTIONS):
        ok = dg.successes(notion)
        k = ok.sum(-1)
        out[notion] = threshold_growth(dg.x, dg.widths, k, np.full_like(k, ok.shape[-1]),
                                       bootstrap=bootstrap, seed=i)
    return out


def _tex(name: str) -> str:
    return {"1/δ": r"1/\delta"}.get(name, name)


def distance_growth(dg: Diagram, bootstrap: int = 1000, seed: int = 0):
    """The exponent of ``D`` at the widest width in the row variable, ``D ~ x^p``, with its
    bootstrap interval over seeds (:func:`localsgd.analysis.bootstrap_loglog`): ``(p, low,
    high)``; NaN when fewer than three distances are finite."""
    level = km.TOLERANCES["level"].value
    try:
        return analysis.bootstrap_loglog(dg.x, dg.distance[:, -1, :], bootstrap=bootstrap,
                                         level=level, seed=seed)
    except ValueError:
        return (np.nan,) * 3


def checks(diagrams: dict, growth: dict, distance: dict, axis: km.WidthAxis) -> list[Check]:
    """The verdict of chapter 08.

    ``diagrams[name]``: :class:`Diagram` over ``name`` (``"n"``, ``"1/δ"``);
    ``growth[name]``: :func:`growths` of it; ``distance[name]``: :func:`distance_growth` of the
    diagrams whose growth of ``D`` is checked;
    ``axis``: one row of a diagram as a width axis (:func:`width_axis`), with the shared checks
    of :mod:`localsgd.claims.kernel_model` and the chapter's bound on ``sqrt(m) D``. Every run
    of every cell is below its critical step. Per diagram, for runs that reach the target while
    lazy: the logistic slope in ``log m`` is positive in every row (lower end of its bootstrap
    interval); the threshold grows with the row variable (lower end of the growth exponent's
    interval above 0); the narrowest width fails in every row (success at most ``narrow_max``)
    and the widest succeeds (at least ``wide_min``). For every diagram in ``distance``: at the
    widest width, ``D`` grows with the row variable (lower end of its exponent's interval above
    0), so a wider network is needed to follow the kernel model.
    """
    crit = TOLERANCES["critical"]
    out = km.checks(axis, TOLERANCES["sqrt_m_distance"], label="width axis")
    worst = max(float(np.nanmax(dg.critical)) for dg in diagrams.values())
    out.append(Check.at_most(
        r"every run: largest \(\eta\,\lambda_{\max}(D_B^{1/2} G_{BB} D_B^{1/2})\) of a local "
        "update", worst, crit.value, fmt=".3g", basis=crit.basis))
    narrow, wide = TOLERANCES["narrow_max"], TOLERANCES["wide_min"]
    for name, dg in diagrams.items():
        v = rf"\({_tex(name)}\)"
        g = growth[name]["lazy"]
        f = dg.successes("lazy").mean(-1)
        pre = rf"{v} diagram, runs that reach \(\varepsilon\) while lazy"
        low = float(np.min(g["slope_ci"][:, 0]))
        out.append(Check(
            f"{pre}: success rises with \\(m\\) (smallest lower end of the rows' logistic "
            "slopes)", "> 0", low, bool(low > 0), basis="computed"))
        low = float(g["growth_ci"][0])
        out.append(Check(
            f"{pre}: \\(m^*\\) grows with {v} (lower end of the exponent's interval; fit "
            f"{g['growth']:.2f})", "> 0", low, bool(low > 0), basis="computed"))
        out.append(Check.at_most(
            f"{pre}: success at the narrowest width (largest over rows)",
            float(np.max(f[:, 0])), narrow.value, ".3g", basis=narrow.basis))
        out.append(Check.at_least(
            f"{pre}: success at the widest width (smallest over rows)",
            float(np.min(f[:, -1])), wide.value, ".3g", basis=wide.basis))
    for name, (p, low, _) in distance.items():
        v = rf"\({_tex(name)}\)"
        out.append(Check(
            f"{v} diagram: \\(D\\) at \\(m = {int(diagrams[name].widths[-1])}\\) grows with "
            f"{v} (lower end of its exponent's interval; fit {p:.2f})", "> 0", low,
            bool(low > 0), basis="computed"))
    return out
