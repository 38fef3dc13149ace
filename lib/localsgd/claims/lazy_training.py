"""Chapter 06's checks: the weights' movement from initialisation shrinks with the width at the
rates :func:`localsgd.theory.lazy_distance_exponent` derives, equals the movement of the run's
own linearised network (its kernel model), fewer activation signs flip as the width grows, and
the widest network moves by a few percent only.

The kernel model's movement: Local GD on the linearised network moves the weights only along
the rows of ``J_0`` (every step is ``-eta J_0^T r`` for a weighted residual ``r``), so
``W_t - W_0 = -J_0^T a_t`` with ``a_t`` the accumulated weighted residuals, and its outputs move by
``u_t - u_0 = -G_0 a_t``. Hence ``||W_t - W_0||_F^2 = a_t^T G_0 a_t
= (u_t - u_0)^T G_0^+ (u_t - u_0)``: the movement follows from the kernel model's outputs and the
Gram alone (:func:`kernel_movement`), without carrying ``a_t`` through the recursion.

The runs are built by :func:`experiment`, summarised per network by :func:`movement` and judged
by :func:`checks`, which read their thresholds from :data:`TOLERANCES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import analysis, experiments, kernel, theory
from . import Check, Tolerance
from . import kernel_model as km

__all__ = ["ARCHS", "TOLERANCES", "Movement", "checks", "experiment", "exponent",
           "initial_norms", "kernel_movement", "movement"]

ARCHS = ("deep", "two_layer")

TOLERANCES = {
    "exponent_allowance": Tolerance(
        0.25, "prior",
        "fixed before any run: distance allowed between a fitted exponent of the movement in m "
        "and the theory's shape (lower-order terms at finite width; the losses reached differ "
        "slightly between widths)"),
    "lazy_max": Tolerance(
        0.05, "prior",
        "fixed before any run: what lazy means in this book, the widest deep network's weights "
        "end within 5% of their initial norm (median over seeds)"),
    "movement_ratio": Tolerance(
        (0.8, 1.25), "prior",
        "fixed before any run: the network's movement within a quarter of its kernel model's, "
        "as for the iterations to eps (localsgd.claims.kernel_model)"),
    "sqrt_m_distance_deep": Tolerance(
        2.06, "ci-fit",
        "the largest sqrt(m) D over the ci profile's deep runs (1.372, m = 64) times 1.5, for "
        "the exponent of D drifting from -1/2 between ci's widths and default's"),
    "sqrt_m_distance_two_layer": Tolerance(
        2.78, "ci-fit",
        "the largest sqrt(m) D over the ci profile's two-layer runs (1.852, m = 1024) times 1.5, "
        "for the exponent of D drifting from -1/2 between ci's widths and default's"),
}


def experiment(arch: str, m: int, *, n: int, d: int, num_clients: int, L: int, tau: int,
               rounds: int, eval_every: int, eta: float, seeds: int, data_seed: int = 0):
    """The chapter's run of the ``arch`` network (``"deep"`` with ``L`` trained layers, or
    ``"two_layer"``) at width ``m``: Local GD on ``n`` points of the unit sphere with random +-1
    labels and the step ``eta * n / lambda_max(G_0)`` per seed, recording the loss, the distance
    from initialisation, the ever-flipped fraction and the outputs (for the kernel model)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return experiments.Experiment(
        dataset="sphere", n=n, d=d, num_clients=num_clients, data_seed=data_seed, arch=arch, m=m,
        L=L if arch == "deep" else 1, algorithm="local_gd", tau=tau, rounds=rounds,
        eval_every=eval_every, eta=eta, eta_rule="ntk", seeds=seeds,
        metrics=("loss", "dist", "ever_flipped", "outputs"))


def initial_norms(exp) -> np.ndarray:
    """``||W_l(0)||_F`` of every trained layer of every seed of ``exp``, ``(S, L)``."""
    spec = exp.net_spec()
    params0, _ = experiments.init_params(exp, spec)
    return np.stack([np.linalg.norm(np.asarray(w, np.float64).reshape(exp.seeds, -1), axis=1)
                     for w in params0["trainable"]], axis=1)


def kernel_movement(exp) -> tuple[kernel.Prediction, np.ndarray]:
    """The kernel model of ``exp`` (:func:`localsgd.kernel.predict`) and the linearised network's
    movement ``||W_t - W_0||_F`` over every trained layer at every recorded round, ``(S, E)``:
    ``sqrt((u_t - u_0)^T G_0^+ (u_t - u_0))`` on the training points (module docstring), with
    ``G_0`` the full ``(N d_out)^2`` Gram of each seed's initialisation."""
    seeds = kernel.problems(exp)
    pred = kernel.predict(exp, seeds=seeds)
    out = []
    for s, p in enumerate(seeds):
        N = p.problem.y.shape[0]
        cols = np.asarray(p.problem.cols)[:, :, :N]  # (N, d_out, N, d_out), symmetric
        G = cols.reshape(N * cols.shape[1], -1)
        lam, V = np.linalg.eigh(0.5 * (G + G.T))
        keep = lam > lam.max() * 1e-12
        du = (pred.outputs[s, :, :N] - pred.outputs[s, :1, :N]).reshape(len(pred.rounds), -1)
        proj = du @ V[:, keep]
        out.append(np.sqrt(np.sum(proj**2 / lam[keep], axis=1)))
    return pred, np.stack(out)


class Movement(NamedTuple):
    """Runs of one network at several widths against their kernel models.

    ``widths: (P,)``; ``iterations: (E,)`` the recorded iterations; ``loss`` and ``kernel_loss``
    ``(P, S, E)``: the training loss of the network and of its kernel model; at the end of the
    run, per width and seed ``(P, S)``: ``distance``
    ``||W_T - W_0||_F`` over every trained layer, ``relative`` the same over ``||W_0||_F``,
    ``flips`` the fraction of activation signs that ever flipped, ``kernel`` the kernel model's
    ``||W_T - W_0||_F``; ``layers: (P, S, L)`` ``||W_l(T) - W_l(0)||_F / ||W_l(0)||_F``;
    over training ``(P, S, E)``: ``relative_curve`` (the network's) and ``kernel_curve`` (the
    kernel model's, over the same ``||W_0||_F``); ``axis``: the width axis of the outputs
    (:class:`localsgd.claims.kernel_model.WidthAxis`); ``diverged``: runs that diverged."""

    widths: np.ndarray
    iterations: np.ndarray
    loss: np.ndarray
    kernel_loss: np.ndarray
    distance: np.ndarray
    relative: np.ndarray
    flips: np.ndarray
    kernel: np.ndarray
    layers: np.ndarray
    relative_curve: np.ndarray
    kernel_curve: np.ndarray
    axis: km.WidthAxis
    diverged: int

    @property
    def ratio(self) -> np.ndarray:
        """The network's movement over its kernel model's at the end, ``(P, S)``."""
        return self.distance / self.kernel


def movement(results: Mapping[int, object], kernels: Mapping[int, tuple] | None = None,
             bootstrap: int = 1000) -> Movement:
    """The movement of ``{m: Result}`` (runs of :func:`experiment` for one network at three or
    more widths, equal seeds and rounds) beside its kernel model's. ``kernels``:
    ``{m: kernel_movement(result.config)}`` when the caller already has them (they depend on the
    configuration a run reports only); computed when None."""
    widths = sorted(results)
    if kernels is None:
        kernels = {m: kernel_movement(results[m].config) for m in widths}
    if set(kernels) != set(widths):
        raise ValueError(f"kernels must have the widths of results {widths}, got "
                         f"{sorted(kernels)}")
    preds = {m: kernels[m][0] for m in widths}
    kern = {m: kernels[m][1] for m in widths}
    dist, rel_curve, ker_curve, layers, flips = [], [], [], [], []
    for m in widths:
        r = results[m]
        norm0 = initial_norms(r.config)  # (S, L)
        per_layer = np.asarray(r.metrics["dist"], float)  # (S, E, L)
        total0 = np.sqrt(np.sum(norm0**2, axis=1))[:, None]
        dist.append(np.sqrt(np.sum(per_layer[:, -1] ** 2, axis=-1)))
        layers.append(per_layer[:, -1] / norm0)
        rel_curve.append(np.asarray(r.metrics["dist_rel"], float))
        ker_curve.append(kern[m] / total0)
        flips.append(np.asarray(r.metrics["ever_flipped"], float)[:, -1])
    dist = np.stack(dist)
    rel_curve = np.stack(rel_curve)
    axis = km.width_axis({m: results[m] for m in widths}, preds, bootstrap=bootstrap)
    loss = np.stack([np.asarray(results[m].metrics["loss"], float) for m in widths])
    return Movement(np.array(widths, float), np.asarray(results[widths[0]].iterations), loss,
                    np.stack([preds[m].loss for m in widths]), dist, rel_curve[:, :, -1],
                    np.stack(flips),
                    np.stack([kern[m][:, -1] for m in widths]), np.stack(layers), rel_curve,
                    np.stack(ker_curve), axis, sum(bool(results[m].diverged) for m in widths))


def exponent(widths, values) -> analysis.Fit | None:
    """Log-log fit over every (width, seed) point: ``widths: (W,)``, ``values: (W, S)``; None
    where a value is not positive and finite (no exponent to fit)."""
    values = np.asarray(values, float)
    if not np.all(np.isfinite(values) & (values > 0)):
        return None
    x = np.repeat(np.asarray(widths, float)[:, None], values.shape[1], axis=1)
    return analysis.fit(x.ravel(), values.ravel(), log="xy")


def _exponent_check(name, widths, values, predicted) -> Check:
    allowance = TOLERANCES["exponent_allowance"].value
    f = exponent(widths, values)
    slope = f.slope if f is not None else float("nan")
    interval = f" [{f.low:.2f}, {f.high:.2f}]" if f is not None else ""
    return Check.between(rf"{name}: fitted exponent in \(m\){interval}, theory \({predicted:g}\)",
                         slope, predicted - allowance, predicted + allowance, fmt=".3g",
                         basis="theory")


def checks(deep: Movement, two: Movement) -> list[Check]:
    """The lazy regime's shape in the width and its kernel model (:func:`movement` of the deep
    and the two-layer runs):

    * for each network, the shared checks of the network against its kernel model
      (:func:`localsgd.claims.kernel_model.checks`);
    * for each network, its movement over its kernel model's, at every width and seed (the one
      farthest from 1);
    * the fitted exponents of the movement in ``m`` (deep: absolute and relative; two-layer:
      relative) within ``TOLERANCES["exponent_allowance"]`` of the theory's shapes;
    * the deep network's ever-flipped fraction falls with ``m`` (upper end of its exponent's
      95 % interval below 0);
    * the widest deep network's relative movement (median) at most ``TOLERANCES["lazy_max"]``;
    * no run diverged.
    """
    out = []
    ratio = TOLERANCES["movement_ratio"]
    for name, mv in (("deep", deep), ("two-layer", two)):
        key = "sqrt_m_distance_" + ("deep" if name == "deep" else "two_layer")
        out += km.checks(mv.axis, TOLERANCES[key], label=name)
        out.append(Check.between(
            rf"{name}: network ÷ kernel-model \(\|W_T - W_0\|_F\) (the width and seed farthest "
            "from 1)", km._worst_ratio(np.ravel(mv.ratio)), *ratio.value, fmt=".3g",
            basis=ratio.basis))
    flips = exponent(deep.widths, deep.flips)
    lazy = TOLERANCES["lazy_max"]
    out += [
        _exponent_check(r"deep, \(\|W_T - W_0\|_F\)", deep.widths, deep.distance,
                        theory.lazy_distance_exponent("deep", relative=False)),
        _exponent_check(r"deep, \(\|W_T - W_0\|_F / \|W_0\|_F\)", deep.widths, deep.relative,
                        theory.lazy_distance_exponent("deep", relative=True)),
        _exponent_check(r"two-layer, \(\|W_T - W_0\|_F / \|W_0\|_F\)", two.widths, two.relative,
                        theory.lazy_distance_exponent("two_layer", relative=True)),
        Check.at_most(r"deep, ever-flipped fraction: upper end of its exponent's 95 % interval",
                      flips.high if flips is not None else float("nan"), 0.0, basis="theory"),
        Check.at_most(rf"deep, \(\|W_T - W_0\|_F / \|W_0\|_F\) at \(m = {int(deep.widths[-1])}\) "
                      "(median)", float(np.median(deep.relative[-1])), lazy.value, fmt=".3g",
                      basis=lazy.basis),
        Check("runs that diverged", "none", deep.diverged + two.diverged,
              deep.diverged + two.diverged == 0, "tolerance"),
    ]
    return out
