"""Negative controls of chapter 11 (handwritten digits): the chapter's runs, built by the same
functions as the notebook at small sizes, must give a verdict that holds when the runs are what
they report and fails (not crashes) when they silently ran on another split of the data or
without the server's averaging. Plus the chapter's optional IDX input, on a tiny file."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from localsgd import experiments, kernel
from localsgd.claims import all_hold
from localsgd.claims import digits as cd
from localsgd.claims import kernel_model as km

SETUP = dict(dataset="digits", n=60, num_clients=3, data_seed=0, m=512, L=1, tau=2, batch_size=5,
             rounds=60, eval_every=4, seeds=2, prox_mu=0.1)
PARTITIONS = [("iid", 1.0), ("shards", 1.0)]
ALGORITHMS = ["local_sgd"]
WIDTHS = (128, 512, 2048)
C, EPS = 1.0, 0.2  # eta * tau in units of n / lambda_max, as the notebook's c


def chapter_checks(setup=SETUP):
    """The notebook's runs and verdict at small sizes: the theorems'-step grid against its
    kernel models (with test predictions) and the width axis of Local SGD on the iid split,
    with the test predictions at its widest width."""
    setup = dict(setup, client_rows=cd.client_rows(setup, PARTITIONS))  # as the notebook pads
    unit = cd.step_unit(setup)
    exps = {(p, a): cd.experiment(setup, a, *p, C / setup["tau"], unit)
            for p in PARTITIONS for a in ALGORITHMS}
    labels, test_x = cd.digits(next(iter(exps.values())), 40)
    res = {k: experiments.run(e) for k, e in exps.items()}
    preds = dict(zip(exps, kernel.predict_many(list(exps.values()), probe=test_x)))
    axis_setup = dict(setup, layout="lowrank")  # as the notebook's width axis
    axis_runs, axis_preds = cd.width_axis_runs(axis_setup, WIDTHS, C / setup["tau"], unit, test_x)
    axis = km.width_axis(axis_runs, axis_preds, eps=EPS, bootstrap=200)
    widest = max(WIDTHS)
    return cd.verdict_checks(axis, axis_runs[widest], axis_preds[widest], res, preds, labels, EPS)


def test_negative_control_11_verdict_holds_on_correct_runs(tmp_results):
    checks = chapter_checks()
    assert all_hold(checks), [(c.name[-60:], c.measured) for c in checks if not c.holds]


@pytest.mark.parametrize("kind", ["other_split", "no_averaging"])
def test_negative_control_11_wrong_run_fails_the_verdict(kind, wrong_verdict):
    wrong_verdict(kind, chapter_checks, every_run=False)


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_the_chapter_reads_a_users_idx_files(tmp_results, tmp_path):
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = raw.images[:60].astype(np.uint8)  # 8x8 grey levels 0..16
    _write_idx(tmp_path / "images.idx", images)
    _write_idx(tmp_path / "labels.idx", raw.target[:60])
    setup = dict(SETUP, dataset="idx", idx_images=str(tmp_path / "images.idx"),
                 idx_labels=str(tmp_path / "labels.idx"), n=0, rounds=4, seeds=1)
    exp = cd.experiment(setup, "local_sgd", "shards", 1.0, C / setup["tau"], cd.step_unit(setup))
    clients, test, labels = experiments.load_data(exp)
    assert int(clients.mask.sum()) + len(test.labels) == 60
    assert sorted(np.concatenate([labels, test.labels])) == sorted(raw.target[:60])
    res = experiments.run(exp)
    pred = kernel.predict(exp, probe=test.x)
    assert res.metrics["test_outputs"].shape[-2:] == (len(test.labels), 10)
    assert pred.outputs.shape[2] == int(clients.mask.sum()) + len(test.labels)
    assert np.all(np.isfinite(kernel.distance(res, pred)))
