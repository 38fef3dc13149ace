"""Chapter 07's runs and checks: iterations to a target loss, predicted run by run by the kernel
model of each run, and their growth in ``n``, ``1/delta`` and ``L`` beside ALS19's bound.

The prediction for one run is its kernel model's iterations to each target ``eps``
(:func:`localsgd.kernel.predict`: the linearised network of the run's own initialisation, fed
its split and step sizes, in float64). Beside it, the bound of gradient descent on that
linearised model along its slowest direction, ``n log(F0/eps) / (2 eta lambda_min(G_0))``
(:func:`localsgd.theory.iterations_to_eps`), is shown as the upper bound it is, not checked.

Three parts, all built here so that the notebook and the negative-control tests run the same
code:

* a width axis (:func:`width_axis`): one configuration at several widths, checked with the
  shared checks of :mod:`localsgd.claims.kernel_model` (the network approaches its kernel model
  as ``m`` grows, and takes within a quarter of its kernel model's iterations at the widest);
* sweeps over ``n``, ``1/delta`` and ``L`` at one width (:func:`sweep`): every run below its
  critical step, reaching every ``eps`` within the horizon, linearly in ``log(1/eps)``; the
  exponents of the network's counts and of its kernel model's are reported beside ALS19's;
* the infinite-width kernel model (:func:`limit_sweep`, the ``m -> oo`` model), which costs
  seconds for ``n`` up to thousands: its exponents in ``n``, ``1/delta`` and ``L`` must lie
  below those of ALS19's bound, ``T = O(n^6 L^2 / delta^2 log(1/eps))`` (their Theorem 1).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis, kernel, model, theory
from .. import experiments as ex
from . import Check, Tolerance
from . import kernel_model as km

__all__ = [
    "ALS19_EXPONENTS", "TOLERANCES", "HORIZONS", "Limit", "Planned", "Sweep", "checks",
    "at_init", "exponent", "limit_sweep", "linear_in_log", "planned", "sweep",
    "width_axis",
]

# ALS19, Theorem 1: T = O(n^6 L^2 / delta^2 * log(1/eps)) for gradient descent.
ALS19_EXPONENTS = {"n": 6.0, "1/δ": 2.0, "L": 2.0}

# A run first gets HORIZONS[0] times its kernel model's iterations to the smallest target (the
# largest over its seeds), then, while a seed has not reached it, the next multiple.
HORIZONS = (2, 4, 8)

TOLERANCES = {
    "sqrt_m_distance": Tolerance(
        1.6, "ci-fit",
        "the largest sqrt(m) D over the ci profile's width axis (m = 128, 256, 512; 2 seeds "
        "each), 1.08 at m = 128, times 1.5 for the exponent of D drifting from -1/2 between the "
        "ci profile's widths and the default profile's, rounded down"),
    "horizon": Tolerance(
        float(HORIZONS[-1]), "prior",
        "fixed before any run: a run gets up to this many times its kernel model's iterations "
        "to the smallest target; a slower run counts as not reaching it"),
    "critical": km.TOLERANCES["critical"],
}


def at_init(exp):
    """``(lambda_min, lambda_max, F0)`` of the NTK Gram at initialisation and the initial loss,
    each ``(S,)`` (float64), for every seed of ``exp`` (an
    :class:`~localsgd.experiments.Experiment`), from the initialisations its run starts from
    (:func:`localsgd.experiments.init_params`), in one compiled program per shape."""
    from .. import engine

    clients, _, _ = ex.load_data(exp)
    spec = exp.net_spec(clients.x.shape[-1], clients.y.shape[-1])
    params0, _ = ex.init_params(exp, spec)
    dtype = jnp.dtype(exp.dtype)
    with engine.precision(exp.run_config()):
        params0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), params0)
        x = jnp.asarray(np.asarray(clients.x)[np.asarray(clients.mask) > 0], dtype)
        y = np.asarray(clients.y, np.float64)[np.asarray(clients.mask) > 0]
        lo, hi, out = _extremes_and_outputs(spec, params0, x)
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64), kernel.loss(out, y)


@functools.partial(jax.jit, static_argnums=0)
def _extremes_and_outputs(spec, params0, x):
    """:func:`at_init`'s ``(lambda_min, lambda_max, outputs)`` of every seed, compiled once per
    shape rather than run op by op."""
    return jax.vmap(lambda p: (*theory.gram_extremes(spec, p, x), model.apply(spec, p, x)))(
        params0)


class Planned(NamedTuple):
    """One run with its kernel model and its ``lambda_min`` bound.

    ``result``: the run (:class:`~localsgd.experiments.Result`); ``pred``: its kernel model
    (:class:`~localsgd.kernel.Prediction`, the same recorded rounds); ``measured, kernel,
    bound: (S, E)`` iterations to each target (inf: not reached) of the network, of its kernel
    model and the ``lambda_min`` bound; ``horizon``: the multiple of the kernel model's count the
    run got."""

    result: object
    pred: kernel.Prediction
    measured: np.ndarray
    kernel: np.ndarray
    bound: np.ndarray
    horizon: float


def _first_rounds(pred: kernel.Prediction, exp) -> kernel.Prediction:
    """The kernel model of a full-batch run cut to the first ``exp.rounds`` rounds (the
    recursion does not depend on the rounds that follow)."""
    E = exp.rounds // exp.eval_every + 1
    return dataclasses.replace(pred, config=exp, rounds=pred.rounds[:E],
                               outputs=pred.outputs[:, :E], loss=pred.loss[:, :E])


def _rounds(exp, iterations: float) -> int:
    """Rounds for ``iterations`` local steps, rounded up to a multiple of ``eval_every``."""
    per = exp.tau * exp.eval_every
    return exp.eval_every * max(1, math.ceil(iterations / per))


def planned(exp, eps) -> Planned:
    """Runs ``exp`` (its ``rounds`` ignored) for :data:`HORIZONS` times its kernel model's
    iterations to ``min(eps)`` (the largest over seeds), each horizon in turn while a seed has
    not reached it, and returns the run with its kernel model. ``eps: (E,)`` targets.
    ``exp.algorithm`` must be a full-batch one (the kernel model is computed once, for the
    longest horizon, and cut)."""
    from .. import algorithms

    if algorithms.get(exp.algorithm).stochastic:
        raise ValueError(f"exp.algorithm must be a full-batch algorithm, got {exp.algorithm!r}")
    eps = np.asarray(eps, float)
    lam, lam_max, F0 = at_init(exp)
    # the step of the NTK rule (the run's own comes with its kernel model), to size the horizon
    eta = exp.eta * exp.n / lam_max if exp.eta_rule == "ntk" else np.full_like(lam, exp.eta)
    bound = theory.iterations_to_eps(F0[:, None], eps[None, :], eta[:, None], lam[:, None], exp.n)
    # the kernel model, long enough for the longest horizon (the bound is an upper bound for
    # gradient descent on it; Local GD may take a little longer, hence the doubling)
    probe = exp.replace(rounds=_rounds(exp, 2 * HORIZONS[-1] * np.max(bound)))
    pred = kernel.predict(probe)
    T_kernel = np.stack([pred.iterations_to(e) for e in eps], axis=-1)
    longest = np.max(T_kernel[:, -1])
    if not np.isfinite(longest):  # the kernel model itself never gets there: one long run
        longest = np.max(bound) * HORIZONS[-1]
    for h in HORIZONS:
        run_exp = exp.replace(rounds=min(_rounds(exp, h * longest), probe.rounds))
        result = ex.run(run_exp)
        measured = np.stack([analysis.iterations_to(result.iterations, result.metrics["loss"], e)
                             for e in eps], axis=-1)
        if np.all(np.isfinite(measured[:, -1])):
            break
    pred = _first_rounds(pred, run_exp)
    bound = theory.iterations_to_eps(pred.loss[:, :1], eps[None, :], pred.eta[:, None],
                                     lam[:, None], exp.n)
    return Planned(result, pred, measured, T_kernel, bound, float(h))



def width_axis(base, widths, eps, bootstrap: int = 1000):
    """The runs of ``base`` at every width (:func:`planned`) and their comparison with their
    kernel models: ``({m: Planned}, WidthAxis)``, ``D`` up to the kernel model's time to
    ``min(eps)`` (:func:`localsgd.claims.kernel_model.width_axis`)."""
    runs = {int(m): planned(base.replace(m=int(m)), eps) for m in widths}
    axis = km.width_axis({m: p.result for m, p in runs.items()},
                         {m: p.pred for m, p in runs.items()}, eps=float(np.min(eps)),
                         bootstrap=bootstrap)
    return runs, axis


class Sweep(NamedTuple):
    """Runs of one configuration over one variable: ``x: (P,)`` its values; ``runs``: ``P``
    :class:`Planned`; ``measured, kernel, bound: (P, S, E)`` iterations to each target;
    ``critical: (P, S)`` ``eta * sharpness`` of every run."""

    x: np.ndarray
    runs: list
    measured: np.ndarray
    kernel: np.ndarray
    bound: np.ndarray
    critical: np.ndarray


def sweep(base, x, changes, eps, done: dict | None = None) -> Sweep:
    """:func:`planned` runs of ``base.replace(**c)`` for every ``c`` in ``changes``, one for
    every value of ``x: (P,)``. ``done``: a dict ``{Experiment: Planned}`` of runs already made
    (sweeps through one base configuration share it), filled with the new ones."""
    done = {} if done is None else done
    runs = []
    for c in changes:
        exp = base.replace(**c)
        if exp not in done:
            done[exp] = planned(exp, eps)
        runs.append(done[exp])
    return Sweep(np.asarray(x, float), runs, *(np.stack([getattr(p, k) for p in runs])
                                               for k in ("measured", "kernel", "bound")),
                 np.stack([p.pred.critical for p in runs]))


class Limit(NamedTuple):
    """The infinite-width kernel model over one variable: ``x: (P,)``; ``iterations: (P, E)``
    to each target (inf: not reached within the horizon); ``bound: (P, E)`` the
    ``lambda_min`` bound; ``critical: (P,)`` ``eta * sharpness``; ``lam_min: (P,)``
    ``lambda_min`` of the limit kernel (per unit width)."""

    x: np.ndarray
    iterations: np.ndarray
    bound: np.ndarray
    critical: np.ndarray
    lam_min: np.ndarray


def limit_counts(exp, eps, records: int = 400):
    """The ``m -> oo`` kernel model of ``exp``'s data, split, depth, ``tau`` and step rule:
    the infinite-width kernel (:func:`localsgd.theory.gram_infinity_deep`, per unit width; the
    step ``eta * n / lambda_max`` of the NTK rule makes the width cancel), with **zero initial
    outputs** (no network is drawn: the residual starts at the targets). Recorded ``records``
    times over a horizon of the ``lambda_min`` bound at ``min(eps)``, doubled (up to 8 times)
    while the model has not reached it. ``exp.eta_rule`` must be ``"ntk"`` and ``exp.arch``
    ``"deep"``. Returns ``(iterations (E,), bound (E,), critical, lam_min)``: the iterations to
    each target (inf: not reached), the bound, ``eta * sharpness`` and ``lambda_min`` of the
    kernel."""
    if exp.eta_rule != "ntk" or exp.arch != "deep":
        raise ValueError(f"exp must use eta_rule='ntk' and arch='deep', got {exp.eta_rule!r} "
                         f"and {exp.arch!r}")
    eps = np.asarray(eps, float)
    clients, _, _ = ex.load_data(exp)
    mask = np.asarray(clients.mask)
    x = np.asarray(clients.x, np.float64)[mask > 0]
    y = np.asarray(clients.y, np.float64)[mask > 0]
    gram = theory.gram_infinity_deep(x, exp.L, y.shape[1])
    lam = np.linalg.eigvalsh(gram)
    n = x.shape[0]
    eta = exp.eta * n / lam[-1]
    prob = kernel.problem(gram, np.zeros_like(y), y, mask)
    bound = theory.iterations_to_eps(float(kernel.loss(np.zeros_like(y), y)), eps, eta, lam[0], n)
    for h in (1, 2, 4, 8):
        every = max(1, math.ceil(h * np.max(bound) / exp.tau / records))
        cfg = exp.replace(eval_every=every, rounds=every * records).run_config(eta)
        loss = kernel.loss(kernel.trajectory(cfg, prob, eta), y)
        its = np.arange(records + 1) * every * exp.tau
        T = np.array([float(analysis.iterations_to(its, loss, e)) for e in eps])
        if np.all(np.isfinite(T)):
            break
    return T, bound, eta * kernel.sharpness(cfg, prob), float(lam[0])


def limit_sweep(base, x, changes, eps) -> Limit:
    """:func:`limit_counts` of ``base.replace(**c)`` for every ``c`` in ``changes``, one for
    every value of ``x: (P,)``."""
    out = [limit_counts(base.replace(**c), eps) for c in changes]
    return Limit(np.asarray(x, float), np.stack([o[0] for o in out]),
                 np.stack([o[1] for o in out]), np.array([o[2] for o in out]),
                 np.array([o[3] for o in out]))


def exponent(x, T, bootstrap: int = 1000, seed: int = 0):
    """Exponent of ``T ~ x^p`` with its bootstrap interval over seeds: ``x: (P,)``,
    ``T: (P, S)`` -> ``(p, low, high)`` (:func:`localsgd.analysis.bootstrap_loglog`); NaN
    unless every count is finite and positive (a run that never got there fails what is built
    on it, rather than being left out of the fit)."""
    T = np.asarray(T, float)
    if not np.all(np.isfinite(T) & (T > 0)):
        return (math.nan,) * 3
    level = km.TOLERANCES["level"].value
    return analysis.bootstrap_loglog(x, T, bootstrap=bootstrap, level=level, seed=seed)


def linear_in_log(T, eps):
    """For every run, whether its iterations to the targets are better described by a line in
    ``log(1/eps)`` (linear convergence) than by a line in ``1/eps`` (a sublinear ``O(1/T)``
    rate): ``T: (R, E)`` -> ``(r2_log (R,), r2_inv (R,))``, the R² of each fit (NaN for a run
    that missed a target)."""
    T = np.asarray(T, float)
    eps = np.asarray(eps, float)
    out = np.full((2, T.shape[0]), np.nan)
    for r, row in enumerate(T):
        if np.all(np.isfinite(row)):
            out[0, r] = analysis.fit(np.log(1 / eps), row).r2
            out[1, r] = analysis.fit(1 / eps, row).r2
    return out[0], out[1]


def _limit_exponent(lim: Limit) -> float:
    return analysis.exponent(lim.x, lim.iterations[:, -1])


def checks(axis: km.WidthAxis, sweeps: dict, limits: dict, eps) -> list[Check]:
    """The verdict of chapter 07.

    ``axis``: the width axis (:func:`width_axis`), with the shared checks and the chapter's
    bound on ``sqrt(m) D``; ``sweeps[name]``: :class:`Sweep` over ``name`` (``"n"``, ``"1/δ"``,
    ``"L"``): every run below its critical step, every run reaching every target within
    :data:`HORIZONS` ``[-1]`` times its kernel model's count, and every run's counts closer to a
    line in ``log(1/eps)`` than to one in ``1/eps``; ``limits[name]``: :class:`Limit`, the
    ``m -> oo`` kernel model, whose exponent in each variable (at the smallest target) must not
    exceed ALS19's and whose steps are below the critical step. ``eps: (E,)``."""
    out = km.checks(axis, TOLERANCES["sqrt_m_distance"], label="width axis")
    crit = TOLERANCES["critical"]
    sw = list(sweeps.values())
    worst = max(float(np.max(s.critical)) for s in sw)
    out.append(Check.at_most(
        r"sweeps: largest \(\eta\,\lambda_{\max}(D_B^{1/2} G_{BB} D_B^{1/2})\) of a local update",
        worst, crit.value, fmt=".3g", basis=crit.basis))
    runs = list({id(p): p for s in sw for p in s.runs}.values())  # the sweeps share their base
    total = sum(p.measured.shape[0] for p in runs)
    reached = sum(int(np.all(np.isfinite(p.measured), axis=-1).sum()) for p in runs)
    out.append(Check(
        rf"sweeps: runs that reached every \(\varepsilon\) within "
        rf"{TOLERANCES['horizon'].value:g} times their kernel model's iterations",
        f"all {total}", reached, reached == total, basis="computed"))
    r2_log, r2_inv = linear_in_log(np.concatenate([p.measured for p in runs]), eps)
    better = int(np.sum(r2_log > r2_inv))
    out.append(Check(
        r"sweeps: runs whose iterations are closer to a line in \(\log(1/\varepsilon)\) than "
        r"in \(1/\varepsilon\) (linear convergence)", f"all {total}", better, better == total,
        basis="computed"))
    for name, lim in limits.items():
        p, bound = _limit_exponent(lim), ALS19_EXPONENTS[name]
        out.append(Check(
            rf"\(m \to \infty\) kernel model: exponent of the iterations in \({_tex(name)}\)",
            f"≤ {bound:g} (ALS19's bound)", p, bool(p <= bound), basis="theory"))
    lim_crit = max(float(np.max(lim.critical)) for lim in limits.values())
    out.append(Check.at_most(
        r"\(m \to \infty\) kernel model: largest \(\eta\,\lambda_{\max}\) of a local update",
        lim_crit, crit.value, fmt=".3g", basis=crit.basis))
    return out


def _tex(name: str) -> str:
    return {"1/δ": r"1/\delta"}.get(name, name)
