"""The rendered book's files: an HTML folder emptied before each build, so that images of
earlier builds do not pile up, and of the bundled MathJax only the component the pages load
(``tex-chtml.js``), the extensions it loads on demand, its fonts and its menu.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Under _static/mathjax, what tex-chtml.js needs: the TeX extensions it autoloads
# (input/tex/extensions), the CommonHTML fonts, and the menu with its accessibility options.
MATHJAX_KEEP = (
    "tex-chtml.js",
    "input/tex/extensions",
    "output/chtml/fonts/woff-v2",
    "a11y",
    "ui",
)


def clean_html(html_dir: str | os.PathLike[str]) -> None:
    """Remove the HTML output (``book/_build/html``); the doctree cache next to it stays, so an
    unchanged page is not parsed again, only written."""
    path = Path(html_dir)
    if path.is_dir():
        shutil.rmtree(path)


def _kept(rel: str) -> bool:
    return any(rel == k or rel.startswith(k + "/") for k in MATHJAX_KEEP)


def prune_mathjax(html_dir: str | os.PathLike[str]) -> int:
    """Delete the files under ``_static/mathjax`` that the pages never load; returns the bytes
    freed (0 when there is no bundled MathJax)."""
    root = Path(html_dir) / "_static" / "mathjax"
    if not root.is_dir():
        return 0
    freed = 0
    for path in sorted(root.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not _kept(rel):
            freed += path.stat().st_size
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return freed


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
