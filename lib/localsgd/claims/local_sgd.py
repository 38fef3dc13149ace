"""Chapter 05 (Local SGD converges linearly, with high probability): at one fixed step for every
batch size ``b``, the measured rate per iteration is the linearised model's full-batch rate
(:func:`localsgd.claims.local_gd.predicted_rates`, from each seed's own initialisation), and over
many seeds (initialisations and minibatch streams) the iterations to reach ``eps`` stay within a
computed bound: their upper quantile against each seed's linearised bound, and their spread
(quantile over median) against the spread of those bounds, which the initialisation alone causes.
"""

from __future__ import annotations

import numpy as np

from .. import analysis
from . import Check
from .local_gd import fitted_rates, linearised_iterations, predicted_rates

__all__ = ["iterations_to", "linearised_iterations", "local_sgd", "spread"]

MIN_SEEDS = 10


def iterations_to(result, eps: float) -> np.ndarray:
    """Per seed, iterations until ``F <= eps`` (interpolated; inf if never). ``(S,)``."""
    return analysis.iterations_to(result.iterations, np.asarray(result.metrics["loss"], float), eps)


def spread(values, quantile: float = 0.9) -> float:
    """``quantile`` over median of ``values: (S,)``; inf when any value is inf or NaN."""
    v = np.asarray(values, float)
    if not np.all(np.isfinite(v)):
        return float("inf")
    return float(np.quantile(v, quantile) / np.median(v))


def local_sgd(
    runs: dict,
    lam_min,
    eps: float,
    *,
    rate_band=(0.5, 2.0),
    bound_max: float = 2.0,
    spread_tolerance: float = 1.25,
    quantile: float = 0.9,
) -> list[Check]:
    """The chapter's checks for ``runs: {b: Result}``, Local SGD at one step for every batch size,
    all with the same seeds (at least :data:`MIN_SEEDS`), whose NTK ``lambda_min`` at
    initialisation is ``lam_min: (S,)``. For every ``b``:

    * the median over seeds of the fitted over the linearised rate lies in ``rate_band``;
    * the ``quantile`` over seeds of the iterations to ``eps`` over each seed's linearised bound
      is at most ``bound_max``;
    * the spread of the iterations to ``eps`` (``quantile`` over median) is at most
      ``spread_tolerance`` times that of the seeds' linearised bounds.
    """
    seeds = {res.config.seeds for res in runs.values()}
    if len(seeds) != 1 or min(seeds) < MIN_SEEDS:
        raise ValueError(f"runs must share one seed count >= {MIN_SEEDS}, got {sorted(seeds)}")
    checks = []
    for b, res in sorted(runs.items()):
        ratio = float(np.median(fitted_rates(res) / predicted_rates(res, lam_min)))
        checks.append(Check.between(f"b = {b}: fitted / linearised rate (median over seeds)",
                                    ratio, *rate_band, fmt=".2f", basis="computed"))
        hits, bound = iterations_to(res, eps), linearised_iterations(res, lam_min, eps)
        q = float(np.quantile(hits / bound, quantile)) if np.all(np.isfinite(hits)) else np.inf
        checks.append(Check.at_most(f"b = {b}: {quantile:.0%} quantile of iterations to ε / "
                                    "linearised bound", q, bound_max, fmt=".2f", basis="computed"))
        allowed = spread_tolerance * spread(bound, quantile)
        checks.append(Check.at_most(f"b = {b}: iterations to ε, {quantile:.0%} quantile / median",
                                    spread(hits, quantile), allowed, fmt=".3f", basis="computed"))
    return checks
