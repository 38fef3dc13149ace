"""The book works without a network: its math renders from a MathJax copied into the build
(sphinx-mathjax-offline), and neither the notebooks nor the library fetch anything.

Cheap static checks. The HTML checks skip when the book has not been built
(`python -m localsgd_book.pipeline render` writes book/_build/html; LOCALSGD_BOOK_HTML names another
build).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("LOCALSGD_BOOK_HTML") or ROOT / "book" / "_build" / "html")
PAGES = sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts) if HTML.is_dir() else []
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LIBRARY = sorted((ROOT / "lib" / "localsgd").glob("*.py"))

SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)
REMOTE = re.compile(r"^(?:https?:)?//", re.I)
MATH = re.compile(r"mathjax|katex|polyfill", re.I)
URL = re.compile(r"(?:https?:)?//[^\s\"'<>)]+", re.I)
# A code line that fetches over the network (URLs in comments or prose are not code here).
FETCH = re.compile(
    r"\b(?:urllib|requests|httpx|aiohttp|urlopen|urlretrieve|wget|curl|fetch_openml|"
    r"load_dataset|hf_hub_download|download)\b|https?://|pip install", re.I)


def _no_html():
    return pytest.mark.skip(reason="no built book (book/_build/html)")


HTML_CASES = [pytest.param(p, id=str(p.relative_to(HTML))) for p in PAGES] or [
    pytest.param(None, marks=_no_html())]


@pytest.mark.parametrize("page", HTML_CASES)
def test_built_pages_load_math_from_the_book_itself(page: Path):
    text = page.read_text(encoding="utf-8", errors="replace")
    sources = SCRIPT_SRC.findall(text)
    remote_math = [s for s in sources if REMOTE.match(s) and MATH.search(s)]
    assert not remote_math, f"{page.name} loads a math renderer from the network: {remote_math}"
    # Also in inline scripts (a MathJax config with a loader path, say).
    math_urls = sorted({u for u in URL.findall(text) if MATH.search(u)})
    assert not math_urls, f"{page.name} points a math renderer at the network: {math_urls}"
    for src in sources:
        if MATH.search(src) and not REMOTE.match(src):
            local = (page.parent / src.split("?", 1)[0]).resolve()
            assert local.is_file(), f"{page.name} loads {src}, which the build does not hold"


def test_the_bundled_mathjax_fetches_its_fonts_locally():
    mathjax = HTML / "_static" / "mathjax"
    if not mathjax.is_dir():
        pytest.skip("no built book with a bundled MathJax")
    assert list(mathjax.rglob("*.woff")), "MathJax's CHTML fonts are not bundled"


def _code_cells(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


NB_CASES = [pytest.param(p, id=p.stem) for p in NOTEBOOKS] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no notebooks/*.ipynb yet"))]


@pytest.mark.parametrize("notebook", NB_CASES)
def test_notebooks_fetch_nothing_from_the_network(notebook: Path):
    hits = [
        (i, line.strip())
        for i, src in _code_cells(notebook)
        for line in src.splitlines()
        if FETCH.search(line.split("#", 1)[0])
    ]
    assert not hits, f"{notebook.name} fetches over the network (cell, line): {hits}"


@pytest.mark.parametrize("module", LIBRARY, ids=[p.name for p in LIBRARY])
def test_the_library_fetches_nothing_from_the_network(module: Path):
    code = [line.split("#", 1)[0] for line in module.read_text().splitlines()]
    hits = [line.strip() for line in code if re.search(
        r"^\s*(?:import|from)\s+(?:urllib|requests|httpx|aiohttp|socket)\b|urlopen|fetch_openml",
        line)]
    assert not hits, f"{module.name} fetches over the network: {hits}"


def _built(what: str) -> Path:
    if not HTML.is_dir():
        pytest.skip(f"no built book (book/_build/html) to check {what} in")
    return HTML


def test_the_book_ships_only_the_mathjax_its_pages_load():
    mathjax = _built("MathJax") / "_static" / "mathjax"
    if not mathjax.is_dir():
        pytest.skip("no bundled MathJax")
    loaded = {
        (page.parent / s.split("?", 1)[0]).resolve()
        for page in PAGES
        for s in SCRIPT_SRC.findall(page.read_text(encoding="utf-8", errors="replace"))
        if MATH.search(s) and not REMOTE.match(s)
    }
    combined = {p.resolve() for p in mathjax.glob("*.js")}
    assert combined <= loaded, f"MathJax builds no page loads: {sorted(combined - loaded)}"
    size = sum(p.stat().st_size for p in mathjax.rglob("*") if p.is_file())
    assert size < 4 * 2**20, f"the bundled MathJax holds {size / 2**20:.1f} MiB (< 4 MiB needed)"


@pytest.mark.parametrize("page", HTML_CASES)
def test_built_pages_declare_no_thebe_loader(page: Path):
    text = page.read_text(encoding="utf-8", errors="replace")
    assert "THEBE_JS_URL" not in text and "sphinx-thebe" not in text, (
        f"{page.name} still loads sphinx-thebe's scripts (a console error, and a network URL)")


def test_the_intro_shows_the_scoreboard_from_the_verdicts():
    intro = _built("the intro") / "book" / "intro.html"
    text = intro.read_text(encoding="utf-8", errors="replace")
    assert "The verdicts at a glance" in text
    assert re.search(r"\d+ of \d+ verdicts hold", text), "the intro has no scoreboard"
    article = re.search(r"<article\b.*?</article>", text, flags=re.S)
    body = article.group(0) if article else text
    prose = re.sub(r"<span class=\"math[^>]*>.*?</span>", "", body, flags=re.S)
    # the scoreboard's links to chapters carry their titles' math for MathJax to typeset
    prose = re.sub(r"<a class='mathjax_process'[^>]*>.*?</a>", "", prose, flags=re.S)
    assert "\\delta" not in prose, "the intro shows raw TeX outside its math"


@pytest.mark.parametrize("page", HTML_CASES)
def test_built_pages_have_one_search_field(page: Path):
    text = page.read_text(encoding="utf-8", errors="replace")
    if "bd-sidebar-primary" not in text:
        pytest.skip("a page without the book's layout (a redirect or a search page)")
    fields = len(re.findall(r"class=\"[^\"]*\bsearch-button-field\b", text))
    assert fields <= 1, f"{page.name} has {fields} search fields (a second strip above the page)"


def test_the_intro_links_the_proof_index():
    intro = _built("the intro") / "book" / "intro.html"
    links = re.findall(r"href=\"([^\"#]*prf-prf\.html)\"", intro.read_text(encoding="utf-8"))
    assert links, "the intro does not link the index of definitions and algorithms"
    assert all((intro.parent / link).resolve().is_file() for link in links), links
