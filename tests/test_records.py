"""Verdict records (localsgd_book.records, written by localsgd_book.report.verdict): what they
hold, where they go (the book's verdicts, or apart for a run with other parameters), the runs a
chapter used (localsgd_book.session), and how the scoreboard marks a record that differs from
the build it is rendered in."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

import localsgd
from localsgd import experiments
from localsgd.claims import Check
from localsgd_book import pipeline, records, report, scoreboard, session

TINY_CI = {"width": 3, "eta": 0.25, "label": "a", "flag": False, "sizes": [1, 2]}


def _glued_html(executed: Path, name: str) -> str:
    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                return next(v for k, v in out["data"].items() if k.endswith("text/html"))
    raise AssertionError(f"{executed.name} glued no {name}")


def _papermill(tiny_book: Path, out: Path, params: dict) -> None:
    import papermill

    papermill.execute_notebook(str(tiny_book / "notebooks" / "tiny.ipynb"), str(out),
                               parameters=params, kernel_name="python3", cwd=str(tiny_book),
                               progress_bar=False)


def test_a_papermill_run_with_other_parameters_leaves_the_book_verdict_untouched(
    tiny_book: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    pipeline.execute("ci", ["tiny"], root=tiny_book)
    book = results / "verdicts" / "tiny.json"
    before = book.read_bytes()
    record = json.loads(before)
    assert record["book"] is True and record["profile"] == "ci"
    assert record["parameters"] == TINY_CI
    assert set(record["versions"]) >= {"localsgd", "jax", "jaxlib", "python"}
    assert record["platform"]["backend"] in ("cpu", "gpu", "tpu")
    # the outcome box links the verdict box, whose id it names, and shows the headline check
    executed = tiny_book / "book" / "executed" / "tiny.ipynb"
    assert "href='#verdict-tiny'" in _glued_html(executed, "outcome_tiny")
    assert "width: measured 3" in _glued_html(executed, "outcome_tiny")
    assert "id='verdict-tiny'" in _glued_html(executed, "verdict_tiny")

    # as a user would: plain papermill, other parameters, no profile in the environment
    monkeypatch.delenv("LOCALSGD_PROFILE", raising=False)
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    _papermill(tiny_book, tmp_path / "out.ipynb", {"width": 7})
    assert book.read_bytes() == before
    (apart,) = (results / "runs").glob("tiny-*.json")
    other = json.loads(apart.read_text())
    assert other["book"] is False and other["profile"] is None
    assert other["parameters"] == {**TINY_CI, "width": 7, "eta": 0.5}
    assert apart.name == f"tiny-{records.parameters_digest(other['parameters'])}.json"
    assert "This run is not the book" in _glued_html(tmp_path / "out.ipynb", "verdict_tiny")


def test_a_plain_papermill_run_with_a_profiles_parameters_is_the_books(
    tiny_book: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = Path(os.environ["LOCALSGD_RESULTS"])
    monkeypatch.delenv("LOCALSGD_PROFILE", raising=False)
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    _papermill(tiny_book, tmp_path / "out.ipynb", {"width": 3, "eta": 0.25})  # profile ci's
    record = json.loads((results / "verdicts" / "tiny.json").read_text())
    assert record["book"] is True and record["profile"] == "ci"
    assert not (results / "runs").exists()


def test_the_session_notes_every_run_the_chapter_used(
    tiny_book: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the hook and the session are undone afterwards
    monkeypatch.setattr(experiments, "run", experiments.run)
    if "run" in vars(localsgd):
        monkeypatch.setattr(localsgd, "run", localsgd.run)
    monkeypatch.setattr(session, "_current", None)
    monkeypatch.chdir(tiny_book)
    monkeypatch.setenv("LOCALSGD_PROFILE", "ci")
    namespace = dict(TINY_CI)
    ranges = {"width": ">= 1", "eta": "> 0", "sizes": ">= 1"}
    session.start("tiny", namespace, ranges)
    session.start("tiny", namespace, ranges)  # a second start wraps run once only
    assert getattr(experiments.run.__wrapped__, "__wrapped__", None) is None
    exp = experiments.Experiment(n=4, d=4, m=8, L=1, num_clients=2, rounds=2, seeds=1,
                                 algorithm="local_gd", tau=1, eta=0.5)
    other = exp.replace(seed=1)
    experiments.run(exp)
    experiments.run_grid([other, exp])  # through run: noted once each, in first-use order
    record = report.verdict("tiny", "width is positive", [Check.at_least("width", 3, 1)])
    assert record["runs"] == [exp.key(), other.key()]
    assert record["book"] is True and record["parameters"] == TINY_CI


def test_a_headline_names_checks_of_the_verdict(tmp_results: Path) -> None:
    checks = [Check.at_least("a", 1, 0), Check.at_most("rounds to eps", float("inf"), 10)]
    assert report.verdict("x", "claim", checks, headline="rounds to eps")["headline"] == [
        "rounds to eps"]
    assert report.verdict("x", "claim", checks, headline=[1, 0])["headline"] == [
        "rounds to eps", "a"]
    with pytest.raises(ValueError, match="headline='b' names no check"):
        report.verdict("x", "claim", checks, headline="b")
    with pytest.raises(ValueError, match="headline=2 names no check"):
        report.verdict("x", "claim", checks, headline=2)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.org", "-c",
                    "user.name=t", *args], check=True, capture_output=True)


def test_git_state_reads_the_commit_and_whether_the_tree_is_dirty(tmp_path: Path) -> None:
    assert records.git_state(tmp_path) == (None, None)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-qm", "a")
    commit, dirty = records.git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "a.txt").write_text("b")
    assert records.git_state(tmp_path) == (commit, True)


def _book_record(**changes) -> dict:
    record = {"chapter": "tiny", "claim": "c", "holds": True, "checks": [], "profile": "ci",
              "book": True, "parameters": dict(TINY_CI), "commit": "a" * 40, "dirty": False}
    record.update(changes)
    return record


def test_differences_name_the_commit_and_the_parameters(tiny_book: Path) -> None:
    nb = tiny_book / "notebooks" / "tiny.ipynb"
    assert records.differences(_book_record(), "a" * 40, nb, tiny_book) == []
    assert records.differences(_book_record(), "b" * 40, nb, tiny_book) == [
        "commit aaaaaaa, not this build's bbbbbbb"]
    assert records.differences(_book_record(dirty=True), "a" * 40, nb, tiny_book) == [
        "uncommitted changes"]
    changed = _book_record(parameters={**TINY_CI, "width": 9})
    assert records.differences(changed, "a" * 40, nb, tiny_book) == [
        "parameters differ from profile ci: width = 9"]
    # the profile itself changed since the record was written
    (tiny_book / "notebooks" / "profiles" / "ci.yaml").write_text("tiny:\n  eta: 0.3\n")
    assert records.differences(_book_record(), "a" * 40, nb, tiny_book) == [
        "parameters differ from profile ci: eta = 0.25, width = 3"]
    old = {k: v for k, v in _book_record().items() if k not in ("commit", "dirty")}
    assert records.differences(old, "a" * 40, nb, tiny_book) == [
        "no provenance (written before records carried it)"]


def test_the_scoreboard_marks_a_record_that_differs_from_the_build(tiny_book: Path,
                                                                   tmp_path: Path) -> None:
    verdicts = tmp_path / "v"
    verdicts.mkdir()
    # the tiny book is no git checkout: its build's commit is None, like these records'
    (verdicts / "tiny.json").write_text(json.dumps(_book_record(commit=None)))
    (verdicts / "zz_boom.json").write_text(json.dumps(_book_record(
        chapter="zz_boom", commit=None, parameters={"n": 2}, profile="default")))
    out = scoreboard.write_scoreboard(tmp_path / "board.md", ["tiny", "zz_boom"], verdicts,
                                      tiny_book)
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| <a")]
    assert rows[0].endswith("| **HOLDS** | `ci` |")
    assert rows[1].endswith("| `default`<br>⚠ parameters differ from profile default: n = 2 |")
    assert "1 records (⚠) differ from this build" in out.read_text()
