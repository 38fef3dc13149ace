"""Chapter 06's checks: the weights' movement from initialisation shrinks with the width at the
rates :func:`localsgd.theory.lazy_distance_exponent` derives, fewer activation signs flip as the
width grows, and the widest network moves by a few percent only.
"""

from __future__ import annotations

import numpy as np

from .. import analysis, theory
from . import Check

__all__ = ["exponent", "lazy_training"]


def exponent(widths, values) -> analysis.Fit | None:
    """Log-log fit over every (width, seed) point: ``widths: (W,)``, ``values: (W, S)``; None
    where a value is not positive and finite (no exponent to fit)."""
    values = np.asarray(values, float)
    if not np.all(np.isfinite(values) & (values > 0)):
        return None
    x = np.repeat(np.asarray(widths, float)[:, None], values.shape[1], axis=1)
    return analysis.fit(x.ravel(), values.ravel(), log="xy")


def _exponent_check(name, widths, values, predicted, allowance) -> Check:
    f = exponent(widths, values)
    slope = f.slope if f is not None else float("nan")
    interval = f" [{f.low:.2f}, {f.high:.2f}]" if f is not None else ""
    return Check.between(f"{name}: fitted exponent in m{interval} vs theory {predicted:g}", slope,
                         predicted - allowance, predicted + allowance, fmt=".3g", basis="theory")


def lazy_training(
    widths_deep, abs_deep, rel_deep, flip_deep, widths_two, rel_two, *, diverged: int = 0,
    allowance: float = 0.25, lazy_max: float = 0.05,
) -> list[Check]:
    """The lazy regime's shape in the width.

    Args:
      widths_deep: ``(W,)``; abs_deep, rel_deep: ``||W_T - W_0||_F`` and the same over
        ``||W_0||_F`` at the end of the run, ``(W, S)``; flip_deep: the fraction of activation
        signs that ever flipped, ``(W, S)``; widths_two, rel_two: the two-layer network's widths
        ``(W2,)`` and relative movement ``(W2, S)``; diverged: runs that diverged.
      allowance: distance allowed between a fitted exponent and the theory's (lower-order terms
        at finite width; the losses reached differ slightly between widths).
      lazy_max: the widest deep network's relative movement (median over seeds) at most this.
    """
    flips = exponent(widths_deep, flip_deep)
    flip_high = flips.high if flips is not None else float("nan")
    return [
        _exponent_check("deep, ‖W_T − W_0‖_F", widths_deep, abs_deep,
                        theory.lazy_distance_exponent("deep", relative=False), allowance),
        _exponent_check("deep, relative movement", widths_deep, rel_deep,
                        theory.lazy_distance_exponent("deep", relative=True), allowance),
        _exponent_check("two-layer, relative movement", widths_two, rel_two,
                        theory.lazy_distance_exponent("two_layer", relative=True), allowance),
        Check.at_most("deep, ever-flipped fraction: upper end of the exponent's 95 % interval",
                      flip_high, 0.0, basis="theory"),
        Check.at_most(f"deep, relative movement at m = {int(np.max(widths_deep))} (median)",
                      float(np.median(np.asarray(rel_deep)[-1])), lazy_max),
        Check("runs that diverged", "none", diverged, diverged == 0, "tolerance"),
    ]
