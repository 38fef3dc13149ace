"""The notebook pipeline (localsgd_book.pipeline) and the verdict helpers (localsgd_book.report).

Execution tests use tiny notebooks written into a temporary root, so they run in seconds and
do not depend on the book's own notebooks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from localsgd.claims import Check
from localsgd_book import (
    cores,
    layout,
    parameters,
    pipeline,
    records,
    report,
    scoreboard,
    sitefiles,
    tidy,
)


@pytest.fixture
def root(tiny_book: Path) -> Path:
    return tiny_book


def _nothing_written(root: Path) -> bool:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    return not (root / "book").exists() and not results.exists()


# ---------------------------------------------------------------------------------------------
# validation before anything runs


def test_unknown_profile_is_a_value_error_naming_it(root: Path) -> None:
    with pytest.raises(ValueError) as info:
        pipeline.execute("nope", root=root)
    msg = str(info.value)
    assert "profile" in msg and "'nope'" in msg and "ci" in msg and "default" in msg
    assert _nothing_written(root)


def test_unknown_parameter_is_a_value_error_naming_it(root: Path) -> None:
    with pytest.raises(ValueError) as info:
        pipeline.execute("ci", ["tiny"], {"widht": 4}, root=root)
    msg = str(info.value)
    assert "widht" in msg and "tiny" in msg and "width" in msg
    assert _nothing_written(root)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("width", 4.5, "int"),
        ("width", True, "int"),
        ("eta", "fast", "float"),
        ("flag", 1, "bool"),
        ("label", 3, "str"),
        ("sizes", 3, "list"),
    ],
)
def test_wrong_type_is_a_value_error_naming_parameter_value_and_type(
    root: Path, name: str, value: object, expected: str
) -> None:
    with pytest.raises(ValueError) as info:
        pipeline.execute("ci", ["tiny"], {name: value}, root=root)
    msg = str(info.value)
    assert name in msg and repr(value) in msg and expected in msg
    assert _nothing_written(root)


def test_bad_parameter_in_a_later_notebook_stops_before_the_first_runs(root: Path) -> None:
    # zz_boom does not define `eta`: validation covers every selected notebook up front
    with pytest.raises(ValueError, match="eta"):
        pipeline.execute("ci", None, {"eta": 0.1}, root=root)
    assert _nothing_written(root)


def test_profile_entry_with_a_bad_parameter_is_rejected(root: Path) -> None:
    (root / "notebooks" / "profiles" / "bad.yaml").write_text("tiny:\n  width: wide\n")
    with pytest.raises(ValueError, match=r"width='wide'.*int"):
        pipeline.execute("bad", ["tiny"], root=root)
    assert _nothing_written(root)


def test_unknown_notebook_is_a_value_error(root: Path) -> None:
    with pytest.raises(ValueError, match=r"notebook='nope'.*tiny"):
        pipeline.execute("ci", ["nope"], root=root)


def test_resolve_parameters_merges_all_profile_and_extra(root: Path) -> None:
    entries = parameters.load_profile("ci", root)
    nb = root / "notebooks" / "tiny.ipynb"
    params = parameters.resolve_parameters(nb, entries, {"eta": 1, "sizes": [3]})
    # `_all` only passes names the notebook defines; int widens to float; later wins
    assert params == {"width": 3, "eta": 1.0, "sizes": [3]}
    assert isinstance(params["eta"], float)


def test_notebook_parameters_reads_the_tagged_cell(root: Path, write_notebook) -> None:
    defaults = parameters.notebook_parameters(root / "notebooks" / "tiny.ipynb")
    assert defaults == {"width": 8, "eta": 0.5, "label": "a", "flag": False, "sizes": [1, 2]}
    untagged = write_notebook(root / "untagged.ipynb", None, "x = 1")
    with pytest.raises(ValueError, match="parameters"):
        parameters.notebook_parameters(untagged)


def test_resolve_notebook_accepts_stem_file_name_and_path(root: Path) -> None:
    path = (root / "notebooks" / "tiny.ipynb").resolve()
    assert layout.resolve_notebook("tiny", root) == path
    assert layout.resolve_notebook("tiny.ipynb", root) == path
    assert layout.resolve_notebook("notebooks/tiny.ipynb", root) == path
    assert layout.resolve_notebook(str(path), root) == path


# ---------------------------------------------------------------------------------------------
# PARAMS


def test_parse_params_papermill_style() -> None:
    got = parameters.parse_params(
        "-p width 4096 -p tau 20 -p eta 1e-3 -p flag True -p off false -p name resnet "
        "-r raw 123 -p nothing None -p sizes '[1, 2]' -y 'seeds: 3' --parameters tau 21"
    )
    assert got == {
        "width": 4096,
        "tau": 21,
        "eta": 1e-3,
        "flag": True,
        "off": False,
        "name": "resnet",
        "raw": "123",
        "nothing": None,
        "sizes": [1, 2],
        "seeds": 3,
    }
    assert isinstance(got["width"], int) and isinstance(got["eta"], float)
    assert parameters.parse_params("") == {} and parameters.parse_params(None) == {}
    assert parameters.parse_params(["-p", "a", "1"]) == {"a": 1}


@pytest.mark.parametrize("bad", ["-p width", "width 4096", "-p 1x 3", "-y '[1, 2]'", "-y"])
def test_parse_params_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="PARAMS"):
        parameters.parse_params(bad)


def test_cli_unknown_profile_exits_non_zero(root: Path, capsys: pytest.CaptureFixture) -> None:
    code = pipeline.main(["run", "tiny", "--profile", "nope", "--root", str(root)])
    assert code == 1
    assert "profile='nope'" in capsys.readouterr().err
    assert _nothing_written(root)


def test_cli_wrong_type_from_params_exits_non_zero(
    root: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["run", "tiny", "--profile", "ci", "-p", "width", "wide", "--root", str(root)]
    assert pipeline.main(argv) == 1
    assert "width='wide'" in capsys.readouterr().err
    assert _nothing_written(root)


# ---------------------------------------------------------------------------------------------
# execution


def test_kernel_python3_is_this_interpreter() -> None:
    assert os.path.abspath(pipeline.kernel_interpreter()) == os.path.abspath(sys.executable)


def test_execute_runs_the_notebook_with_params_env_and_records(root: Path, capsys) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    done = pipeline.run("tiny", "ci", "-p width 5 -p eta 2", root=root)
    assert done.name == "tiny" and done.output == root / "book" / "executed" / "tiny.ipynb"
    assert done.parameters == {"width": 5, "eta": 2.0}
    assert "[1/1] tiny ... ok (" in capsys.readouterr().out

    out = json.loads((results / "tiny_out.json").read_text())
    assert out["width"] == 5 and out["eta"] == 2.0 and out["eta_type"] == "float"
    assert out["label"] == "a" and out["sizes"] == [1, 2]
    # the kernel runs this environment's interpreter, from the root, with the pipeline's env
    assert out["prefix"] == sys.prefix
    assert Path(out["cwd"]).resolve() == root.resolve()
    assert out["results"] == str(results.resolve()) and out["profile"] == "ci"

    executed = nbformat.read(str(done.output), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "width = 5" in injected[0].source
    # shown once: papermill's cell is removed from the page, its values join the parameters
    # cell, whose code hides behind a toggle
    assert "remove-cell" in injected[0].metadata["tags"]
    (params,) = [c for c in executed.cells if "parameters" in c.metadata.get("tags", [])]
    assert "hide-input" in params.metadata["tags"]
    assert params.source.startswith("width = 8") and "(profile ci):\nwidth = 5\neta = 2.0" in (
        params.source)
    glued = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "scrapbook" in o.get("metadata", {})
    ]
    names = {o["metadata"]["scrapbook"]["name"] for o in glued}
    assert {"tiny_width", "verdict_tiny", "verdict_tiny_holds"} <= names

    timings = json.loads((results / "timings" / "ci.json").read_text())
    assert timings["profile"] == "ci" and timings["notebooks"]["tiny"]["seconds"] > 0
    # the command line's parameters are not profile ci's: the record is kept apart
    assert not (results / "verdicts").exists()
    (apart,) = (results / "runs").glob("tiny-*.json")
    verdict = json.loads(apart.read_text())
    assert verdict["holds"] is True and verdict["profile"] == "ci" and verdict["book"] is False
    assert verdict["parameters"] == {"width": 5, "eta": 2.0, "label": "a", "flag": False,
                                     "sizes": [1, 2]}
    assert not list(results.rglob("*.tmp"))


def test_failing_notebook_stops_the_build_naming_notebook_and_cell(root: Path) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    with pytest.raises(pipeline.NotebookFailed) as info:
        pipeline.execute("default", ["zz_boom", "tiny"], root=root)
    msg = str(info.value)
    assert info.value.notebook == "zz_boom"
    assert "zz_boom" in msg and "cell" in msg and "RuntimeError" in msg and "boom in the" in msg
    # tiny, listed after it, never ran; the failure is not recorded as a timing
    assert not (root / "book" / "executed" / "tiny.ipynb").exists()
    assert not (results / "timings" / "default.json").exists()
    assert pipeline.main(["run", "zz_boom", "--profile", "default", "--root", str(root)]) == 1


SPAN = """import json, os, time
from ipykernel.kernelapp import IPKernelApp
start = time.time()
results = os.environ["LOCALSGD_RESULTS"]
os.makedirs(results, exist_ok=True)
open(os.path.join(results, os.environ["LOCALSGD_NOTEBOOK"] + ".started"), "w").close()
# with `together = N` in its parameters, it waits (a minute at most) until N notebooks have
# started, so that notebooks run at once overlap however late each kernel comes up
while (sum(f.endswith(".started") for f in os.listdir(results)) < globals().get("together", 1)
       and time.time() < start + 60):
    time.sleep(0.1)
time.sleep(2)
name = os.environ["LOCALSGD_NOTEBOOK"] + ".span"
app = IPKernelApp.instance()
with open(os.path.join(results, name), "w") as f:
    json.dump([start, time.time(), app.transport, app.ip,
               sorted(os.sched_getaffinity(0)), os.environ.get("OPENBLAS_NUM_THREADS")], f)
"""
SEEN = """import json, os
with open(os.path.join(os.environ["LOCALSGD_RESULTS"], "timings", "default.json")) as f:
    seen = sorted(json.load(f)["notebooks"])
with open(os.path.join(os.environ["LOCALSGD_RESULTS"], "seen.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.fixture
def every_core():
    """The test's process on every core of the machine while the test runs (a ``make test``
    worker is pinned to one), so that sharing them out among kernels can be seen."""
    mine = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    yield
    os.sched_setaffinity(0, mine)


def test_notebooks_run_at_once_and_the_last_after_every_other(root: Path, write_notebook,
                                                               capsys, every_core) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    for stem in ("a1", "a2"):
        write_notebook(root / "notebooks" / f"{stem}.ipynb", "together = 2\n", SPAN)
    write_notebook(root / "notebooks" / "report.ipynb", "n = 1\n", SEEN)
    done = pipeline.execute("default", ["a1", "a2", "report"], root=root, jobs=2)
    assert [d.name for d in done] == ["a1", "a2", "report"]  # in the plan's order
    (s1, e1, t1, ip1, c1, b1), (s2, e2, t2, ip2, c2, b2) = (
        json.loads((results / f"{s}.span").read_text()) for s in ("a1", "a2"))
    assert max(s1, s2) < min(e1, e2), "the two notebooks did not run at the same time"
    # each kernel's sockets are files in a directory of its own, not TCP ports two kernels
    # started together could both pick
    assert t1 == t2 == "ipc" and Path(ip1).parent != Path(ip2).parent
    # and each kernel runs on a share of the cores of its own, its BLAS with as many threads
    assert sorted([tuple(c1), tuple(c2)]) == sorted(cores.shares(2))
    assert (b1, b2) == (str(len(c1)), str(len(c2)))
    # the last notebook starts once the others are recorded (it reports their run times)
    assert json.loads((results / "seen.json").read_text()) == ["a1", "a2"]
    timings = json.loads((results / "timings" / "default.json").read_text())["notebooks"]
    assert set(timings) == {"a1", "a2", "report"}
    out = capsys.readouterr().out
    assert "[3/3] report ... ok (" in out and out.count(" ... ok (") == 3


def test_with_no_run_of_its_own_the_longest_chapters_by_the_carried_times_start_first(
        root: Path, write_notebook) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    for stem in ("b1", "b2", "b3"):
        write_notebook(root / "notebooks" / f"{stem}.ipynb", "n = 1\n", SPAN)
    write_notebook(root / "notebooks" / "report.ipynb", "n = 1\n", "n = 2\n")
    (root / "notebooks" / "profiles" / "run_times.json").write_text(
        json.dumps({"default": {"b1": 10, "b2": 20, "b3": 30}}))
    pipeline.execute("default", ["b1", "b2", "b3", "report"], root=root, jobs=2)
    (s1, _, *_), (_, e2, *_), (_, e3, *_) = (
        json.loads((results / f"{s}.span").read_text()) for s in ("b1", "b2", "b3"))
    # b3 and b2 first, in the book's order b1 would have been among the first two
    assert s1 > min(e2, e3), "the shortest chapter started before a longer one had finished"


def test_a_failing_notebook_among_several_at_once_names_itself(root: Path) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    with pytest.raises(pipeline.NotebookFailed) as info:
        pipeline.execute("default", ["zz_boom", "tiny"], root=root, jobs=2)
    assert info.value.notebook == "zz_boom" and "boom in the" in str(info.value)
    timings = results / "timings" / "default.json"
    assert not timings.exists() or "zz_boom" not in json.loads(timings.read_text())["notebooks"]


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_integer(root: Path, jobs) -> None:
    with pytest.raises(ValueError, match="jobs"):
        pipeline.execute("default", ["tiny"], root=root, jobs=jobs)
    assert _nothing_written(root)


def test_execute_with_no_notebooks_is_a_no_op(tmp_path: Path) -> None:
    (tmp_path / "notebooks" / "profiles").mkdir(parents=True)
    (tmp_path / "notebooks" / "profiles" / "ci.yaml").write_text("{}\n")
    assert pipeline.execute("ci", root=tmp_path) == []


# ---------------------------------------------------------------------------------------------
# report


def test_verdict_writes_json_atomically_with_computed_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    monkeypatch.setenv("LOCALSGD_PROFILE", "ci")
    measured = np.float32(0.75)
    checks = [
        Check.at_most("loss ratio", measured, 0.5),
        Check("gram positive", "> 0", np.float64(0.1), np.float64(0.1) > 0),
        Check.between("slope", -1.0, -2.0, 0.0),
    ]
    record = report.verdict("02_demo", "the loss falls", checks)
    # no session was started (no notebook checked its parameters): the record is kept apart
    (path,) = (tmp_path / "runs").iterdir()  # no temp file left
    assert path.name == f"02_demo-{records.parameters_digest(None)}.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == record
    assert on_disk["holds"] is False
    assert [c["holds"] for c in on_disk["checks"]] == [False, True, True]
    assert on_disk["checks"][0]["measured"] == pytest.approx(0.75)
    assert on_disk["profile"] == "ci" and on_disk["claim"] == "the loss falls"
    assert on_disk["book"] is False and on_disk["parameters"] is None
    assert on_disk["headline"] == ["loss ratio"]
    assert set(on_disk) == {"chapter", "claim", "holds", "checks", "headline", "profile", "book",
                            "parameters", "commit", "dirty", "versions", "platform", "runs",
                            "created"}
    out = capsys.readouterr().out
    assert "DOES NOT HOLD" in out and "loss ratio" in out

    report.verdict("02_demo", "the loss falls", checks[1:])
    assert json.loads(path.read_text())["holds"] is True
    assert not (tmp_path / "verdicts").exists()


def test_check_refuses_a_hard_coded_non_boolean_and_handles_nan(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    with pytest.raises(TypeError):
        Check("x", "> 0", 1.0, "yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Check("x", "> 0", 1.0, 1)  # type: ignore[arg-type]
    nan = Check.at_most("diverged", float("nan"), 1.0)
    assert nan.holds is False and nan.measured == "nan"
    with pytest.raises(ValueError, match="checks"):
        report.verdict("x", "claim", [])
    with pytest.raises(ValueError, match="chapter"):
        report.verdict("a/b", "claim", [nan])
    record = report.verdict("nan_case", "stays finite", [nan])
    assert record["holds"] is False
    (path,) = (tmp_path / "runs").glob("nan_case-*.json")
    assert json.loads(path.read_text())["checks"][0]["measured"] == "nan"


def test_glue_outside_a_kernel_is_a_no_op() -> None:
    assert report.glue("x", 1.5, fmt=".2f") is None
    with pytest.raises(ValueError, match="glue name"):
        report.glue("not an identifier", 1)


def test_render_refuses_a_toc_entry_without_its_notebook(root: Path) -> None:
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/executed/tiny\n  - file: book/executed/99_missing\n"
    )
    with pytest.raises(ValueError, match=r"99_missing"):
        pipeline.render(root=root)


def test_render_refuses_a_notebook_not_executed_yet(root: Path) -> None:
    with pytest.raises(ValueError, match=r"tiny.*no executed copy"):
        pipeline.render(root=root)


# ---------------------------------------------------------------------------------------------
# parameters that cannot run: refused before anything runs, naming the parameter or the file


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_param_tol_nan_or_inf_is_refused_before_anything_runs(root: Path, value: str) -> None:
    with pytest.raises(ValueError, match=r"parameter eta=.*finite"):
        pipeline.run("tiny", "ci", f"-p eta {value}", root=root)
    assert _nothing_written(root)
    with pytest.raises(ValueError, match="eta"):
        pipeline.run("tiny", "ci", {"eta": float(value)}, root=root)


def test_param_400_digit_int_for_a_float_is_refused_naming_it(root: Path) -> None:
    with pytest.raises(ValueError, match=r"parameter eta .*400 digits.*float"):
        pipeline.run("tiny", "ci", "-p eta " + "9" * 400, root=root)
    assert _nothing_written(root)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{eta: [1, 2}", "line 1"),
        ("eta: 0.5\n  width: [", "line 2"),
        ("!!python/object/apply:os.system ['echo hacked']", "python/object"),
        ("eta: !!python/name:os.getcwd ''", "python/name"),
    ],
)
def test_param_yaml_invalid_or_python_tagged_is_refused_naming_the_flag(
    root: Path, text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"PARAMS: -y") as info:
        pipeline.run("tiny", "ci", ["-y", text], root=root)
    assert problem in str(info.value)
    assert _nothing_written(root)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("tiny:\n  eta: 0.25\n   width: 3\n", "line 3"),
        ("tiny: !!python/object/apply:os.system ['echo hacked']\n", "line 1"),
    ],
)
def test_param_profile_file_invalid_yaml_is_refused_naming_file_and_line(
    root: Path, text: str, problem: str
) -> None:
    bad = root / "notebooks" / "profiles" / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError) as info:
        pipeline.execute("bad", root=root)
    assert str(bad) in str(info.value) and problem in str(info.value)
    assert _nothing_written(root)


def test_cli_reports_a_bad_parameter_without_a_traceback(root: Path, capsys) -> None:
    code = pipeline.main(["run", "tiny", "--profile", "ci", "-p", "eta", "nan",
                          "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: parameter eta=nan") and "Traceback" not in err
    code = pipeline.main(["run", "tiny", "--profile", "ci", "-y", "{a: [", "--root", str(root)])
    assert code == 1 and "PARAMS: -y" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# order, tidying, scoreboard and the HTML folder


def _toc(root: Path, *stems: str) -> None:
    chapters = "".join(f"      - file: book/executed/{s}\n" for s in stems)
    (root / "_toc.yml").write_text(
        f"format: jb-book\nroot: book/intro\nparts:\n  - chapters:\n{chapters}"
    )


def test_notebooks_execute_in_toc_order(root: Path, write_notebook) -> None:
    write_notebook(root / "notebooks" / "aa_last.ipynb", "n = 1\n")
    assert [p.stem for p in layout.list_notebooks(root)] == ["aa_last", "tiny", "zz_boom"]
    _toc(root, "zz_boom", "tiny")
    assert [p.stem for p in layout.list_notebooks(root)] == ["zz_boom", "tiny", "aa_last"]


def test_colab_link_only_with_a_public_repository(tmp_path: Path, write_notebook) -> None:
    assert tidy.colab_url("", "01_setting") is None
    assert tidy.colab_url("https://example.org/a/b", "01_setting") is None
    url = tidy.colab_url("https://github.com/owner/book/", "01_setting", "dev")
    assert url == (
        "https://colab.research.google.com/github/owner/book/blob/dev/notebooks/01_setting.ipynb"
    )
    path = write_notebook(tmp_path / "01_setting.ipynb", "n = 1\n")
    tidy.tidy_executed(path, "ci", "", "main")
    cells = nbformat.read(str(path), as_version=4).cells
    assert not any("Colab" in c.source for c in cells)
    for _ in range(2):  # idempotent
        tidy.tidy_executed(path, "ci", "https://github.com/owner/book", "main")
    cells = nbformat.read(str(path), as_version=4).cells
    links = [i for i, c in enumerate(cells) if "Open this chapter in Colab" in c.source]
    assert links == [1] and "blob/main/notebooks/01_setting.ipynb" in cells[1].source
    # the book's own config names no repository yet: no link
    assert tidy.repository(Path(__file__).resolve().parents[1] / "_config.yml")[0] == ""


def _record(directory: Path, chapter: str, holds: bool, claim: str, profile="ci") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record = {"chapter": chapter, "claim": claim, "holds": holds, "checks": [],
              "profile": profile}
    (directory / f"{chapter}.json").write_text(json.dumps(record))


def test_scoreboard_is_built_from_the_verdict_records(tmp_path: Path) -> None:
    v = tmp_path / "verdicts"
    _record(v, "02_b", False, r"The gap \( g \) is | small")
    _record(v, "01_a", True, "Norms stay\nnear 1.", profile="default")
    _record(v, "zz_extra", True, "not in the book")
    (v / "broken.json").write_text("{not json")
    text = scoreboard.scoreboard_markdown(
        ["01_a", "02_b", "03_c"], records.load_records(v),
        titles={"01_a": "Norms at $t = 0$", "02_b": "The gap", "03_c": "Later"},
        marks={"02_b": ["commit 1234567, not this build's abcdef0"]})
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")][2:]
    # titles, not file names, each linked to the chapter's verdict box, with its math rendered
    assert rows[0] == (
        "| <a class='mathjax_process' href='executed/01_a.html#verdict-01_a'>Norms at "
        "\\(t = 0\\)</a> | Norms stay near 1. | **HOLDS** | `default` |")
    assert rows[1] == (
        "| <a class='mathjax_process' href='executed/02_b.html#verdict-02_b'>The gap</a> "
        "| The gap $g$ is \\| small | **DOES NOT HOLD** "
        "| `ci`<br>⚠ commit 1234567, not this build's abcdef0 |")
    assert rows[2] == (
        "| <a class='mathjax_process' href='executed/03_c.html'>Later</a> |  | not run yet |  |")
    assert rows[3].startswith("| zz_extra | not in the book | **HOLDS**")
    assert ("2 of 3 verdicts hold; 1 chapters have not run yet; 1 records (⚠) differ from this "
            "build.") in text


def test_render_writes_the_scoreboard_and_empties_the_html_folder_first(
    root: Path, monkeypatch: pytest.MonkeyPatch, write_notebook
) -> None:
    _toc(root, "tiny", "zz_boom")
    for stem in ("tiny", "zz_boom"):
        write_notebook(root / "book" / "executed" / f"{stem}.ipynb", "n = 1\n")
    results = Path(os.environ["LOCALSGD_RESULTS"])
    _record(results / "verdicts", "tiny", True, "width is positive")
    stale = root / "book" / "_build" / "html" / "_images" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"png")
    seen = {}

    def fake_build():
        seen["stale_during_build"] = stale.exists()
        seen["board"] = (root / "book" / "_generated" / "scoreboard.md").read_text()
        return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(pipeline, "_jupyter_book_command", fake_build)
    pipeline.render(root=root)
    assert not stale.exists()
    assert ("| <a class='mathjax_process' href='executed/tiny.html#verdict-tiny'>tiny</a> | width "
            "is positive | **HOLDS** | `ci`<br>⚠ no provenance (written before records carried "
            "it) |") in seen["board"]
    assert "zz_boom" in seen["board"] and "not run yet" in seen["board"]


def test_prune_mathjax_keeps_what_the_pages_load(tmp_path: Path) -> None:
    mj = tmp_path / "_static" / "mathjax"
    keep = ["tex-chtml.js", "input/tex/extensions/ams.js", "output/chtml/fonts/woff-v2/a.woff",
            "ui/menu.js"]
    drop = ["tex-svg-full.js", "sre/mathmaps/en.json", "output/svg/fonts/tex.js", "es5/x.js"]
    for rel in keep + drop:
        (mj / rel).parent.mkdir(parents=True, exist_ok=True)
        (mj / rel).write_bytes(b"x" * 10)
    assert sitefiles.prune_mathjax(tmp_path) == 10 * len(drop)
    assert sorted(p.relative_to(mj).as_posix() for p in mj.rglob("*") if p.is_file()) == sorted(
        keep)
    assert not (mj / "sre").exists()
    assert sitefiles.prune_mathjax(tmp_path / "nothing") == 0


def test_tolerance_table_has_one_row_per_tolerance_with_its_origin():
    from localsgd.claims import Tolerance

    table = report.tolerance_table({
        "sqrt_m_distance": Tolerance(1.5, "ci-fit", "largest on ci times 1.5"),
        "band": Tolerance((0.8, 1.25), "prior", "a quarter either way | no more"),
    })
    lines = table.splitlines()
    assert len(lines) == 4
    assert "| sqrt m distance | 1.5 | fitted on the ci profile's runs |" in lines[2]
    assert "[0.8, 1.25]" in lines[3] and "fixed before any run" in lines[3]
    assert lines[3].endswith("either way \\| no more |")
    with pytest.raises(ValueError, match="must be a Tolerance"):
        report.tolerance_table({"x": 1.0})
