"""Chapter 12's checks on the two-layer ReLU network of Du et al. (2019): its Gram matrix at
initialisation concentrates around ``H^infty`` at the central-limit rate, Local GD contracts the
loss at the linearised rate ``(1 - eta lambda_min / n)^2`` per iteration, and the hidden weights
move less the wider the network.
"""

from __future__ import annotations

import numpy as np

from .. import analysis, theory
from . import Check

__all__ = ["fitted_rates", "gram_concentration", "gram_statistics", "linearised_rate", "movement",
           "rate_summary", "reaches"]


def gram_concentration(widths, lam_min, gram_err, lam0: float, *, allowance: float = 0.25,
                       floor_frac: float = 0.75) -> list[Check]:
    """``widths: (W,)``; ``lam_min``: ``lambda_min(H(W(0)))`` of every seed, ``(W, S)``;
    ``gram_err``: ``||H(W(0)) - H^infty||_2 / ||H^infty||_2``, ``(W, S)``; ``lam0``:
    ``lambda_min(H^infty)``. The spread and the distance fall like ``m^{-1/2}`` (a mean of ``m``
    i.i.d. matrices) within ``allowance``; at the widest width every seed has
    ``lambda_min >= floor_frac * lambda_0`` (Du et al.'s ``3 lambda_0 / 4`` once ``m`` is large)."""
    lam_min, gram_err = np.asarray(lam_min, float), np.asarray(gram_err, float)
    spread = lam_min.std(axis=1) / lam_min.mean(axis=1)
    return [
        Check.between("exponent of the seed spread of λ_min in m (CLT: −1/2)",
                      analysis.exponent(widths, spread), -0.5 - allowance, -0.5 + allowance,
                      basis="theory"),
        Check.between("exponent of ‖H(W(0)) − H^∞‖/‖H^∞‖ in m (CLT: −1/2)",
                      analysis.exponent(widths, np.median(gram_err, axis=1)), -0.5 - allowance,
                      -0.5 + allowance, basis="theory"),
        Check.at_least(f"min λ_min(H(W(0))) ÷ λ₀ at m = {int(np.max(widths))}, every seed",
                       float(np.min(lam_min[-1]) / lam0), floor_frac, basis="theory"),
    ]


def fitted_rates(iterations, loss, floor: float):
    """Per seed: minus the slope of ``log F`` over the second half of the recorded points above
    ``floor`` (``nan`` with fewer than 3). ``iterations: (E,)``, ``loss: (S, E)`` -> ``(S,)``."""
    loss = np.asarray(loss, float)
    late = np.arange(loss.shape[-1]) >= loss.shape[-1] // 2
    return analysis.linear_rates(iterations, loss, late & np.isfinite(loss) & (loss > floor))


def linearised_rate(measured, eta, lam_min, n: int, *, low: float = 0.5, high: float = 2.0,
                    label: str = "Local GD") -> list[Check]:
    """The measured rate per iteration against ``-log((1 - eta lambda_min / n)^2)`` of each seed's
    own step and Gram matrix (``measured, eta, lam_min: (S,)``), as a median ratio in
    ``[low, high]``."""
    predicted = theory.log_rate(eta, lam_min, n)
    ratio = float(np.median(np.asarray(measured, float) / predicted))
    return [Check.between(f"{label}: measured rate ÷ linearised 2ηλ_min/n rate", ratio, low, high,
                          basis="computed")]


def reaches(final_loss, eps: float, label: str = "Local GD") -> list[Check]:
    """The worst seed's final loss, ``final_loss: (S,)``, at most the target ``eps``."""
    return [Check.at_most(f"{label}: final F, worst seed", float(np.max(final_loss)), eps,
                          fmt=".0e")]


def movement(widths, dist_rel, *, allowance: float = 0.25) -> list[Check]:
    """``widths: (W,)``; ``dist_rel: (S, W)`` the relative movement at the end: its exponent in
    ``m`` against :func:`localsgd.theory.lazy_distance_exponent` (``-1/2``) within ``allowance``."""
    p = theory.lazy_distance_exponent("two_layer", relative=True)
    return [Check.between("exponent of the relative movement in m", analysis.exponent(
        widths, np.median(np.asarray(dist_rel, float), axis=0)), p - allowance, p + allowance,
        basis="theory")]


def gram_statistics(grams, h_inf):
    """``grams: (S, n, n)`` Gram matrices at initialisation, ``h_inf: (n, n)`` their limit.
    Returns ``(lambda_min (S,), ||H(W(0)) - H^infty||_2 / ||H^infty||_2 (S,))`` in float64."""
    g = np.asarray(grams, np.float64)
    err = np.linalg.norm(g - np.asarray(h_inf, np.float64), 2, axis=(1, 2))
    return np.linalg.eigvalsh(g)[:, 0], err / np.linalg.norm(h_inf, 2)


def rate_summary(res, lam_min, n: int, floor: float) -> dict:
    """One row of the rate table for a run ``res`` (a ``Result``) whose seeds' Gram matrices at
    initialisation have ``lam_min: (S,)``: medians over seeds of the step, the linearised and the
    measured rate per iteration (:func:`fitted_rates`) and their ratio; the worst final loss; the
    median final relative movement."""
    meas = fitted_rates(res.iterations, res.metrics["loss"], floor)
    pred = theory.log_rate(res.eta, lam_min, n)
    return dict(run="Local GD" if res.config.algorithm == "local_gd" else "Local SGD",
                m=res.config.m, eta=float(np.median(res.eta)), pred=float(np.median(pred)),
                meas=float(np.median(meas)), ratio=float(np.median(meas / pred)),
                final=float(np.max(res.metrics["loss"][:, -1])),
                dist=float(np.median(res.metrics["dist_rel"][:, -1])))
