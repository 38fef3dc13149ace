"""Every chapter checks its parameters in its first code cell (localsgd_book.parameters, through
localsgd_book.session.start): the type of each against its default in the parameters cell, and
its value against the range the notebook declares. A bad one stops the chapter there, before any
experiment, with a message that names it, its value, what is allowed and how to pass it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import nbformat
import pytest

from localsgd_book import layout, parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = layout.list_notebooks(ROOT)


# ---------------------------------------------------------------------------------------------
# the rules


@pytest.mark.parametrize(
    "spec, inside, outside, words",
    [
        (">= 1", [1, 7, 1.5], [0, -1, 0.99], "≥ 1"),
        ("> 0", [1e-9, 3], [0, -2], "> 0"),
        ("<= 1", [1, -5], [1.01], "≤ 1"),
        ("< 2", [1.99], [2, 3], "< 2"),
        ("(0, 2)", [0.5, 1.99], [0, 2, -1], "in (0, 2)"),
        ("[0, 1]", [0, 1, 0.5], [-0.1, 1.1], "in [0, 1]"),
        ("(0, 1]", [1, 0.2], [0], "in (0, 1]"),
        ("[1, inf)", [1, 1e9], [0.5], "≥ 1"),
        (("gelu", "softplus"), ["gelu"], ["relu", 1], "one of 'gelu', 'softplus'"),
    ],
)
def test_a_rule_admits_its_range_and_says_it(spec, inside, outside, words) -> None:
    rule = parameters.parse_rule("x", spec)
    assert all(rule.admits(v) for v in inside)
    assert not any(rule.admits(v) for v in outside)
    assert rule.describe() == words
    assert not rule.admits(True) or rule.allowed is not None  # a flag is not a number


@pytest.mark.parametrize("spec", [">= one", "(2, 1)", "[0, 1", "", 3, ()])
def test_a_malformed_rule_is_refused_naming_the_parameter(spec) -> None:
    with pytest.raises(ValueError, match="range of taus"):
        parameters.parse_rule("taus", spec)


# ---------------------------------------------------------------------------------------------
# the check, on a small notebook

PARAMS = "n = 32\neta = 0.5\ntaus = [1, 4, 16]\nname = 'gelu'\nflag = False\nbands = [0.5, 2.0]\n"
RANGES = {"n": ">= 2", "eta": "(0, 2)", "taus": ">= 1", "name": ("gelu", "softplus"),
          "bands": "> 0"}


@pytest.fixture
def chapter(tmp_path: Path, write_notebook) -> Path:
    write_notebook(tmp_path / "notebooks" / "demo.ipynb", PARAMS)
    return tmp_path


def _defaults(**changes):
    values = {"n": 32, "eta": 0.5, "taus": [1, 4, 16], "name": "gelu", "flag": False,
              "bands": [0.5, 2.0]}
    values.update(changes)
    return values


def test_good_parameters_pass_converted(chapter: Path) -> None:
    got = parameters.check_parameters("demo", _defaults(eta=1, bands=[1, 3]), RANGES, chapter)
    assert got == _defaults(eta=1.0, bands=[1.0, 3.0])
    assert isinstance(got["eta"], float) and all(isinstance(b, float) for b in got["bands"])


@pytest.mark.parametrize(
    "changes, words",
    [
        # papermill's -p passes "[1, 4]" as a string: the message says to use -y
        ({"taus": "[1, 4]"}, ["taus='[1, 4]'", "type str", "expected list", "-y \"taus: [1, 4]\"",
                              "passes a string"]),
        ({"n": 1}, ["n=1", "out of range", "≥ 2", "-p n VALUE"]),
        ({"n": 3.5}, ["n=3.5", "expected int", "-p n VALUE"]),
        ({"eta": 2.0}, ["eta=2.0", "in (0, 2)", "-p eta VALUE"]),
        ({"eta": math.nan}, ["eta=nan", "finite"]),
        ({"taus": [1, 0]}, ["taus=[1, 0]", "item 1, 0,", "each item ≥ 1", "-y"]),
        ({"taus": []}, ["taus=[]", "empty", "-y"]),
        ({"taus": [1.5]}, ["taus[0]=1.5", "expected int", "items of taus are ints"]),
        ({"name": "relu"}, ["name='relu'", "one of 'gelu', 'softplus'"]),
        ({"flag": "yes"}, ["flag='yes'", "expected bool", "-p flag VALUE"]),
    ],
)
def test_a_bad_parameter_is_named_with_what_is_allowed_and_how_to_pass_it(
    chapter: Path, changes: dict, words: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        parameters.check_parameters("demo", _defaults(**changes), RANGES, chapter)
    msg = str(info.value)
    assert "(notebook demo)" in msg
    for word in words:
        assert word in msg, (word, msg)


def test_a_notebook_must_declare_a_range_for_every_number(chapter: Path) -> None:
    with pytest.raises(ValueError, match=r"\['bands', 'eta'\] of notebook demo have no declared"):
        parameters.check_parameters("demo", _defaults(), {"n": ">= 2", "taus": ">= 1"}, chapter)
    with pytest.raises(ValueError, match=r"ranges=\['widht'\] name no parameter"):
        parameters.check_parameters("demo", _defaults(), {**RANGES, "widht": ">= 1"}, chapter)
    with pytest.raises(ValueError, match="chapter='nope' has no notebook"):
        parameters.check_parameters("nope", _defaults(), RANGES, chapter)


# ---------------------------------------------------------------------------------------------
# the book's notebooks


def declared_ranges(notebook: Path) -> dict:
    """The ``ranges`` a notebook passes to ``session.start`` in its first code cell after the
    parameters cell (read from the source, as literals)."""
    nb = nbformat.read(str(notebook), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    start = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    for node in ast.walk(ast.parse(code[start + 1].source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "start":
            value = {k.arg: k.value for k in node.keywords}["ranges"]
            if isinstance(value, ast.Call):  # dict(name=rule, ...)
                return {k.arg: ast.literal_eval(k.value) for k in value.keywords}
            return ast.literal_eval(value)
    raise AssertionError(f"{notebook.name}: its first code cell after the parameters cell does "
                         "not call session.start(chapter, globals(), ranges=...)")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
@pytest.mark.parametrize("profile", parameters.available_profiles(ROOT))
def test_every_profile_runs_every_chapter_inside_its_declared_ranges(notebook, profile) -> None:
    values = parameters.profile_parameters(notebook, profile, ROOT)
    parameters.check_parameters(notebook.stem, values, declared_ranges(notebook), ROOT)


def _bad_parameter(notebook: Path) -> tuple[str, object, list[str]]:
    """A wrong value for one of the notebook's parameters and the words its message must hold:
    a list passed with papermill's -p (a string) where there is a list, else a size of -1."""
    defaults = parameters.notebook_parameters(notebook)
    lists = [k for k, v in defaults.items() if isinstance(v, list) and v]
    if lists:
        name = lists[0]
        text = "[" + ", ".join(map(str, defaults[name][:2])) + "]"
        return name, text, [f"{name}={text!r}", "type str", "expected list", "-y", "a string"]
    name = next(k for k, v in defaults.items() if isinstance(v, int) and not isinstance(v, bool))
    return name, -1, [f"{name}=-1", "out of range", f"-p {name} VALUE"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_bad_parameter_stops_the_chapter_in_its_first_code_cell(
    notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    results = tmp_path / "results"
    monkeypatch.setenv("LOCALSGD_RESULTS", str(results))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    name, value, words = _bad_parameter(notebook)
    out = tmp_path / notebook.name
    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(str(notebook), str(out), parameters={name: value},
                                   kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    for word in words:
        assert word in info.value.evalue, (word, info.value.evalue)
    assert info.value.ename == "ValueError"
    executed = nbformat.read(str(out), as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    first = max(i for i, t in enumerate(tags) if "parameters" in t or "injected-parameters" in t)
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error"
                                                    for o in c.get("outputs", []))]
    assert failed == [first + 1], "the check must stop the chapter in its first code cell"
    assert all(c.get("execution_count") is None for c in code[first + 2:])
    assert not results.exists() or not any(results.rglob("*.json")), "nothing may be written"
