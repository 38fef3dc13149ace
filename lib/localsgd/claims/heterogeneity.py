"""Chapter 10 (heterogeneity): how the label skew of a partition changes the rate at which Local
SGD reaches a target loss, with the theorems' step (``eta * tau`` small) and at a fixed step.

Each function takes recorded :class:`localsgd.result.Result` objects and the measured skew
of each partition; none runs anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import analysis
from . import Check
from .communication import rounds_to_eps

__all__ = ["average_rate", "heterogeneity", "skew_fit"]


def average_rate(result, eps: float) -> np.ndarray:
    """Per seed, the average per-round rate ``log(F_0 / eps) / R_eps`` at which the loss reaches
    ``eps``, ``(S,)``; 0 for a seed that never reaches it (or diverged)."""
    F0 = np.asarray(result.metrics["loss"])[:, 0]
    R = rounds_to_eps(result, eps)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(R) & (R > 0), np.log(F0 / eps) / R, 0.0)


def skew_fit(skews: Sequence[float], results: Sequence, eps: float) -> analysis.Fit:
    """Least-squares line of ``log(average_rate)`` against the partition's label skew over every
    partition and seed (``skews: (P,)``, one result a partition, ``P * S`` points), with its
    95 % interval (:func:`localsgd.analysis.fit`). A seed that never reaches ``eps`` has rate 0,
    whose logarithm is left out of the fit (and counted by :func:`heterogeneity`); with fewer
    than 3 seeds left, every number of the fit is NaN."""
    if len(skews) != len(results):
        raise ValueError(f"skews must give one value per result, got {len(skews)} and "
                         f"{len(results)}")
    x = np.concatenate([np.full(r.config.seeds, s, float) for s, r in zip(skews, results)])
    y = np.concatenate([average_rate(r, eps) for r in results])
    y = np.where(y > 0, y, np.nan)
    if np.sum(np.isfinite(y)) < 3:  # too few runs reached eps for a line: a fit of NaNs
        nan = float("nan")
        return analysis.Fit(nan, nan, nan, nan, nan, nan, int(np.sum(np.isfinite(y))))
    return analysis.fit(x, y, log="y")


def heterogeneity(
    skews: Sequence[float],
    shrinking: Sequence,
    fixed: Sequence,
    eps: float,
    factor: float = 2.0,
) -> list[Check]:
    """The chapter's checks, over partitions of measured label skew ``skews: (P,)``.

    ``shrinking``: one run a partition with the theorems' step (``eta * tau`` as for one local
    step of the fixed step); ``fixed``: the same with the fixed step at each of the ``tau`` local
    steps. Predictions: every seed reaches ``eps`` on every partition (the theorems make no
    assumption on how the data are split); at the fixed step the rate falls with the skew (Li et
    al. 2020: heterogeneity slows FedAvg with several local steps), so the 95 % interval of the
    slope of ``log(rate)`` against skew lies below 0; with the theorems' step a round is, to first
    order in ``eta * tau``, a gradient step on the global loss whatever the partition, and the
    skew acts through the clients' drift ``eta (tau - 1) grad F_k`` within a round, ``tau`` times
    smaller than at the fixed step: the ratio of the two slopes is predicted at ``1 / tau``, and
    must be at most ``factor / tau``.
    """
    if len(shrinking) != len(skews) or len(fixed) != len(skews) or len(skews) < 2:
        raise ValueError(
            f"shrinking and fixed must hold one run for each of the >= 2 skews, got "
            f"{len(shrinking)}, {len(fixed)} and {len(skews)}"
        )
    tau = shrinking[0].config.tau
    steps = {round(r.config.eta * tau / f.config.eta, 9) for r, f in zip(shrinking, fixed)}
    if steps != {1.0} or any(r.config.tau != tau for r in (*shrinking, *fixed)):
        raise ValueError("shrinking must take the step of fixed divided by tau, at the same tau")
    misses = sum(int(np.sum(~np.isfinite(rounds_to_eps(r, eps)))) for r in (*shrinking, *fixed))
    small, large = skew_fit(skews, shrinking, eps), skew_fit(skews, fixed, eps)
    ratio = abs(small.slope / large.slope) if large.slope < 0 else float("nan")
    return [
        Check.at_most(f"seeds that miss ε = {eps:g} or diverge, every partition", misses, 0,
                      basis="theory"),
        Check.at_most("upper end of the 95 % interval of the slope of log(rate) against skew, "
                      "fixed step", large.high, 0.0, fmt=".3g", basis="theory"),
        Check.at_most(f"slope, theorems' step / slope, fixed step (1/τ = {1 / tau:.3g} predicted)",
                      ratio, factor / tau, fmt=".3g", basis="tolerance"),
    ]
