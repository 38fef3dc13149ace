"""Chapter 09 (communication): rounds to a target loss against the local steps ``tau`` in the
theorems' step regime and at a fixed step, and Local SGD against minibatch SGD at equal
computation with each method's step tuned over the same grid.

Each function takes recorded :class:`localsgd.result.Result` objects; none runs anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import analysis, theory
from . import Check

__all__ = ["best_rounds", "communication", "rounds_to_eps", "step_fraction"]


def rounds_to_eps(result, eps: float) -> np.ndarray:
    """Rounds each seed needs to reach ``F <= eps``, ``(S,)``: log-linearly interpolated between
    records, ``inf`` for a seed that never gets there or diverged."""
    r = analysis.iterations_to(result.rounds, result.metrics["loss"], eps)
    return np.where(np.asarray(result.diverged_at) >= 0, np.inf, r)


def step_fraction(result) -> float:
    """``eta * tau`` as a fraction of ``n / lambda_max(G_0)`` (the ``ntk`` rule's scale), the
    quantity the theorems' step keeps fixed as ``tau`` grows."""
    return result.config.eta * result.config.tau


def best_rounds(results: Sequence, eps: float) -> tuple[float, float]:
    """Over a grid of runs that differ in the step only: ``(fewest median rounds to eps, the step
    fraction that gives them)``; ``(inf, nan)`` when no step of the grid reaches ``eps``."""
    med = np.array([np.median(rounds_to_eps(r, eps)) for r in results])
    if not np.any(np.isfinite(med)):
        return float("inf"), float("nan")
    i = int(np.argmin(med))
    return float(med[i]), float(results[i].config.eta)


def _check_grids(local: Sequence, minibatch: Sequence) -> list[float]:
    grid = sorted(r.config.eta for r in local)
    if not grid or grid != sorted(r.config.eta for r in minibatch):
        raise ValueError(
            "tuned_local and tuned_minibatch must be runs over the same step grid, got "
            f"{grid} and {sorted(r.config.eta for r in minibatch)}"
        )
    return grid


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def communication(
    shrinking: Mapping[int, object],
    fixed: Mapping[int, object],
    tuned_local: Sequence,
    tuned_minibatch: Sequence,
    eps: float,
    lam_ratio: float,
    tolerance: float = 1.5,
    min_saving: float = 2.0,
) -> list[Check]:
    """The chapter's checks.

    ``shrinking``, ``fixed``: ``{tau: Result}`` of Local SGD with the theorems' step ``eta = c n /
    (lambda_max tau)`` and with one step for every ``tau`` (both ``eta_rule="ntk"``);
    ``tuned_local`` / ``tuned_minibatch``: Local SGD and minibatch SGD at equal computation, one run
    per step of the same grid; ``lam_ratio``: median ``lambda_min / lambda_max`` of the Gram at
    initialisation. Predictions: every run of the two sweeps reaches ``eps``; with the theorems'
    step the rounds ratio ``R(tau_max) / R(tau_min)`` is the linearised model's
    (:func:`localsgd.theory.rounds_ratio_at_fixed_eta_tau`, about 1) within ``tolerance``; at a
    fixed step the rounds fall, by at most ``tau_max / tau_min`` (every local step worth a global
    one) and by at least ``min_saving`` times more than with the theorems' step; tuned, Local SGD
    needs no more rounds than minibatch SGD (Woodworth et al. 2020 for quadratic objectives, which
    the linearised model is). Raises ValueError for sweeps over different ``tau``, a "shrinking"
    sweep whose ``eta * tau`` is not constant, or tuned runs over different grids.
    """
    taus = sorted(shrinking)
    if len(taus) < 2 or sorted(fixed) != taus:
        raise ValueError(
            f"shrinking and fixed must cover the same >= 2 values of tau, got {taus} and "
            f"{sorted(fixed)}"
        )
    cs = {round(step_fraction(shrinking[t]), 9) for t in taus}
    if len(cs) != 1:
        raise ValueError(f"shrinking must hold eta * tau fixed across tau, got {sorted(cs)}")
    c = cs.pop()
    _check_grids(tuned_local, tuned_minibatch)
    t0, t1 = taus[0], taus[-1]
    R = {k: {t: float(np.median(rounds_to_eps(runs[t], eps))) for t in taus}
         for k, runs in (("shrinking", shrinking), ("fixed", fixed))}
    misses = sum(int(np.sum(~np.isfinite(rounds_to_eps(runs[t], eps))))
                 for runs in (shrinking, fixed) for t in taus)
    pred = float(theory.rounds_ratio_at_fixed_eta_tau(c, lam_ratio, t1, t0))
    shrink_ratio = _ratio(R["shrinking"][t1], R["shrinking"][t0])
    fixed_ratio = _ratio(R["fixed"][t1], R["fixed"][t0])
    best_local, _ = best_rounds(tuned_local, eps)
    best_mb, _ = best_rounds(tuned_minibatch, eps)
    tl = tuned_local[0].config
    tm = tuned_minibatch[0].config
    return [
        Check.at_most(f"seeds of the τ sweeps that miss ε = {eps:g} or diverge", misses, 0,
                      basis="theory"),
        Check.between(f"R(τ={t1}) / R(τ={t0}), step η ∝ 1/τ", shrink_ratio, pred / tolerance,
                      pred * tolerance, fmt=".3g", basis="computed"),
        Check.at_least(f"R(τ={t1}) / R(τ={t0}), fixed step", fixed_ratio, t0 / t1, fmt=".3g",
                       basis="computed"),
        Check.at_most(f"R(τ={t1}) / R(τ={t0}), fixed step, against the theorems' step's "
                      f"ratio / {min_saving:g}", fixed_ratio, shrink_ratio / min_saving, fmt=".3g",
                      basis="tolerance"),
        Check.at_most(f"best rounds, Local SGD (τ={tl.tau}, b={tl.batch_size}) / minibatch SGD "
                      f"(b={tm.batch_size}), each tuned", _ratio(best_local, best_mb), 1.0,
                      basis="theory"),
    ]
