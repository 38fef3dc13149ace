"""Chapter 09 (communication): rounds to a target loss against the local steps ``tau``, at the
theorems' step (``eta`` proportional to ``1/tau``) and at a fixed step, and Local SGD against
minibatch SGD at equal computation with each method's step tuned over one grid; every run beside
the kernel model of its own run (:mod:`localsgd.kernel`), and one configuration over a width axis
(:mod:`localsgd.claims.kernel_model`).

:func:`plan` builds the chapter's experiments from one base configuration (the notebook and its
negative-control tests build them through it); the other functions take recorded results and
their kernel models (:func:`predictions`) and run nothing.

At the widths a CPU affords, the network needs more rounds to ``eps`` than its kernel model (late
in a run the residual is no longer large against the network's distance from the model), by a
factor that hardly depends on ``tau`` or on the method. So the checks compare what the chapter is
about, ratios of rounds (``tau_max`` against ``tau_min``, Local SGD against minibatch SGD), with
the same ratios of the kernel models, in which that common factor cancels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import analysis, kernel
from . import Check, Tolerance
from . import kernel_model as km

__all__ = ["ARMS", "TOLERANCES", "communication", "in_regime", "kernel_rounds", "median_rounds",
           "plan", "predictions", "rounds", "rounds_to_eps", "tuned"]

ARMS = ("shrinking", "fixed", "local", "minibatch", "width")

TOLERANCES = {
    "critical": km.TOLERANCES["critical"],
    "level": km.TOLERANCES["level"],
    "kernel_ratio": Tolerance(
        km.TOLERANCES["iteration_ratio"].value, "prior",
        "fixed before any run, as the shared band of the network's time to eps against its "
        "kernel model's (kernel_model.TOLERANCES['iteration_ratio']): a ratio of rounds within a "
        "quarter of the kernel model's same ratio"),
    "sqrt_m_distance": Tolerance(
        2.1, "ci-fit",
        "1.5 times the largest sqrt(m) D (1.41) over every run of the ci profile inside the "
        "linearised regime (widths 64 to 256, 2 seeds); the margin lets the exponent of D stay "
        "above -1/2 (ci: -0.41) over the default profile's wider widths, and covers more seeds"),
}


def plan(base, taus: Sequence[int], c: float, rounds_shrinking: int,
         rounds_fixed: Sequence[int], tau_cmp: int, step_grid: Sequence[float],
         rounds_cmp: int, widths: Sequence[int]) -> dict[str, dict]:
    """The chapter's experiments, ``{arm: {key: Experiment}}`` for the arms :data:`ARMS`, from
    ``base`` (Local SGD with ``eta_rule="ntk"``, its batch size ``b`` and width ``m``; the
    metrics ``"loss"`` and ``"outputs"`` are added):

    * ``"shrinking"``, ``{tau: ...}``: the theorems' step ``eta = c n / (lambda_max tau)``,
      ``rounds_shrinking`` rounds;
    * ``"fixed"``, ``{tau: ...}``: ``eta = c n / lambda_max`` for every ``tau``, with
      ``rounds_fixed`` (one horizon per ``tau``);
    * ``"local"`` and ``"minibatch"``, ``{step: ...}``: equal computation, Local SGD with
      ``tau_cmp`` steps of batch ``b`` and minibatch SGD with one step of batch ``tau_cmp * b``
      per client and round, at every step fraction of ``step_grid``, ``rounds_cmp`` rounds;
    * ``"width"``, ``{m: ...}``: the fixed-step run at ``tau = tau_cmp`` (one of ``taus``) at
      every width of ``widths`` (three or more).
    """
    if base.algorithm != "local_sgd" or base.eta_rule != "ntk":
        raise ValueError("base must be Local SGD with eta_rule='ntk', got "
                         f"algorithm={base.algorithm!r}, eta_rule={base.eta_rule!r}")
    taus = [int(t) for t in taus]
    if len(taus) < 2 or taus != sorted(set(taus)):
        raise ValueError(f"taus must be two or more increasing values, got {taus}")
    if len(rounds_fixed) != len(taus):
        raise ValueError(f"rounds_fixed must give one horizon per tau: taus={taus}, "
                         f"rounds_fixed={list(rounds_fixed)}")
    if len(set(widths)) < 3:
        raise ValueError(f"widths must hold three or more widths, got {list(widths)}")
    if not step_grid:
        raise ValueError("step_grid must hold at least one step fraction")
    if tau_cmp not in taus:
        raise ValueError(f"tau_cmp must be one of taus={taus}, got {tau_cmp!r}")
    metrics = tuple(dict.fromkeys(tuple(base.metrics) + ("loss", "outputs")))
    base = base.replace(metrics=metrics)
    b = base.batch_size
    fixed = {t: base.replace(tau=t, eta=c, rounds=int(r)) for t, r in zip(taus, rounds_fixed)}
    return {
        "shrinking": {t: base.replace(tau=t, eta=c / t, rounds=rounds_shrinking) for t in taus},
        "fixed": fixed,
        "local": {float(s): base.replace(tau=tau_cmp, eta=s, rounds=rounds_cmp)
                  for s in step_grid},
        "minibatch": {float(s): base.replace(algorithm="minibatch_sgd", batch_size=tau_cmp * b,
                                             tau=1, eta=s, rounds=rounds_cmp) for s in step_grid},
        "width": {int(w): fixed[tau_cmp].replace(m=int(w)) for w in sorted(set(widths))},
    }


def predictions(runs: Mapping[str, Mapping]) -> dict[str, dict]:
    """The kernel model of every run, ``{arm: {key: kernel.Prediction}}`` for ``runs`` of the
    shape of :func:`plan` (rebuilt from the configuration each run reports)."""
    return {arm: {k: kernel.predict(r.config) for k, r in by.items()} for arm, by in runs.items()}


def rounds_to_eps(result, eps: float) -> np.ndarray:
    """Rounds each seed needs to reach ``F <= eps``, ``(S,)``: log-linearly interpolated between
    records, ``inf`` for a seed that never gets there or diverged."""
    r = analysis.iterations_to(result.rounds, result.metrics["loss"], eps)
    return np.where(np.asarray(result.diverged_at) >= 0, np.inf, r)


def kernel_rounds(pred, eps: float) -> np.ndarray:
    """The kernel model's rounds to ``F <= eps`` per seed, ``(S,)`` (inf if never)."""
    return pred.iterations_to(eps) / pred.config.tau


def in_regime(pred) -> bool:
    """Whether every local update of the run is below the linearised model's critical step
    (``eta * sharpness < 2`` for every seed)."""
    return bool(np.max(pred.critical) < km.TOLERANCES["critical"].value)


def median_rounds(values) -> float:
    """The median over seeds ``values: (S,)`` of rounds, inf when any seed is inf or NaN (a seed
    that misses counts)."""
    v = np.asarray(values, float)
    return float(np.median(v)) if np.all(np.isfinite(v)) else float("inf")


def rounds(runs: Mapping, preds: Mapping, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Median rounds to ``eps`` (:func:`median_rounds`) of the network and of its kernel model
    for every run of ``runs: {key: Result}`` (kernel models ``preds``, same keys), in the order
    of the sorted keys: ``(network (K,), kernel model (K,))``."""
    keys = sorted(runs)
    return (np.array([median_rounds(rounds_to_eps(runs[k], eps)) for k in keys]),
            np.array([median_rounds(kernel_rounds(preds[k], eps)) for k in keys]))


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def tuned(runs: Mapping[float, object], preds: Mapping[float, object], eps: float):
    """One method tuned over its grid ``{step: Result}`` with the kernel models ``preds``, over
    the steps inside the linearised regime only (:func:`in_regime`): ``(network's fewest median
    rounds to eps, its step, the kernel model's fewest, its step)``; ``(inf, nan)`` for a side
    where no such step reaches ``eps``."""
    steps = [s for s in sorted(runs) if in_regime(preds[s])]
    out = []
    for side in rounds({s: runs[s] for s in steps}, {s: preds[s] for s in steps}, eps):
        finite = [i for i, r in enumerate(side) if np.isfinite(r)]
        if not finite:
            out += [float("inf"), float("nan")]
            continue
        i = min(finite, key=lambda j: side[j])
        out += [float(side[i]), steps[i]]
    return tuple(out)


def _tau_ratio(runs, preds, eps, t0, t1):
    """``R(t1) / R(t0)`` of the network and of its kernel models."""
    net, ker = rounds({t: runs[t] for t in (t0, t1)}, {t: preds[t] for t in (t0, t1)}, eps)
    return _ratio(net[1], net[0]), _ratio(ker[1], ker[0])


def communication(runs: Mapping[str, Mapping], preds: Mapping[str, Mapping],
                  axis: km.WidthAxis, eps: float) -> list[Check]:
    """The chapter's checks, for ``runs`` of the shape of :func:`plan`, their kernel models
    ``preds`` (:func:`predictions`) and the width axis ``axis``
    (:func:`localsgd.claims.kernel_model.width_axis` of ``runs["width"]``):

    * every local update of both ``tau`` sweeps is below the linearised model's critical step;
    * every seed of both sweeps reaches ``eps`` (linear convergence, the theorems' claim);
    * for each sweep, the network's ``R(tau_max) / R(tau_min)`` (median rounds to ``eps``) over
      its kernel models' same ratio lies in ``TOLERANCES["kernel_ratio"]``: with the theorems'
      step the kernel model predicts about the same rounds for every ``tau``, at a fixed step
      fewer;
    * each method tuned over the steps of the grid inside its linearised regime, the network's
      ratio of Local SGD's rounds to minibatch SGD's over its kernel models' same ratio lies in
      the same band;
    * the shared checks of the width axis (:func:`localsgd.claims.kernel_model.checks`) with the
      chapter's bound on ``sqrt(m) * D``; the network's time to ``eps`` over its kernel model's
      is shown beside them, not checked (see the module docstring).

    Raises ValueError for sweeps over different ``tau``, a theorems' sweep whose ``eta * tau``
    is not constant, or methods tuned over different grids.
    """
    taus = sorted(runs["shrinking"])
    if len(taus) < 2 or sorted(runs["fixed"]) != taus:
        raise ValueError(f"runs['shrinking'] and runs['fixed'] must cover the same >= 2 values "
                         f"of tau, got {taus} and {sorted(runs['fixed'])}")
    cs = {round(r.config.eta * r.config.tau, 9) for r in runs["shrinking"].values()}
    if len(cs) != 1:
        raise ValueError("runs['shrinking'] must hold eta * tau fixed across tau, got "
                         f"{sorted(cs)}")
    if sorted(runs["local"]) != sorted(runs["minibatch"]):
        raise ValueError("runs['local'] and runs['minibatch'] must be runs over the same step "
                         f"grid, got {sorted(runs['local'])} and {sorted(runs['minibatch'])}")
    t0, t1 = taus[0], taus[-1]
    lo, hi = TOLERANCES["kernel_ratio"].value
    crit = km.TOLERANCES["critical"]
    worst = max(float(np.max(p.critical)) for arm in ("shrinking", "fixed")
                for p in preds[arm].values())
    misses = sum(int(np.sum(~np.isfinite(rounds_to_eps(r, eps))))
                 for arm in ("shrinking", "fixed") for r in runs[arm].values())
    out = [
        Check.at_most(r"largest \(\eta\,\lambda_{\max}(D_B^{1/2} G_{BB} D_B^{1/2})\) of a local "
                      r"update, both \(\tau\) sweeps", worst, crit.value,
                      fmt=".3g", basis=crit.basis),
        Check.at_most(rf"seeds of the \(\tau\) sweeps that miss \(\varepsilon = {eps:g}\) or "
                      "diverge", misses, 0, basis="theory"),
    ]
    for arm, label in (("shrinking", r"theorems' step \(\eta \propto 1/\tau\)"),
                       ("fixed", "fixed step")):
        net, ker = _tau_ratio(runs[arm], preds[arm], eps, t0, t1)
        out.append(Check.between(
            rf"\(R(\tau = {t1}) / R(\tau = {t0})\), {label}: network ÷ kernel model "
            f"(kernel model: {ker:.3g})", _ratio(net, ker), lo, hi, fmt=".3g",
            basis=TOLERANCES["kernel_ratio"].basis))
    net_local, _, ker_local, _ = tuned(runs["local"], preds["local"], eps)
    net_mb, _, ker_mb, _ = tuned(runs["minibatch"], preds["minibatch"], eps)
    net, ker = _ratio(net_local, net_mb), _ratio(ker_local, ker_mb)
    out.append(Check.between(
        "best rounds, Local SGD ÷ minibatch SGD at equal computation, each tuned inside the "
        f"linearised regime: network ÷ kernel model (network: {net:.3g}, kernel model: {ker:.3g})",
        _ratio(net, ker), lo, hi, fmt=".3g", basis=TOLERANCES["kernel_ratio"].basis))
    return out + km.checks(axis._replace(eps=None), TOLERANCES["sqrt_m_distance"],
                           label="width axis")
