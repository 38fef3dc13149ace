"""Bad input is refused by name: every case below raises a ValueError whose message names the
parameter, the offending value and what is allowed, before any work starts (no initialisation,
no step size, no sweep) and before anything is written (the results folder stays empty).

One table, one id per case; each case is a function of a temporary folder that makes the call.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import jax
import nbformat
import numpy as np
import pytest

from localsgd import data as dt
from localsgd import engine as en
from localsgd import experiments as ex
from localsgd import model
from localsgd_book import parameters, pipeline

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n=16, d=6, m=8, L=1, num_clients=4, rounds=2)


def exp_run(**kw):
    """A case that builds an Experiment from TINY with changes and runs it."""
    return lambda tmp: ex.run(ex.Experiment(**{**TINY, **kw}))


def unit_rows(n=8, d=5, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return dt.normalise_rows(x), np.ones((n, 1))


def with_bad(a, value):
    a = np.array(a, copy=True)
    a[1, 0] = value
    return a


def bad_targets_for_run(tmp):
    """engine.run with targets of d_out=2 for a network with d_out=1."""
    x, _ = unit_rows()
    clients = dt.to_clients(x, np.ones((8, 2)), [np.arange(4), np.arange(4, 8)])
    spec = model.NetSpec("deep", 5, 8, 1, 1)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), spec))  # shapes suffice
    return en.run(en.RunConfig("local_gd", 2), spec, params, clients, jax.random.key(1))


def batch_too_large_for_run(tmp):
    x, y = unit_rows()
    clients = dt.to_clients(x, y, [np.arange(4), np.arange(4, 8)])
    spec = model.NetSpec("deep", 5, 8, 1, 1)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), spec))  # shapes suffice
    cfg = en.RunConfig("local_sgd", 2, 1, 0.1, batch_size=6)
    return en.run(cfg, spec, params, clients, jax.random.key(1))


def duplicate_with_other_target(tmp):
    x, y = unit_rows()
    x[5], y[5] = x[2], -1.0
    return dt.client_data(x, y)


def write_idx(path, arr, type_byte):
    arr = np.asarray(arr)
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(header + arr.tobytes())
    return str(path)


def idx_run(labels, type_byte):
    """A run on 16 images of 4x4 pixels with the given labels (an IDX file of that type)."""

    def case(tmp):
        images = write_idx(tmp / "images.idx", np.arange(1, 257, dtype=np.uint8).reshape(16, 4, 4),
                           0x08)
        labels_path = write_idx(tmp / "labels.idx", labels, type_byte)
        return ex.run(ex.Experiment(**{**TINY, "n": 0, "num_clients": 2}, dataset="idx",
                                    idx_images=images, idx_labels=labels_path))

    return case


def tiny_notebook_root(tmp):
    """A repository root with one notebook (parameters n = 3, label = 'a') and a ci profile."""
    root = tmp / "root"
    (root / "notebooks" / "profiles").mkdir(parents=True)
    (root / "notebooks" / "profiles" / "ci.yaml").write_text("{}\n")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("n = 3\nlabel = 'a'\n")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(n, label)")]
    nbformat.write(nb, str(root / "notebooks" / "tiny.ipynb"))
    return root


def papermill(params):
    def case(tmp):
        root = tiny_notebook_root(tmp)
        try:
            return pipeline.execute("ci", ["tiny"], params, root=root)
        finally:
            assert not (root / "book").exists(), "the pipeline wrote before refusing"

    return case


# (call, parameter name, offending value as the message shows it, fragments saying what is allowed)
CASES = [
    pytest.param(exp_run(m=0), "m", "0", (">= 1",), id="width-zero"),
    pytest.param(exp_run(m=2.5), "m", "2.5", ("integer",), id="width-not-integer"),
    pytest.param(exp_run(L=0), "L", "0", (">= 1",), id="depth-zero"),
    pytest.param(exp_run(arch="two_layer", L=2), "L", "2", ("must be 1",), id="depth-two-layer"),
    pytest.param(exp_run(arch="cnn"), "arch", "'cnn'", ("deep", "two_layer"), id="arch-unknown"),
    pytest.param(exp_run(num_clients=0), "num_clients", "0", (">= 1",), id="clients-zero"),
    pytest.param(exp_run(n=8, num_clients=9), "num_clients", "9", ("at most n=8",),
                 id="clients-more-than-n"),
    pytest.param(exp_run(dataset="digits", n=10, num_clients=11), "num_clients", "11",
                 ("at most n=10",), id="clients-more-than-n-after-loading"),
    pytest.param(lambda tmp: dt.partition(np.zeros(5, int), 6), "num_clients", "6", ("[1, n=5]",),
                 id="clients-more-than-n-partition"),
    pytest.param(exp_run(partition="shards", num_clients=10), "num_clients", "10", ("n/2=8",),
                 id="clients-too-many-for-shards"),
    pytest.param(exp_run(dataset="digits", n=5000), "n", "5000", ("at most the",),
                 id="n-more-than-the-data"),
    pytest.param(exp_run(tau=0), "tau", "0", (">= 1",), id="tau-zero"),
    pytest.param(exp_run(tau=1.5), "tau", "1.5", ("integer",), id="tau-not-integer"),
    pytest.param(exp_run(algorithm="gd", tau=3), "tau", "3", ("must be 1",), id="tau-with-gd"),
    pytest.param(exp_run(algorithm="local_sgd", batch_size=8), "batch_size", "8",
                 ("at most the smallest client's sample count 4",), id="batch-larger-than-client"),
    pytest.param(batch_too_large_for_run, "batch_size", "6", ("at most the smallest client's",),
                 id="batch-larger-than-client-engine-run"),
    pytest.param(exp_run(algorithm="local_sgd", batch_size=None), "batch_size", "None", (">= 1",),
                 id="batch-missing"),
    pytest.param(exp_run(algorithm="local_sgd", batch_size=0), "batch_size", "0", (">= 1",),
                 id="batch-zero"),
    pytest.param(exp_run(batch_size=4), "batch_size", "4", ("must be None",),
                 id="batch-for-full-batch"),
    pytest.param(exp_run(eta=0.0, eta_rule="fixed"), "eta", "0.0", ("positive finite",),
                 id="eta-zero"),
    pytest.param(exp_run(eta=-0.1, eta_rule="fixed"), "eta", "-0.1", ("positive finite",),
                 id="eta-negative"),
    pytest.param(exp_run(eta=math.nan, eta_rule="fixed"), "eta", "nan", ("positive finite",),
                 id="eta-nan"),
    pytest.param(exp_run(eta=math.inf, eta_rule="fixed"), "eta", "inf", ("positive finite",),
                 id="eta-inf"),
    pytest.param(exp_run(eta="0.1"), "eta", "'0.1'", ("positive finite number",),
                 id="eta-string"),
    pytest.param(exp_run(eta=True), "eta", "True", ("positive finite number",), id="eta-bool"),
    pytest.param(exp_run(eta=2.5, eta_rule="ntk"), "eta", "2.5", ("below 2",),
                 id="eta-above-critical-ntk"),
    pytest.param(exp_run(eta_rule="adaptive"), "eta_rule", "'adaptive'", ("fixed", "ntk"),
                 id="eta-rule-unknown"),
    pytest.param(exp_run(activation="tanh"), "activation", "'tanh'", ("relu", "softplus"),
                 id="activation-unknown"),
    pytest.param(exp_run(partition="random"), "partition", "'random'", ("iid", "dirichlet"),
                 id="partition-unknown"),
    pytest.param(lambda tmp: parameters.load_profile("fast", ROOT), "profile", "'fast'",
                 ("allowed", "ci"), id="profile-unknown"),
    pytest.param(exp_run(partition="dirichlet", alpha=0), "alpha", "0", ("positive finite",),
                 id="alpha-zero"),
    pytest.param(exp_run(partition="dirichlet", alpha=-1.0), "alpha", "-1.0",
                 ("positive finite",), id="alpha-negative"),
    pytest.param(exp_run(partition="dirichlet", alpha=math.inf), "alpha", "inf",
                 ("positive finite",), id="alpha-inf"),
    pytest.param(exp_run(rounds=0), "rounds", "0", (">= 1",), id="rounds-zero"),
    pytest.param(exp_run(rounds=10, eval_every=3), "eval_every", "3", ("divide rounds=10",),
                 id="eval-every-not-dividing"),
    pytest.param(exp_run(metrics=("accuracy",)), "metrics", "accuracy", ("subset", "loss"),
                 id="metric-unknown"),
    pytest.param(exp_run(metrics="loss"), "metrics", "'loss'", ("tuple of names",),
                 id="metrics-a-string"),
    pytest.param(exp_run(algorithm="fedavg"), "algorithm", "'fedavg'", ("local_sgd",),
                 id="algorithm-unknown"),
    pytest.param(exp_run(dataset="mnist"), "dataset", "'mnist'", ("sphere", "digits"),
                 id="dataset-unknown"),
    pytest.param(exp_run(seeds=0), "seeds", "0", (">= 1",), id="seeds-zero"),
    pytest.param(exp_run(seed=-1), "seed", "-1", (">= 0",), id="seed-negative"),
    pytest.param(exp_run(delta=1.5), "delta", "1.5", ("(0, 1]",), id="delta-out-of-range"),
    pytest.param(exp_run(d=2), "d", "2", (">= 3",), id="sphere-dimension-too-small"),
    pytest.param(exp_run(targets="ones"), "targets", "'ones'", ("labels", "teacher"),
                 id="targets-unknown"),
    pytest.param(exp_run(dataset="idx", idx_images="/nonexistent/images.idx",
                         idx_labels="/nonexistent/labels.idx"),
                 "idx_images", "'/nonexistent/images.idx'", ("existing IDX file",),
                 id="idx-file-missing"),
    pytest.param(exp_run(checkpoint_every=-1), "checkpoint_every", "-1", (">= 0",),
                 id="checkpoint-negative"),
    pytest.param(exp_run(rounds=10, checkpoint_every=3), "checkpoint_every", "3",
                 ("divide rounds=10",), id="checkpoint-not-dividing-rounds"),
    pytest.param(exp_run(rounds=12, eval_every=4, checkpoint_every=6), "checkpoint_every", "6",
                 ("multiple of eval_every=4",), id="checkpoint-not-multiple-of-eval-every"),
    pytest.param(bad_targets_for_run, "data.y", "(2, 4, 2)", ("d_out=1",),
                 id="targets-shape-vs-d_out"),
    pytest.param(lambda tmp: dt.to_clients(*unit_rows()[:1], np.ones(8), [np.arange(8)]), "y",
                 "(8,)", ("(n=8, d_out)",), id="targets-not-2d"),
    pytest.param(lambda tmp: dt.client_data(with_bad(unit_rows()[0], np.nan), unit_rows()[1]),
                 "x", "1 NaN", ("must be finite",), id="data-nan"),
    pytest.param(lambda tmp: dt.client_data(unit_rows()[0], with_bad(np.ones((8, 2)), np.inf)),
                 "y", "1 NaN or infinite", ("must be finite",), id="targets-infinite"),
    pytest.param(lambda tmp: dt.client_data(2.0 * unit_rows()[0], unit_rows()[1]), "x",
                 "norm 2", ("unit-norm", "normalise_rows"), id="data-not-unit-norm"),
    pytest.param(lambda tmp: dt.client_data(unit_rows()[0], unit_rows()[1], num_clients=9),
                 "num_clients", "9", ("[1, n=8]",), id="user-data-more-clients-than-samples"),
    pytest.param(lambda tmp: dt.client_data(unit_rows()[0] + 0.5j, unit_rows()[1]), "x",
                 "complex", ("must be real", "np.real"), id="data-complex"),
    pytest.param(lambda tmp: dt.client_data(unit_rows()[0], np.ones((8, 0))), "y", "(8, 0)",
                 ("d_out >= 1",), id="targets-no-columns"),
    pytest.param(lambda tmp: dt.client_data(unit_rows()[0], np.full((8, 1), 1e20)), "y",
                 "1e+20", ("at most 1e+06", "scale the targets"), id="targets-huge"),
    pytest.param(duplicate_with_other_target, "x", "rows 2 and 5",
                 ("identical", "delta = 0", "remove or merge"),
                 id="data-repeated-input-other-target"),
    pytest.param(lambda tmp: dt.normalise_rows(with_bad(unit_rows()[0], np.nan)), "x", "rows [1]",
                 ("finite", "drop or impute"), id="normalise-nan-row"),
    pytest.param(lambda tmp: dt.check_unit_norm(with_bad(unit_rows()[0], np.nan)), "x", "row 1",
                 ("finite", "drop or impute"), id="unit-norm-check-nan-row"),
    pytest.param(idx_run(np.repeat(np.arange(-1, 3), 4).astype(">i1"), 0x09), "labels_path",
                 "-1", ("[0, 999]",), id="idx-label-negative"),
    pytest.param(idx_run(np.full(16, 10**9, ">i4"), 0x0C), "labels_path", "1000000000",
                 ("[0, 999]",), id="idx-label-huge"),
    pytest.param(idx_run(np.linspace(0, 3, 16).astype(">f4"), 0x0D), "labels_path", "0.2",
                 ("integer labels",), id="idx-label-fractional"),
    pytest.param(idx_run(np.zeros((16, 2), ">u1"), 0x08), "labels_path", "(16, 2)",
                 ("shape (n,)",), id="idx-labels-two-dimensional"),
    pytest.param(exp_run(rounds=10**12), "rounds", "1000000000000", ("at most 2147483646",),
                 id="rounds-beyond-int32"),
    pytest.param(exp_run(L=100_000), "L", "100000", ("at most 1000", "unrolled"),
                 id="depth-beyond-unrolling"),
    pytest.param(exp_run(seeds=2**31), "seeds", "2147483648", ("at most 2147483647",),
                 id="seeds-beyond-int32"),
    pytest.param(exp_run(seed=2**63 - 1, seeds=2), "seed", str(2**63 - 1),
                 ("at most 2147483646", "int32 PRNG seeds"), id="seed-beyond-int64"),
    pytest.param(exp_run(m=100_000), "m", "now 100000", ("GiB of memory", "to at most"),
                 id="memory-width"),
    pytest.param(exp_run(seeds=10**7), "seeds", "now 10000000", ("GiB of memory", "to at most"),
                 id="memory-seeds"),
    pytest.param(papermill({"n": "many"}), "n", "'many'", ("expected int",),
                 id="papermill-parameter-wrong-type"),
    pytest.param(papermill({"label": 3}), "label", "3", ("expected str",),
                 id="papermill-parameter-wrong-type-str"),
    pytest.param(papermill({"width": 4}), "width", "4", ("allowed", "label", "n"),
                 id="papermill-parameter-unknown"),
    pytest.param(lambda tmp: ex.run_grid([ex.Experiment(**TINY), "config"]), "exps", "str",
                 ("Experiment",), id="grid-not-experiments"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a run gets as far as initialising, sizing the step or sweeping."""

    def boom(*args, **kwargs):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(ex, "init_params", boom)
    monkeypatch.setattr(ex.theory, "ntk_step_size", boom)
    monkeypatch.setattr("localsgd.engine.sweep", boom)


@pytest.mark.parametrize("call, name, value, allowed", CASES)
def test_bad_input_is_refused_by_name_before_any_work(call, name, value, allowed, tmp_path,
                                                      monkeypatch, no_work):
    results = tmp_path / "results"
    monkeypatch.setenv("LOCALSGD_RESULTS", str(results))
    with pytest.raises(ValueError) as err:
        call(tmp_path)
    msg = str(err.value)
    assert name in msg, f"the message does not name the parameter {name!r}: {msg}"
    assert value in msg, f"the message does not show the value {value!r}: {msg}"
    for fragment in allowed:
        assert fragment in msg, f"the message does not say what is allowed ({fragment!r}): {msg}"
    written = sorted(p.relative_to(results) for p in results.rglob("*")) if results.exists() else []
    assert not written, f"files were written before the refusal: {written}"


def test_the_table_holds_at_least_25_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 25
