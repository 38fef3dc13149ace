"""The rendered book as a reader gets it, checked after the render (``make test`` runs this file
once ``pipeline render`` has written book/_build/html; LOCALSGD_BOOK_HTML names another build).
Without a built book every test here skips.

Static checks: no page shows a path of the machine that built it; every chapter opens with its
outcome box, before its first section; the scoreboard's links land on verdict boxes; the index of
definitions and theorems names its statements.

In a browser (headless Chromium through Selenium, at a phone's 400 px and a desktop's 1280 px):
no table and no math display is wider than its column unless it scrolls inside a container that
shows the scroll cue (the shadow of ``_static/localsgd.css``). A page that fails leaves its
screenshot in ``$LOCALSGD_RESULTS/screenshots/``. Chromium and its driver come from the system
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them), Selenium from
requirements.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from localsgd.store import results_dir
from localsgd_book import layout

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("LOCALSGD_BOOK_HTML") or ROOT / "book" / "_build" / "html")
PAGES = sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts) if HTML.is_dir() else []
CHAPTERS = [HTML / "book" / "executed" / f"{p.stem}.html" for p in layout.list_notebooks(ROOT)]
WIDTHS = (400, 1280)
SKIP = pytest.mark.skip(reason="no built book (book/_build/html)")


def _cases(paths):
    return [pytest.param(p, id=str(p.relative_to(HTML))) for p in paths] or [
        pytest.param(None, marks=SKIP)]


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# static


def _machine_paths() -> list[str]:
    """Absolute paths of this build: the repository, the results, the interpreter."""
    paths = {str(ROOT), str(ROOT.resolve()), str(results_dir(ROOT).resolve()), sys.prefix,
             str(Path(sys.executable).resolve().parent.parent)}
    return sorted(p for p in paths if len(p) > 1)


@pytest.mark.parametrize("page", _cases(PAGES))
def test_no_page_shows_a_path_of_the_machine_that_built_it(page: Path) -> None:
    text = _text(page)
    found = [p for p in _machine_paths() if p in text]
    assert not found, f"{page.relative_to(HTML)} shows {found}"


@pytest.mark.parametrize("page", _cases([p for p in CHAPTERS if p.exists()]))
def test_every_chapter_opens_with_its_outcome(page: Path) -> None:
    text = _text(page)
    article = text[text.index("<article"):] if "<article" in text else text
    box = article.find("localsgd-outcome")
    assert box >= 0, f"{page.name} shows no outcome box"
    first_section = article.find("<h2")
    assert first_section < 0 or box < first_section, f"{page.name}: the outcome box comes late"
    assert f"href='#verdict-{page.stem}'" in article[box:box + 4000]
    assert f"id='verdict-{page.stem}'" in article, f"{page.name} has no verdict box to link to"


def test_the_scoreboard_links_every_chapter_to_its_verdict_by_title() -> None:
    intro = HTML / "book" / "intro.html"
    if not intro.exists():
        pytest.skip("no built book (book/_build/html)")
    links = re.findall(r"href='(executed/([^'#]+)\.html#verdict-\2)'>([^<]+)<", _text(intro))
    assert links, "the scoreboard links no verdict"
    for href, stem, title in links:
        target = intro.parent / href.split("#")[0]
        assert f"id='verdict-{stem}'" in _text(target), f"{href} lands on no verdict box"
        assert title.strip() != stem, f"the scoreboard shows the file name {stem}, not a title"


def test_the_proof_index_names_its_statements() -> None:
    index = HTML / "prf-prf.html"
    if not index.exists():
        pytest.skip("no built book with a proof index")
    entries = re.findall(r"<a href=\"[^\"]+\"><code class=\"xref\">([^<]+)</code></a>",
                         _text(index))
    entries += re.findall(r"<a href=\"[^\"]+#[^\"]+\">([^<]+)</a>", _text(index))
    named = [e for e in entries if re.match(r"(Definition|Theorem|Lemma|Algorithm) [\d.]+", e)]
    assert len(named) >= 5, f"the index names too few statements: {entries[:10]}"
    labels = [e for e in entries if re.fullmatch(r"(def|thm|lem|alg)-[\w-]+", e.strip())]
    assert not labels, f"the index shows internal labels: {labels}"
    assert "executed/" not in re.sub(r"href=\"[^\"]*\"", "", _text(index)), "it shows file paths"


# ---------------------------------------------------------------------------------------------
# in a browser


def _browser():
    """A headless Chromium, or a failure that says what to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: `pip install -r requirements.txt`")
    binary = os.environ.get("LOCALSGD_CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
         if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("headless Chromium and its driver are needed: on Debian, `apt-get install "
                    "chromium chromium-driver` (.ci/run does this)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars"):
        options.add_argument(arg)
    options.binary_location = binary
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


# Every table and math display of the article that is wider than the column must sit in a
# scrolling container no wider than the column, whose background draws the cue. Folded sections
# (<details>: dropdowns, hidden code) are opened first, as a reader would.
FIND_UNCUED = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
if (!article) { return {column: 0, offenders: []}; }
article.querySelectorAll('details').forEach(d => { d.open = true; });
const style = getComputedStyle(article);
const box = article.getBoundingClientRect();
const left = box.left + parseFloat(style.paddingLeft);
const right = box.right - parseFloat(style.paddingRight);
const width = right - left;
const offenders = [];
for (const el of article.querySelectorAll('table, mjx-container[display="true"]')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0) continue;
  const wide = el.scrollWidth > width + 1 || r.right > right + 1 || r.left < left - 1;
  if (!wide) continue;
  let a = el, cued = false;
  while (a && a !== article) {
    const cs = getComputedStyle(a);
    if ((cs.overflowX === 'auto' || cs.overflowX === 'scroll')
        && a.getBoundingClientRect().right <= right + 1 && a.scrollWidth > a.clientWidth) {
      cued = cs.backgroundImage.includes('gradient');
      break;
    }
    a = a.parentElement;
  }
  if (!cued) {
    offenders.push(el.tagName.toLowerCase() + ' ' + Math.round(el.scrollWidth) + ' px wide: '
                   + el.textContent.trim().replace(/\\s+/g, ' ').slice(0, 80));
  }
}
return {column: width, offenders: offenders};
"""

WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done(true)).catch(() => done(false));
} else { done(true); }
"""


def measure(driver, page: Path, width: int, height: int = 900) -> dict:
    """Open ``page`` at a viewport ``width`` CSS pixels wide, wait for the math, and return the
    article column's width and the tables and displays wider than it without a scroll cue."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.get(page.resolve().as_uri())
    driver.set_script_timeout(30)
    driver.execute_async_script(WAIT_FOR_MATH)
    return driver.execute_script(FIND_UNCUED)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", _cases(PAGES))
def test_nothing_is_wider_than_its_column_without_a_scroll_cue(browser, page, width) -> None:
    found = measure(browser, page, width)
    if found["offenders"]:
        shots = results_dir(ROOT) / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / f"{page.stem}-{width}.png"))
    assert not found["offenders"], (
        f"{page.relative_to(HTML)} at {width} px (column {found['column']:.0f} px): "
        + "; ".join(found["offenders"]))


CUE = ("overflow-x: auto; background: linear-gradient(to left, white, white), "
       "radial-gradient(farthest-side at 100% 50%, black, transparent)")


@pytest.mark.parametrize(
    "wrapper, offends",
    [("<div>{}</div>", True),  # no scroll container: the table runs out of the column
     ("<div style='overflow-x: hidden'>{}</div>", True),  # cut off, no way to scroll
     ("<div style='overflow-x: auto'>{}</div>", True),  # scrolls, but nothing says so
     (f"<div style='{CUE}'>{{}}</div>", False)],
)
def test_the_check_finds_a_wide_table_without_a_scroll_cue(browser, tmp_path, wrapper, offends):
    cells = "".join(f"<td>column{i}</td>" for i in range(30))
    table = f"<table><tr>{cells}</tr></table>"
    page = tmp_path / "page.html"
    page.write_text("<html><body><article class='bd-article' style='width: 300px'>"
                    + wrapper.format(table) + "</article></body></html>")
    assert bool(measure(browser, page, 400)["offenders"]) is offends


def test_the_parameters_of_every_chapter_fold_into_one_section() -> None:
    page = HTML / "book" / "executed" / "13_reproducibility.html"
    if not page.exists():
        pytest.skip("no built book (book/_build/html)")
    text = _text(page)
    folds = [m.start() for m in re.finditer(r"<details class=\"[^\"]*sd-dropdown", text)]
    assert len(folds) == 1, f"the parameter tables fold into {len(folds)} sections, not one"
    inside = text[folds[0]:text.index("</details>", folds[0])]
    for notebook in layout.list_notebooks(ROOT):
        assert f"{notebook.stem}</span></code>)" in inside, f"{notebook.stem}'s table is not in it"
