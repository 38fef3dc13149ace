"""The checks every training chapter shares: the network against the kernel model of its own run
(:mod:`localsgd.kernel`), over a width axis.

For runs of one configuration at several widths ``m``, with the kernel model of each
(:func:`localsgd.kernel.predict`, rebuilt from the configuration the run reports):

* every local update is below the linearised model's critical step, ``eta * sharpness < 2``
  (:func:`localsgd.kernel.sharpness`): outside that the model diverges and the comparison says
  nothing about the lazy regime;
* ``sqrt(m) * D`` at the widest width is at most a chapter's bound (``D``:
  :func:`localsgd.kernel.distance`). Lazy training makes ``D`` fall as ``m^(-1/2)``; a run that
  is not the one it reports (another step, ``tau``, batch, width, no averaging) stays at a
  distance that hardly changes with ``m``. The bound is a chapter's own tolerance, fitted on its
  ``ci`` runs (``TOLERANCES["sqrt_m_distance"]`` of its module);
* the exponent of ``D`` in ``m``, with a bootstrap interval over seeds, lies below 0: the network
  approaches its kernel model as it widens. It is reported beside the lazy-training ``-1/2``, not
  forced to it (deep ReLU networks may show a smaller one);
* where the runs target a loss ``eps``: the network's iterations to ``eps`` over its kernel
  model's, at the widest width, within :data:`TOLERANCES` ``["iteration_ratio"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import analysis, kernel
from . import Check, Tolerance

__all__ = ["TOLERANCES", "WidthAxis", "checks", "predictions", "width_axis"]

TOLERANCES = {
    "critical": Tolerance(
        2.0, "theory",
        "a step of the linearised model on the samples B multiplies their residual by "
        "I - eta D^(1/2) G_BB D^(1/2); it contracts every direction only while eta times the "
        "largest eigenvalue is below 2 (the critical step of gradient descent on a quadratic)"),
    "iteration_ratio": Tolerance(
        (0.8, 1.25), "prior",
        "fixed before any run: the network within a quarter of its kernel model's time to eps at "
        "the widest width, where the lazy regime makes them agree as m grows"),
    "level": Tolerance(
        0.95, "prior", "the level of the bootstrap interval of the exponent of D in m"),
}


class WidthAxis(NamedTuple):
    """Runs of one configuration at several widths against their kernel models.

    ``widths: (P,)``; ``distance: (P, S)`` ``D`` per width and seed; ``ratio: (P, S)`` the
    network's over the kernel model's iterations to ``eps`` (NaN without ``eps``);
    ``critical: (P, S)`` ``eta * sharpness``; ``exponent``, ``low``, ``high``: the fitted exponent
    of ``D`` in ``m`` and its bootstrap interval; ``eps``: the target loss or None."""

    widths: np.ndarray
    distance: np.ndarray
    ratio: np.ndarray
    critical: np.ndarray
    exponent: float
    low: float
    high: float
    eps: float | None

    @property
    def widest(self) -> int:
        return int(self.widths[-1])

    def sqrt_m_distance(self) -> np.ndarray:
        """``sqrt(m) * D`` per width and seed, ``(P, S)``."""
        return np.sqrt(self.widths)[:, None] * self.distance


def predictions(results: Mapping[int, object], kind: str = "empirical") -> dict:
    """``{m: kernel.predict(result.config)}`` for ``{m: Result}``."""
    return {m: kernel.predict(r.config, kind) for m, r in results.items()}


def width_axis(results: Mapping[int, object], preds: Mapping[int, object] | None = None,
               eps: float | None = None, bootstrap: int = 1000) -> WidthAxis:
    """The comparison of ``{m: Result}`` (runs that record ``"outputs"``, one configuration at
    three or more widths, equal seeds) with their kernel models ``{m: Prediction}``
    (computed when None). ``D`` runs up to the kernel model's time to ``eps`` (every recorded
    round without ``eps``)."""
    widths = np.array(sorted(results), dtype=float)
    if widths.size < 3:
        raise ValueError(f"results must hold three or more widths, got {sorted(results)}")
    preds = predictions(results) if preds is None else preds
    if set(preds) != set(results):
        raise ValueError(f"preds must have the widths of results {sorted(results)}, got "
                         f"{sorted(preds)}")
    ms = [int(m) for m in widths]
    dist = np.stack([kernel.distance(results[m], preds[m], eps) for m in ms])
    if eps is None:
        ratio = np.full(dist.shape, np.nan)
    else:
        ratio = np.stack([kernel.iteration_ratio(results[m], preds[m], eps) for m in ms])
    crit = np.stack([preds[m].critical for m in ms])
    level = TOLERANCES["level"].value
    p, lo, hi = analysis.bootstrap_loglog(widths, dist, bootstrap=bootstrap, level=level)
    return WidthAxis(widths, dist, ratio, crit, p, lo, hi, eps)


def _worst_ratio(r) -> float:
    """The ratio farthest from 1 on a log scale; NaN when any is not a positive number."""
    r = np.asarray(r, float)
    if not np.all(np.isfinite(r) & (r > 0)):
        return float("nan")
    return float(r[np.argmax(np.abs(np.log(r)))])


def checks(axis: WidthAxis, sqrt_m_distance: Tolerance, label: str = "") -> list[Check]:
    """The shared checks (module docstring) of one width axis; ``sqrt_m_distance``: the
    chapter's bound on ``sqrt(m) * D`` at the widest width; ``label`` prefixes every name (to tell
    several axes of one chapter apart)."""
    pre = f"{label}: " if label else ""
    crit = TOLERANCES["critical"]
    out = [
        Check.at_most(pre + r"largest \(\eta\,\lambda_{\max}(D_B^{1/2} G_{BB} D_B^{1/2})\) of a "
                      "local update", float(np.max(axis.critical)), crit.value, fmt=".3g",
                      basis=crit.basis),
        Check.at_most(pre + rf"\(\sqrt{{m}}\,D\) at \(m = {axis.widest}\) (worst seed)",
                      float(np.max(axis.sqrt_m_distance()[-1])), sqrt_m_distance.value, fmt=".3g",
                      basis=sqrt_m_distance.basis),
        Check(pre + rf"exponent of \(D\) in \(m\) ({axis.exponent:.2f}): upper end of its "
              f"{TOLERANCES['level'].value:.0%} interval",
              "< 0", axis.high, bool(axis.high < 0), "theory"),
    ]
    if axis.eps is not None:
        lo, hi = TOLERANCES["iteration_ratio"].value
        out.append(Check.between(
            pre + rf"network ÷ kernel-model iterations to \(\varepsilon\) at \(m = {axis.widest}\) "
            "(worst seed)", _worst_ratio(axis.ratio[-1]), lo, hi, fmt=".3g",
            basis=TOLERANCES["iteration_ratio"].basis))
    return out
