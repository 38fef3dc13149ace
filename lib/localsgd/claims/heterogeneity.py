"""Chapter 10 (heterogeneity): how the label skew of a partition changes the rate at which Local
SGD reaches a target loss, the network against the kernel model of its own run
(:mod:`localsgd.kernel`) over a width axis, with the infinite-width kernel as the ``m -> oo``
reference; FedProx and SCAFFOLD beside it with their kernel models, and Local SGD at a fixed step
beyond the linearised regime as an observation.

:func:`plan` builds the chapter's experiments from one base configuration (the notebook and its
negative-control tests build them through it); the other functions take recorded results and
kernel models and run nothing.

The skew effect of a set of runs over partitions is the slope of the logarithm of the rate per
round (:func:`rate`) against the partition's label skew (:func:`skew_slopes`, per seed). The
kernel model's rate is compared with the network's at a loss ``eps_compare`` early enough in a run
that the residual is still large against the network's distance from its kernel model (late in a
run, at the widths a CPU affords, the distance is as large as what is left of the residual and
the model no longer predicts the network's rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from .. import analysis, data, experiments, kernel
from . import Check, Tolerance
from . import kernel_model as km
from .communication import rounds_to_eps

__all__ = ["TOLERANCES", "SkewAxis", "heterogeneity", "label_skews", "partition_name",
           "partitions", "plan", "rate", "skew_axis", "skew_fit", "skew_slopes"]

TOLERANCES = {
    "critical": km.TOLERANCES["critical"],
    "level": km.TOLERANCES["level"],
    "compare_loss": Tolerance(
        0.2, "ci-fit",
        "the loss at which the rates of the network and its kernel models are compared, chosen "
        "on runs of the ci profile's sizes (widths 32 to 512, 5 seeds): down to 0.01 the "
        "network's distance from its kernel model is as large as what is left of the residual "
        "and the difference of skew slopes did not shrink with m (exponent -0.06, interval -0.45 "
        "to 0.31); at 0.2, where the residual is still about half the initial one (F_0 about "
        "0.7), it did (exponent -1.5, interval -1.9 to -1.2)"),
    "sqrt_m_distance": Tolerance(
        2.4, "ci-fit",
        "1.5 times the largest sqrt(m) D (1.62) over every run of the ci profile with the "
        "theorems' step (Local SGD at widths 32 to 128, FedProx and SCAFFOLD at 128; 3 "
        "partitions, 3 seeds), rounded down; the margin lets the exponent of D stay above -1/2 "
        "(ci: -0.30) up to the default profile's widest width"),
}


def partitions(alphas: Sequence[float]) -> list[tuple[str, float]]:
    """``(scheme, alpha)`` from the iid split through Dirichlet(``alpha``) for every ``alphas``
    (in the order given) to the label shards."""
    return [("iid", 1.0)] + [("dirichlet", float(a)) for a in alphas] + [("shards", 1.0)]


def partition_name(part: tuple[str, float]) -> str:
    """``"iid"``, ``"Dirichlet(0.5)"`` or ``"shards"``."""
    scheme, alpha = part
    return f"Dirichlet({alpha:g})" if scheme == "dirichlet" else scheme


def plan(base, parts: Sequence[tuple[str, float]], widths: Sequence[int], c: float,
         others: Sequence[str] = ("fedprox", "scaffold"), prox_mu: float = 0.1) -> dict[str, dict]:
    """The chapter's experiments, ``{arm: {key: Experiment}}``, from ``base`` (Local SGD with
    ``eta_rule="ntk"``, its ``tau``, batch size and width ``m``; the metrics ``"loss"`` and
    ``"outputs"`` are added), over the partitions ``parts``:

    * ``"width"``, ``{(m, part): ...}``: Local SGD with the theorems' step
      ``eta = c n / (lambda_max tau)`` at every width of ``widths`` (three or more, ``m`` among
      them);
    * ``"fixed"``, ``{part: ...}``: Local SGD at width ``m`` with the fixed step
      ``eta = c n / lambda_max`` at each of its ``tau`` local steps;
    * one arm per algorithm of ``others``, ``{part: ...}``: that algorithm at width ``m`` with
      the theorems' step (FedProx with its weight ``prox_mu``).
    """
    if base.algorithm != "local_sgd" or base.eta_rule != "ntk":
        raise ValueError("base must be Local SGD with eta_rule='ntk', got "
                         f"algorithm={base.algorithm!r}, eta_rule={base.eta_rule!r}")
    if len(parts) < 2:
        raise ValueError(f"parts must hold two or more partitions, got {list(parts)}")
    if len(set(widths)) < 3 or base.m not in widths:
        raise ValueError(f"widths must hold three or more widths, m={base.m} among them, got "
                         f"{list(widths)}")
    bad = [a for a in others if a not in ("fedprox", "scaffold")]
    if bad:
        raise ValueError(f"others must name 'fedprox' or 'scaffold', got {bad}")
    metrics = tuple(dict.fromkeys(tuple(base.metrics) + ("loss", "outputs")))
    base = base.replace(metrics=metrics)
    small = c / base.tau

    def at(part, **kw):
        return base.replace(partition=part[0], alpha=part[1], **kw)

    out = {
        "width": {(int(m), p): at(p, m=int(m), eta=small) for m in sorted(set(widths))
                  for p in parts},
        "fixed": {p: at(p, eta=c) for p in parts},
    }
    for a in others:
        mu = {"prox_mu": prox_mu} if a == "fedprox" else {}
        out[a] = {p: at(p, algorithm=a, eta=small, **mu) for p in parts}
    return out


def label_skews(exps: Sequence) -> np.ndarray:
    """The label skew (:func:`localsgd.data.label_skew`) of the partition of every experiment,
    ``(P,)``."""
    out = []
    for e in exps:
        _, _, labels = experiments.load_data(e)
        parts = data.partition(labels, e.num_clients, e.partition, alpha=e.alpha, seed=e.data_seed)
        out.append(data.label_skew(labels, parts))
    return np.array(out)


def rate(rounds, loss, eps: float, diverged=None) -> np.ndarray:
    """Per seed, the average rate per round at which the loss falls while it is above ``eps``:
    ``log(F_0 / eps) / R_eps`` with ``R_eps`` the rounds to ``eps`` (interpolated), or
    ``log(F_0 / F_T) / T`` over the ``T`` recorded rounds of a seed that never gets there.
    ``rounds: (E,)``, ``loss: (S, E)``; ``diverged: (S,)`` rounds of divergence (-1: none)
    make those seeds' rates NaN. Returns ``(S,)``."""
    rounds = np.asarray(rounds, float)
    loss = np.asarray(loss, float)
    R = analysis.iterations_to(rounds, loss, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        reached = np.log(loss[:, 0] / eps) / R
        ended = np.log(loss[:, 0] / loss[:, -1]) / rounds[-1]
    out = np.where(np.isfinite(R), reached, ended)
    if diverged is not None:
        out = np.where(np.asarray(diverged) >= 0, np.nan, out)
    return out


def _rates(run_or_pred, eps: float) -> np.ndarray:
    if isinstance(run_or_pred, kernel.Prediction):
        return rate(run_or_pred.rounds, run_or_pred.loss, eps)
    return rate(run_or_pred.rounds, run_or_pred.metrics["loss"], eps, run_or_pred.diverged_at)


def skew_slopes(skews, rates) -> np.ndarray:
    """Per seed, the least-squares slope of ``log(rate)`` against the skew over the partitions:
    ``skews: (P,)``, ``rates: (P, S)`` -> ``(S,)`` (NaN for a seed with a rate that is not a
    positive number)."""
    x = np.asarray(skews, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(rates, float))
    xc = x - x.mean()
    return (xc @ (y - y.mean(axis=0))) / (xc @ xc)


def skew_fit(skews, rates) -> analysis.Fit:
    """The slope of ``log(rate)`` against the skew shared by every seed, each seed with its own
    intercept (``rates: (P, S)``; the seeds start from different initial outputs, whose rates
    differ by a factor that the skew does not change), with its 95 % interval (Student t with
    ``P S - S - 1`` degrees of freedom). The intercept is the seeds' mean. Every number NaN when
    a rate is not a positive number or there are too few points for an interval."""
    x = np.asarray(skews, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(rates, float))
    P, S = y.shape
    dof = P * S - S - 1
    nan = float("nan")
    if not np.all(np.isfinite(y)) or dof < 1 or np.ptp(x) == 0:
        return analysis.Fit(nan, nan, nan, nan, nan, nan, int(np.sum(np.isfinite(y))))
    xc = x - x.mean()
    yc = y - y.mean(axis=0)
    slope = float(np.sum(xc[:, None] * yc) / (S * xc @ xc))
    resid = yc - slope * xc[:, None]
    se = float(np.sqrt(np.sum(resid**2) / dof / (S * xc @ xc)))
    half = stats.t.ppf(0.5 + TOLERANCES["level"].value / 2, dof) * se
    r2 = 1.0 - float(np.sum(resid**2) / np.sum(yc**2)) if np.sum(yc**2) > 0 else 1.0
    return analysis.Fit(slope, float(np.mean(y) - slope * x.mean()), se, slope - half,
                        slope + half, r2, P * S)


class SkewAxis(NamedTuple):
    """The skew effect over a width axis: ``widths: (W,)``; ``skews: (P,)``; ``network``,
    ``kernel``: the rates ``(W, P, S)`` of the network and its kernel model to ``eps``;
    ``infinite``: the infinite-width kernel model's, ``(P, S)``, from the initial outputs and steps
    of the widest width's runs; ``difference: (W, S)`` the network's skew slope minus its kernel
    model's, per seed; ``exponent``, ``low``, ``high``: the fitted exponent of ``|difference|`` in
    ``m`` and its bootstrap interval."""

    widths: np.ndarray
    skews: np.ndarray
    network: np.ndarray
    kernel: np.ndarray
    infinite: np.ndarray
    difference: np.ndarray
    exponent: float
    low: float
    high: float
    eps: float

    def slopes(self, which: str) -> np.ndarray:
        """The per-seed skew slopes of ``"network"`` or ``"kernel"``, ``(W, S)``."""
        return np.stack([skew_slopes(self.skews, r) for r in getattr(self, which)])


def skew_axis(skews, runs: Mapping, preds: Mapping, infinite: Mapping,
              bootstrap: int = 1000) -> SkewAxis:
    """The :class:`SkewAxis` of ``runs: {(m, part): Result}`` (the ``"width"`` arm of
    :func:`plan`), their kernel models ``preds`` (same keys) and the infinite-width kernel models
    ``infinite: {part: Prediction}`` of the widest width's runs, over the partitions in the order
    of ``skews: (P,)``, with the rates to ``TOLERANCES["compare_loss"]``."""
    eps = TOLERANCES["compare_loss"].value
    widths = sorted({m for m, _ in runs})
    parts = list(dict.fromkeys(p for _, p in runs))
    if len(parts) != len(skews):
        raise ValueError(f"skews must give one value per partition {parts}, got {list(skews)}")
    net, ker = (np.stack([np.stack([_rates(src[(m, p)], eps) for p in parts]) for m in widths])
                for src in (runs, preds))
    inf = np.stack([_rates(infinite[p], eps) for p in parts])
    diff = np.stack([skew_slopes(skews, net[i]) - skew_slopes(skews, ker[i])
                     for i in range(len(widths))])
    p, lo, hi = analysis.bootstrap_loglog(np.array(widths, float), np.abs(diff),
                                          bootstrap=bootstrap,
                                          level=TOLERANCES["level"].value)
    return SkewAxis(np.array(widths), np.asarray(skews, float), net, ker, inf, diff, p, lo, hi,
                    eps)


def pooled_width_axis(runs: Mapping, preds: Mapping, eps: float,
                      bootstrap: int = 1000) -> km.WidthAxis:
    """One :class:`localsgd.claims.kernel_model.WidthAxis` for ``runs: {(m, part): Result}``
    over every partition: each partition's runs are one configuration over the widths, and the
    partitions enter as further seeds (``D: (W, P * S)``), so that the shared checks judge the
    worst run of every partition and fit one exponent."""
    parts = list(dict.fromkeys(p for _, p in runs))
    axes = [km.width_axis({m: r for (m, q), r in runs.items() if q == p},
                          {m: r for (m, q), r in preds.items() if q == p}, eps,
                          bootstrap=bootstrap) for p in parts]
    dist = np.concatenate([a.distance for a in axes], axis=1)
    ratio = np.concatenate([a.ratio for a in axes], axis=1)
    crit = np.concatenate([a.critical for a in axes], axis=1)
    p, lo, hi = analysis.bootstrap_loglog(axes[0].widths, dist, bootstrap=bootstrap,
                                          level=TOLERANCES["level"].value)
    return km.WidthAxis(axes[0].widths, dist, ratio, crit, p, lo, hi, eps)


def heterogeneity(axis: km.WidthAxis, skew: SkewAxis, widest: Sequence, eps: float,
                  others: Mapping[str, tuple[int, np.ndarray]] | None = None) -> list[Check]:
    """The chapter's checks:

    * the shared checks (:func:`localsgd.claims.kernel_model.checks`) of the Local SGD width axis
      over every partition (``axis``, :func:`pooled_width_axis`), with the chapter's bound on
      ``sqrt(m) * D``; the network's time to ``eps`` over its kernel model's is shown beside
      them, not checked (see the module docstring);
    * every seed on every partition reaches ``eps`` at the widest width (``widest``: those runs;
      the theorems assume nothing of how the data are split);
    * the difference between the network's skew slope and its kernel model's shrinks as the
      width grows: the upper end of the interval of its exponent in ``m`` lies below 0;
    * the skew slows the infinite-width kernel model (the upper end of the 95 % interval of its
      skew slope, at the widest width's initial outputs and steps, below 0: heterogeneity does not
      vanish as ``m -> oo``) and the network at the widest width (the same for its slope);
    * ``others``: for FedProx and SCAFFOLD, ``{name: (m, D)}`` with ``D`` over every partition and
      seed at width ``m`` (:func:`localsgd.kernel.distance`): the largest ``sqrt(m) * D``
      within the same bound.
    """
    out = km.checks(axis._replace(eps=None), TOLERANCES["sqrt_m_distance"],
                    label=r"Local SGD, theorems' step")
    misses = sum(int(np.sum(~np.isfinite(rounds_to_eps(r, eps)))) for r in widest)
    out.append(Check.at_most(
        rf"seeds that miss \(\varepsilon = {eps:g}\) or diverge at \(m = {int(skew.widths[-1])}\), "
        "every partition", misses, 0, basis="theory"))
    level = TOLERANCES["level"].value
    out.append(Check(
        rf"\(|\)network's − kernel model's skew slope\(|\) against \(m\): exponent "
        rf"({skew.exponent:.2f}), upper end of its {level:.0%} interval", "< 0", skew.high,
        bool(skew.high < 0), "theory"))
    for rates, name in ((skew.infinite, "infinite-width kernel model"),
                        (skew.network[-1], "network")):
        f = skew_fit(skew.skews, rates)
        out.append(Check(
            rf"slope of \(\log\) rate against skew, {name} at \(m = {int(skew.widths[-1])}\): "
            f"upper end of its {level:.0%} interval", "< 0", f.high, bool(f.high < 0),
            "computed"))
    bound = TOLERANCES["sqrt_m_distance"]
    for name, (m, dist) in (others or {}).items():
        worst = float(np.sqrt(m) * np.max(dist)) if np.all(np.isfinite(dist)) else float("inf")
        out.append(Check.at_most(
            rf"{name}: \(\sqrt{{m}}\,D\) at \(m = {int(m)}\) (worst partition and seed)",
            worst, bound.value, fmt=".3g", basis=bound.basis))
    return out

