"""Chapter 11 (handwritten digits): the paper's claim on real data. scikit-learn's digits, rows
normalised to unit norm, one-hot targets, split over clients iid, by label shards or by
Dirichlet(alpha) draws; Local SGD, minibatch SGD at equal computation, FedProx and SCAFFOLD at the
theorems' step (below every local update's critical step) and at a practical step, each run against
the kernel model of its own initialisation (:mod:`localsgd.kernel`), on the training points and on
the test points through the cross kernel.

The experiment builders live here so that the notebook and its negative controls build the same
runs; the check functions take recorded results and predictions and run nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import analysis, experiments, kernel, theory
from . import Check, Tolerance
from . import kernel_model as km

__all__ = ["TOLERANCES", "accuracy", "accuracy_gap", "client_rows", "digits", "experiment",
           "grid_checks", "kernel_accuracy", "rounds_to", "step_unit", "verdict_checks",
           "width_axis_runs"]

TOLERANCES = {
    "sqrt_m_distance": Tolerance(
        3.2, "ci-fit",
        "the largest sqrt(m) D over the ci profile's width axis (2.15: m = 256, worst of 2 seeds; "
        "widths 128, 256, 512, n = 200, c = 2.0) times a margin of 1.5 (3.23, to two digits) "
        "for the exponent drifting from -1/2 between ci's and default's widths"),
    "accuracy_gap": Tolerance(
        0.05, "prior",
        "fixed before any run: the network's and its kernel model's final test accuracies "
        "(median over seeds) at the width axis's widest width within 5 points, the spread of a "
        "test set of a few hundred digits between two classifiers that agree on the training "
        "set"),
    "iteration_ratio": km.TOLERANCES["iteration_ratio"],
    "critical": km.TOLERANCES["critical"],
}

ALGORITHMS = ("local_sgd", "minibatch_sgd", "fedprox", "scaffold")


def step_unit(setup: Mapping) -> float:
    """``n / lambda_max`` of the infinite-width kernel (times ``m``, the deep net's scale) on the
    training points of ``setup`` (the fields of :func:`experiment` shared by every run): the
    unit of the chapter's steps, the same for every seed and width once multiplied by ``m``
    (``eta m`` is width-free). A float; :func:`experiment` divides it by ``m``."""
    clients, _, _ = experiments.load_data(experiment(setup, "local_sgd", "iid", 1.0, 1.0))
    x = np.asarray(clients.x)[np.asarray(clients.mask) > 0]
    d_out = clients.y.shape[-1]
    lam = np.linalg.eigvalsh(theory.gram_infinity_deep(x, setup["L"], d_out))[-1]
    return float(x.shape[0] / lam)


def experiment(setup: Mapping, algorithm: str, partition: str, alpha: float, c: float,
               unit: float = 1.0, m: int | None = None, metrics=("loss", "outputs",
                                                               "test_outputs")):
    """One run of the chapter: ``setup`` holds the data, network and run fields shared by every
    run (``dataset``, ``n``, ``num_clients``, ``data_seed``, ``idx_images``, ``idx_labels``,
    ``m``, ``L``, ``tau``, ``batch_size``, ``rounds``, ``eval_every``, ``seeds``, ``prox_mu``,
    and optionally ``client_rows``: one padding for every partition, so that the runs of an
    algorithm share their compiled programs, see :func:`client_rows`, and ``layout``, see
    :class:`localsgd.config.RunConfig`);
    the step is ``c * unit / m`` at each of the ``tau`` local steps (:func:`step_unit`).
    Minibatch SGD takes one step a round, of the same size, on a minibatch of ``tau * b`` per
    client: the same gradients a round as Local SGD (equal computation); where the
    smallest client holds fewer than ``tau * b`` samples, the minibatch is that many. Its budget
    is ``tau`` times the rounds: the same number of steps as a Local SGD client takes, which in
    the linearised regime is what it needs (each of its steps moves the model about as far as
    one local step)."""
    m = setup["m"] if m is None else m
    tau, b = setup["tau"], setup["batch_size"]
    one_step = algorithm == "minibatch_sgd"
    if one_step:  # tau * b, or the smallest client's whole data where that is fewer samples
        probe = experiments.Experiment(
            dataset=setup["dataset"], n=setup["n"], num_clients=setup["num_clients"],
            partition=partition, alpha=alpha, data_seed=setup["data_seed"],
            idx_images=setup.get("idx_images") or None,
            idx_labels=setup.get("idx_labels") or None, algorithm="local_gd")
        smallest = int(experiments.load_data(probe)[0].sizes.min())
    return experiments.Experiment(
        dataset=setup["dataset"], n=setup["n"], num_clients=setup["num_clients"],
        partition=partition, alpha=alpha, data_seed=setup["data_seed"],
        client_rows=setup.get("client_rows", 0),
        idx_images=setup.get("idx_images") or None, idx_labels=setup.get("idx_labels") or None,
        m=m, L=setup["L"], algorithm=algorithm,
        rounds=setup["rounds"] * (tau if one_step else 1),
        tau=1 if one_step else tau, batch_size=min(tau * b, smallest) if one_step else b,
        eta=c * unit / m, eta_rule="fixed",
        eval_every=setup["eval_every"], metrics=metrics, seeds=setup["seeds"],
        prox_mu=setup["prox_mu"] if algorithm == "fedprox" else 0.0,
        layout=setup.get("layout", "auto"))


def width_axis_runs(setup: Mapping, widths: Sequence[int], c: float, unit: float,
                    probe) -> tuple[dict, dict]:
    """The chapter's width axis: Local SGD on the iid split of ``setup`` (as :func:`experiment`
    takes it) at every width of ``widths``, the step ``c * unit / m``, each run with its kernel
    model. The test outputs (the run's ``"test_outputs"`` and the kernel model's predictions at
    ``probe: (P, d)``) are computed at the widest width only, the one whose test accuracy the
    verdict reads; the others need the training points alone (``D`` and the iterations to
    ``eps``). ``({m: Result}, {m: Prediction})``."""
    widest = max(widths)
    runs, preds = {}, {}
    for w in sorted(widths):
        test = w == widest
        metrics = ("loss", "outputs", "test_outputs") if test else ("loss", "outputs")
        runs[w] = experiments.run(experiment(setup, "local_sgd", "iid", 1.0, c, unit, m=w,
                                             metrics=metrics))
        preds[w] = kernel.predict(runs[w].config, probe=probe if test else None)
    return runs, preds


def client_rows(setup: Mapping, partitions) -> int:
    """The largest client's size over the ``(partition, alpha)`` splits of ``setup``'s data:
    padded to it, every split's arrays have one shape, and the runs of one algorithm compile
    once for all partitions (:class:`localsgd.experiments.Experiment`'s ``client_rows``)."""
    bare = dict(setup, client_rows=0)
    return max(int(experiments.load_data(experiment(bare, "local_sgd", p, a, 1.0))[0].sizes.max())
               for p, a in partitions)


def digits(exp, points: int = 0) -> tuple:
    """``(test labels (P,), test inputs (P, d))``: the first ``points`` test samples of ``exp``'s
    data (all of them for 0)."""
    _, test, _ = experiments.load_data(exp)
    P = points or len(test.labels)
    return test.labels[:P], test.x[:P]


def accuracy(outputs, labels) -> np.ndarray:
    """The fraction of rows whose largest output is the label: ``outputs: (..., P, d_out)``,
    ``labels: (P,)`` -> ``(...)``."""
    return np.mean(np.argmax(np.asarray(outputs), axis=-1) == np.asarray(labels), axis=-1)


def kernel_accuracy(pred, labels) -> np.ndarray:
    """The kernel model's test accuracy at every record, ``(S, E)``, from a prediction whose
    probe points are the test set (labels ``(P,)``)."""
    return accuracy(pred.outputs[:, :, pred.n_train:], labels)


def rounds_to(result, eps: float) -> np.ndarray:
    """Per seed, communication rounds until the training loss is at most ``eps`` (interpolated,
    inf if never), ``(S,)``."""
    return analysis.iterations_to(result.rounds, np.asarray(result.metrics["loss"]), eps)


def kernel_rounds_to(pred, eps: float) -> np.ndarray:
    """The kernel model's rounds to ``eps`` per seed, ``(S,)``."""
    return analysis.iterations_to(pred.rounds, pred.loss, eps)


def accuracy_gap(result, pred, labels) -> float:
    """The network's final test accuracy minus its kernel model's (each the median over seeds),
    for a run that records ``"test_outputs"`` and its prediction with the test set as probe
    points (labels ``(P,)``): positive where the kernel model under-predicts the network."""
    P = len(labels)
    net = accuracy(np.asarray(result.metrics["test_outputs"])[:, -1, :P], labels)
    return float(np.median(net) - np.median(kernel_accuracy(pred, labels)[:, -1]))


def grid_checks(results: Mapping, preds: Mapping, eps: float) -> list[Check]:
    """The checks of the theorems'-step runs ``{(partition, algorithm): Result}`` against their
    kernel models ``{key: Prediction}``: every local update below its critical step; every seed
    reaches ``eps``; the network's rounds to ``eps`` within :data:`TOLERANCES`
    ``["iteration_ratio"]`` of its kernel model's (worst run and seed)."""
    if set(results) != set(preds) or not results:
        raise ValueError("results and preds must hold the same non-empty set of runs")
    crit = max(float(np.max(p.critical)) for p in preds.values())
    misses = sum(int(np.sum(~np.isfinite(rounds_to(r, eps)))) for r in results.values())
    ratios = np.concatenate([rounds_to(results[k], eps) / kernel_rounds_to(preds[k], eps)
                             for k in results])
    lo, hi = TOLERANCES["iteration_ratio"].value
    tol = TOLERANCES
    return [
        Check.at_most(r"largest \(\eta\,\lambda_{\max}(D_B^{1/2} G_{BB} D_B^{1/2})\) of a local "
                      "update, every partition and algorithm", crit, tol["critical"].value,
                      fmt=".3g", basis="theory"),
        Check.at_most(rf"seeds that miss \(\varepsilon = {eps:g}\), every partition and algorithm",
                      misses, 0, basis="theory"),
        Check.between(r"network ÷ kernel-model rounds to \(\varepsilon\) (worst run and seed)",
                      km._worst_ratio(ratios), lo, hi, fmt=".3g",
                      basis=tol["iteration_ratio"].basis),
    ]


def verdict_checks(axis: km.WidthAxis, widest, widest_pred, results: Mapping, preds: Mapping,
                   labels, eps: float) -> list[Check]:
    """Every check of the chapter: the width axis's shared checks (:func:`kernel_model.checks`
    with :data:`TOLERANCES` ``["sqrt_m_distance"]``); the network's final test accuracy within
    ``["accuracy_gap"]`` of its kernel model's at the axis's widest width (``widest``: that run,
    recording ``"test_outputs"``; ``widest_pred``: its prediction with the test set, labels
    ``(P,)``, as probe points); and :func:`grid_checks`."""
    if int(widest.config.m) != axis.widest:
        raise ValueError(f"widest must be the run at the axis's widest width {axis.widest}, got "
                         f"m = {widest.config.m}")
    gap = TOLERANCES["accuracy_gap"]
    return (km.checks(axis, TOLERANCES["sqrt_m_distance"], label="width axis")
            + [Check.at_most(rf"width axis: |network − kernel-model final test accuracy| at "
                             rf"\(m = {axis.widest}\) (median over seeds)",
                             abs(accuracy_gap(widest, widest_pred, labels)), gap.value,
                             fmt=".3g", basis=gap.basis)]
            + grid_checks(results, preds, eps))


def skews(setup: Mapping, partitions: Sequence) -> list[float]:
    """The measured label skew (:func:`localsgd.data.label_skew`) of every ``(partition, alpha)``
    of ``partitions`` on ``setup``'s training data."""
    from .. import data

    out = []
    for scheme, alpha in partitions:
        exp = experiment(setup, "local_sgd", scheme, alpha, 1.0)
        _, _, labels = experiments.load_data(exp)
        parts = data.partition(labels, exp.num_clients, scheme, alpha=alpha, seed=exp.data_seed)
        out.append(data.label_skew(labels, parts))
    return out
