"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import nbformat
import pytest

from localsgd_book import cores

# every pytest-xdist worker on cores of its own, before numpy and XLA size their thread pools:
# two workers whose pools both span every core slow each other (localsgd_book.cores)
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _shares = cores.shares(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    if _shares:  # one share for every worker, gw0, gw1, ...
        cores.pin(_shares[int(os.environ["PYTEST_XDIST_WORKER"][2:])])

import jax  # noqa: E402


def pytest_configure(config):
    """One persistent compilation cache for the whole test run (``.pytest_cache/jax``), shared by
    the workers and by the notebooks' kernels (which inherit the environment): the smoke runs,
    the negative controls and the library tests compile many identical programs, and a cached
    program is looked up by its own text, so only an identical program is ever served (a
    negative control's wrong run, traced from a patched engine, compiles its own). Every program
    goes in, however fast it compiles: most are small (0.1-0.2 s), and JAX's default threshold of
    one second would leave them out, so that each test compiled them again. A cache folder
    already named in ``JAX_COMPILATION_CACHE_DIR`` is kept."""
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                 str(Path(config.rootpath) / ".pytest_cache" / "jax"))
    least = os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(least))


def pytest_itemcollected(item):
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): a file's
    tests stay on one worker, in order (they share module fixtures such as a compilation cache),
    except the notebooks' smoke runs, which are grouped per chapter so that the chapters spread
    over the workers while a chapter's figure test still follows its run on the same worker.
    Marked as each test is collected: xdist reads the marks in its own
    ``pytest_collection_modifyitems``, which runs before a conftest's."""
    item.add_marker(pytest.mark.xdist_group(xdist_group(item.path.stem, item.nodeid)))


def xdist_group(stem: str, nodeid: str) -> str:
    """The group of a test: its file, or ``notebook-<chapter>`` for a notebook's smoke run."""
    if stem == "test_notebooks" and "[" in nodeid:
        return "notebook-" + nodeid.rsplit("[", 1)[1].rstrip("]")
    return stem


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Results (cache entries, checkpoints, verdicts) in a temporary folder."""
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    return tmp_path


@pytest.fixture
def patched_engine_results(tmp_results):
    """Results in a temporary folder, and no compiled program reused across a test's boundary:
    programs traced with a monkeypatched engine (a negative control's wrong run) must not serve
    the next test, nor a correct one serve the patched run."""
    jax.clear_caches()
    yield tmp_results
    jax.clear_caches()


# The wrong runs of the negative controls: a library that silently runs something else than it
# is asked for and reports the requested configuration.
WRONG_RUNS = ("half_step", "one_local_step", "no_averaging", "quarter_width", "other_batch",
              "other_split")


def _wrong_config(exp, kind):
    """The configuration a wrong library runs instead of ``exp`` (None where ``kind`` does not
    apply to it)."""
    from localsgd import algorithms

    if kind == "half_step":
        return exp.replace(eta=exp.eta / 2)
    if kind == "one_local_step":
        return exp.replace(tau=1) if exp.tau > 1 else None
    if kind == "quarter_width":
        return exp.replace(m=max(1, exp.m // 4))
    if kind == "other_split":
        return exp.replace(data_seed=exp.data_seed + 1)
    if kind == "other_batch":
        if not algorithms.get(exp.algorithm).stochastic:
            return None
        b = exp.batch_size
        return exp.replace(batch_size=b // 2 if b > 1 else 2)
    return exp


@pytest.fixture
def silently_wrong(monkeypatch, patched_engine_results):
    """``wrong(kind)``: from then on, within the test, every ``localsgd.experiments.run`` runs a
    wrong configuration (:data:`WRONG_RUNS`: half the step, one local step instead of ``tau``,
    the server keeping client 0's model instead of the average, a quarter of the width, another
    batch size) and returns a Result that reports the requested configuration and step sizes.
    Kinds that do not apply to a run (one local step when ``tau = 1``, a batch size without
    minibatches) leave it unchanged; ``"other_split"`` runs on the data and split of the next
    ``data_seed`` (for digits, another train/test split and another partition); ``wrong``
    returns a list that collects, for every run, whether the kind applied."""
    from localsgd import engine, experiments

    applied = []

    def wrong(kind):
        if kind not in WRONG_RUNS:
            raise ValueError(f"kind must be one of {WRONG_RUNS}, got {kind!r}")
        run = experiments.run

        def wrong_run(exp, cache=True):
            other = _wrong_config(exp, kind)
            applied.append(other is not None and (other != exp or kind == "no_averaging"))
            if other is None or other == exp and kind != "no_averaging":
                return run(exp, cache=False)
            res = run(other, cache=False)
            eta = res.eta * 2 if kind == "half_step" else res.eta
            return experiments.Result(exp, res.metrics, res.rounds, eta, res.diverged_at,
                                      res.test, res.provenance)

        monkeypatch.setattr(experiments, "run", wrong_run)
        if kind == "no_averaging":
            sweep = engine.sweep

            def keep_first(config, spec, params0, data, keys, etas=None, start=None, **kw):
                w = jax.numpy.zeros_like(data.weight).at[0].set(1.0)
                return sweep(config, spec, params0, data._replace(weight=w), keys, etas, start,
                             **kw)

            monkeypatch.setattr(engine, "sweep", keep_first)
        return applied

    return wrong


@pytest.fixture
def wrong_verdict(silently_wrong):
    """``wrong_verdict(kind, checks_of, every_run=True)``: with every run silently ``kind``
    (:func:`silently_wrong`), builds the chapter's checks (``checks_of()``) and asserts that the
    wrong run applied (to every run, or to at least one when ``every_run`` is False) and that the
    verdict does not hold; prints the failing checks and returns the checks."""
    from localsgd.claims import all_hold

    def check(kind, checks_of, every_run=True):
        applied = silently_wrong(kind)
        checks = checks_of()
        assert applied and (all(applied) if every_run else any(applied)), \
            f"{kind} did not apply to {'every' if every_run else 'any'} run"
        print(kind, "fails:", *(f"{c.name}: {c.measured}" for c in checks if not c.holds),
              sep="\n  ")
        assert not all_hold(checks), f"{kind}: every check held"
        return checks

    return check


# --------------------------------------------------------------------------------------------
# a tiny book: notebooks and profiles in a temporary root, for the pipeline and records tests

PARAMS_SOURCE = textwrap.dedent(
    """\
    width = 8
    eta = 0.5
    label = "a"
    flag = False
    sizes = [1, 2]
    """
)

SETUP_SOURCE = textwrap.dedent(
    """\
    from localsgd_book import session
    session.start("tiny", globals(), ranges=dict(width=">= 1", eta="> 0", sizes=">= 1"))
    """
)

BODY_SOURCE = textwrap.dedent(
    """\
    import json, os, sys
    from localsgd.claims import Check
    from localsgd_book.report import glue, verdict
    out = {
        "width": width, "eta": eta, "label": label, "flag": flag, "sizes": list(sizes),
        "eta_type": type(eta).__name__,
        "prefix": sys.prefix, "executable": sys.executable, "cwd": os.getcwd(),
        "results": os.environ.get("LOCALSGD_RESULTS"),
        "profile": os.environ.get("LOCALSGD_PROFILE"),
    }
    os.makedirs(os.environ["LOCALSGD_RESULTS"], exist_ok=True)
    with open(os.path.join(os.environ["LOCALSGD_RESULTS"], "tiny_out.json"), "w") as fh:
        json.dump(out, fh)
    glue("tiny_width", width, fmt="d")
    verdict("tiny", "width is positive", [Check.at_least("width", width, 1)])
    """
)


def _write_notebook(path: Path, params: str | None, *body: str) -> Path:
    """A notebook at ``path``: a title, a cell tagged ``parameters`` (unless None), code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells.append(nbformat.v4.new_markdown_cell("# tiny"))
    if params is not None:
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for src in body:
        nb.cells.append(nbformat.v4.new_code_cell(src))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def write_notebook():
    """``write_notebook(path, params_source, *code_sources)``: a small notebook for a test."""
    return _write_notebook


@pytest.fixture
def tiny_book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary book root with two notebooks and two profiles, results in ``tmp_path``."""
    r = tmp_path / "root"
    _write_notebook(r / "notebooks" / "tiny.ipynb", PARAMS_SOURCE, SETUP_SOURCE, BODY_SOURCE)
    _write_notebook(
        r / "notebooks" / "zz_boom.ipynb",
        "n = 1\n",
        "x = n + 1",
        "raise RuntimeError('boom in the second body cell')",
    )
    prof = r / "notebooks" / "profiles"
    prof.mkdir(parents=True)
    (prof / "ci.yaml").write_text("_all:\n  width: 3\n  not_in_any: 1\ntiny:\n  eta: 0.25\n")
    (prof / "default.yaml").write_text("tiny: {}\n")
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path / "results"))
    return r
