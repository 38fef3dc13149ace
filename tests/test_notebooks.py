"""Smoke runs of the book's notebooks under the `ci` profile, and checks that the committed
notebooks are clean.

Each notebook is executed through the pipeline into book/executed/ (where `make test`'s
Sphinx build then reads it), with results going to a temporary LOCALSGD_RESULTS, and its
verdict must hold. With no notebooks yet, the tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from localsgd import pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NO_NOTEBOOKS = pytest.param(None, marks=pytest.mark.skip(reason="no notebooks/*.ipynb yet"))
CASES = [pytest.param(p, id=p.stem) for p in NOTEBOOKS] or [NO_NOTEBOOKS]


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", CASES)
def test_notebook_runs_under_ci_and_its_verdict_holds(notebook: Path, tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("LOCALSGD_RESULTS", str(results))
    pipeline.execute("ci", [notebook], root=ROOT)

    verdicts = sorted((results / "verdicts").glob("*.json"))
    assert verdicts, f"{notebook.stem} wrote no verdict (call localsgd.report.verdict)"
    for path in verdicts:
        record = json.loads(path.read_text())
        assert record["profile"] == "ci"
        failing = [c["name"] for c in record["checks"] if not c["holds"]]
        assert record["holds"] is True, (
            f"{notebook.stem}: verdict {path.stem} does not hold under ci; failing: {failing}"
        )


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
    assert pipeline.notebook_parameters(notebook), f"{notebook.name}: parameters cell is empty"


@pytest.mark.parametrize("profile", pipeline.available_profiles(ROOT) or ["ci"])
def test_profiles_name_existing_notebooks_and_valid_parameters(profile: str) -> None:
    if not NOTEBOOKS:
        pytest.skip("no notebooks/*.ipynb yet")
    entries = pipeline.load_profile(profile, ROOT)
    stems = {p.stem for p in NOTEBOOKS}
    unknown = sorted(k for k in entries if k != pipeline.ALL_KEY and k not in stems)
    assert not unknown, f"profile {profile} has entries for missing notebooks: {unknown}"
    for nb in NOTEBOOKS:
        pipeline.resolve_parameters(nb, entries)  # raises ValueError on a bad name or type
