"""Smoke runs of the book's notebooks under the `ci` profile, and checks that the committed
notebooks are clean.

Each notebook is executed through the pipeline into book/executed/ (where `make test`'s
Sphinx build then reads it), with results going to a temporary LOCALSGD_RESULTS, and its
verdict must hold. With no notebooks yet, the tests skip.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from localsgd import plotting
from localsgd.store import results_dir
from localsgd_book import layout, parameters, pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NO_NOTEBOOKS = pytest.param(None, marks=pytest.mark.skip(reason="no notebooks/*.ipynb yet"))
CASES = [pytest.param(p, id=p.stem) for p in NOTEBOOKS] or [NO_NOTEBOOKS]
# where the book's render reads the verdicts for the intro's scoreboard, and where the figure tests
# below read each chapter's figure records (taken before any test points LOCALSGD_RESULTS
# elsewhere)
BOOK_VERDICTS = results_dir(ROOT) / "verdicts"
BOOK_FIGURES = results_dir(ROOT) / "figures"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", CASES)
def test_notebook_runs_under_ci_and_its_verdict_holds(notebook: Path, tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("LOCALSGD_RESULTS", str(results))
    pipeline.execute("ci", [notebook], root=ROOT)

    verdicts = sorted((results / "verdicts").glob("*.json"))
    assert verdicts, f"{notebook.stem} wrote no verdict (call localsgd_book.report.verdict)"
    assert not (results / "runs").exists(), f"{notebook.stem} wrote a record apart from the book"
    for path in verdicts:
        record = json.loads(path.read_text())
        assert record["profile"] == "ci" and record["book"] is True
        failing = [c["name"] for c in record["checks"] if not c["holds"]]
        assert record["holds"] is True, (
            f"{notebook.stem}: verdict {path.stem} does not hold under ci; failing: {failing}"
        )
    # the executed copy is in book/executed, where `make test` renders it: its verdict goes
    # where the render builds the scoreboard from, its figure records where the tests read them
    BOOK_VERDICTS.mkdir(parents=True, exist_ok=True)
    for path in verdicts:
        shutil.copy(path, BOOK_VERDICTS / path.name)
    shutil.rmtree(BOOK_FIGURES / notebook.stem, ignore_errors=True)
    if (results / "figures" / notebook.stem).is_dir():
        shutil.copytree(results / "figures" / notebook.stem, BOOK_FIGURES / notebook.stem)
    _check_glued(notebook.stem, ROOT / "book" / "executed" / f"{notebook.stem}.ipynb", results)


GLUED_PNG = "application/papermill.record/image/png"


def _check_glued(stem: str, executed: Path, results: Path) -> None:
    """Every figure of the chapter is glued (``localsgd_book.report.glue``), which measures it."""
    nb = nbformat.read(str(executed), as_version=4)
    glued, inline = [], []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if GLUED_PNG in data:
                glued.append(out["metadata"]["scrapbook"]["name"])
            elif "image/png" in data:
                inline.append(i)
    assert not inline, (
        f"{stem}: cells {inline} show figures directly; glue them with report.glue (which "
        "measures their text) and close them"
    )
    for name in glued:
        path = results / "figures" / stem / f"{name}.json"
        assert path.exists(), f"{stem}: figure {name} was glued without being measured"


@pytest.mark.parametrize("notebook", CASES)
def test_every_figure_is_legible_with_legends_off_the_data_and_every_axis_labelled(
    notebook: Path,
) -> None:
    """Read from the figure records of the chapter's last run (``report.glue`` measures every
    figure it glues, :func:`localsgd.plotting.figure_report`): at the book's column width no
    text is below ``MIN_TEXT_PX``, no legend covers data or text, no marker covers a written
    value, and every axis that shows ticks has a label."""
    found = sorted((BOOK_FIGURES / notebook.stem).glob("*.json"))
    if not found:
        pytest.skip(f"{notebook.stem} has no figure records (it has not run, or draws none)")
    problems = []
    for path in found:
        record = json.loads(path.read_text())
        name = record["figure"]
        if "overlaps" not in record:
            problems.append(f"{name}: measured by an older build; execute the chapter again")
            continue
        if record["smallest_text_px"] < plotting.MIN_TEXT_PX:
            problems.append(f"{name}: {record['smallest_text']!r} is "
                            f"{record['smallest_text_px']:.1f} px on the page (at least "
                            f"{plotting.MIN_TEXT_PX:g} px needed)")
        problems += [f"{name}: {o}" for o in record["overlaps"] + record["unlabelled"]]
    assert not problems, f"{notebook.stem}:\n" + "\n".join(problems)


@pytest.mark.parametrize("notebook", CASES)
def test_notebook_is_committed_clean_with_a_parameters_cell(notebook: Path) -> None:
    nb = nbformat.read(str(notebook), as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{notebook.name}: cells {dirty} have outputs; strip them before committing"
    tagged = [
        c
        for c in nb.cells
        if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, f"{notebook.name}: needs exactly one code cell tagged `parameters`"
    assert parameters.notebook_parameters(notebook), f"{notebook.name}: parameters cell is empty"


def test_the_carried_run_times_name_every_notebook_and_no_other() -> None:
    """``notebooks/profiles/run_times.json`` orders a fresh clone's ``make book --jobs``: a
    chapter missing from it, or one renamed, would start out of its order."""
    carried = json.loads((ROOT / "notebooks" / "profiles" / "run_times.json").read_text())
    stems = {p.stem for p in NOTEBOOKS}
    for profile, seconds in carried.items():
        assert profile in parameters.available_profiles(ROOT), profile
        assert set(seconds) == stems, (profile, sorted(set(seconds) ^ stems))
        assert all(isinstance(v, int | float) and v > 0 for v in seconds.values()), profile


@pytest.mark.parametrize("profile", parameters.available_profiles(ROOT) or ["ci"])
def test_profiles_name_existing_notebooks_and_valid_parameters(profile: str) -> None:
    if not NOTEBOOKS:
        pytest.skip("no notebooks/*.ipynb yet")
    entries = parameters.load_profile(profile, ROOT)
    stems = {p.stem for p in NOTEBOOKS}
    unknown = sorted(k for k in entries if k != parameters.ALL_KEY and k not in stems)
    assert not unknown, f"profile {profile} has entries for missing notebooks: {unknown}"
    for nb in NOTEBOOKS:
        parameters.resolve_parameters(nb, entries)  # raises ValueError on a bad name or type


# a chapter's code: its parameters, its runs, its kernel models and width axis, its figures and
# its verdict, each a few calls into the library
MAX_CHAPTER_CODE_LINES = 210
TOP_LEVEL_DEF = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", re.MULTILINE)


def _code_cells(path: Path) -> list[str]:
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebooks_hold_little_code_and_share_no_helper() -> None:
    """The book reads as prose, figures and verdicts: each notebook holds at most
    MAX_CHAPTER_CODE_LINES code lines, and a function or class defined at a cell's top level
    appears in one notebook only (a helper two chapters need lives in the library)."""
    if not NOTEBOOKS:
        pytest.skip("no notebooks/*.ipynb yet")
    lines = {p.stem: sum(len(src.splitlines()) for src in _code_cells(p)) for p in NOTEBOOKS}
    defined: dict[str, set[str]] = {}
    for p in NOTEBOOKS:
        for src in _code_cells(p):
            for name in TOP_LEVEL_DEF.findall(src):
                defined.setdefault(name, set()).add(p.stem)
    shared = {name: sorted(stems) for name, stems in defined.items() if len(stems) > 1}
    assert not shared, f"helpers defined in more than one notebook (move to the library): {shared}"
    long = {stem: n for stem, n in lines.items() if n > MAX_CHAPTER_CODE_LINES}
    assert not long, (
        f"notebooks with more than {MAX_CHAPTER_CODE_LINES} code lines: {long} "
        f"(move what they compute into the library)"
    )


def test_the_intros_map_links_every_chapter_and_the_algorithms_are_cited_where_introduced():
    """The intro's map covers every chapter of the table of contents (a chapter added to
    _toc.yml without a line in the map fails here); FedProx and SCAFFOLD, which chapter 10 runs,
    are introduced with their citations on the page that defines the algorithms."""
    intro = (ROOT / "book" / "intro.md").read_text()
    board = intro.index("## A map of the book")
    the_map = intro[board:intro.index("\n## ", board + 1)]
    missing = [s for s in layout.toc_executed_stems(layout.layout(ROOT))
               if f"executed/{s}.ipynb" not in the_map]
    assert not missing, f"the intro's map leaves out {missing}"
    algorithm = (ROOT / "book" / "algorithm.md").read_text()
    bib = (ROOT / "book" / "references.bib").read_text()
    for key, name in (("li2020fedprox", "FedProx"), ("karimireddy2020scaffold", "SCAFFOLD")):
        assert f"{{{key}," in bib, f"{key} is not in references.bib"
        assert f"{{cite}}`{key}`" in algorithm and f"prf:definition}} {name}" in algorithm
