"""The intro's scoreboard: one row per chapter (its title, linked to its verdict box; the claim;
the verdict; the profile it ran under), built at render time from the book's verdict records
``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` (:mod:`localsgd_book.records`), never typed by hand.

A record whose commit, or whose parameters, differ from the build that renders it is marked in
its row, with what differs (:func:`localsgd_book.records.differences`). Math written
``\\( ... \\)`` in a claim or a title renders as math.

The pipeline writes it to ``book/_generated/scoreboard.md``, which ``book/intro.md`` includes.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import records
from .layout import chapter_title, layout
from .records import anchor

NOT_RUN = "not run yet"
_INLINE_MATH = re.compile(r"\\\((.+?)\\\)")
_DOLLAR_MATH = re.compile(r"\$(.+?)\$")


def _cell(text: str) -> str:
    """Table-safe Markdown: ``\\( x \\)`` becomes ``$x$``; pipes and line breaks are escaped."""
    text = _INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$", str(text))
    return " ".join(text.split()).replace("|", "\\|")


def _link(title: str, href: str) -> str:
    """A raw HTML link whose ``$x$`` math MathJax renders (the book processes math only inside
    elements of class ``mathjax_process``)."""
    text = _DOLLAR_MATH.sub(lambda m: f"\\({m.group(1)}\\)", html.escape(title, quote=False))
    return (f"<a class='mathjax_process' href='{html.escape(href)}'>"
            f"{text.replace('|', '&#124;')}</a>")


def _verdict_word(record: dict[str, Any] | None) -> str:
    if record is None:
        return NOT_RUN
    return "**HOLDS**" if record.get("holds") is True else "**DOES NOT HOLD**"


def scoreboard_markdown(
    chapters: Sequence[str],
    verdicts: Mapping[str, dict[str, Any]],
    titles: Mapping[str, str] | None = None,
    marks: Mapping[str, Sequence[str]] | None = None,
    href_prefix: str = "executed/",
) -> str:
    """A Markdown table, one row per chapter in ``chapters`` order (verdicts of chapters not
    listed follow, sorted); a chapter without a record reads "not run yet".

    ``chapters``: notebook stems; ``titles``: their titles (default: the stem); ``marks``: for
    each chapter, how its record differs from this build (shown under its profile);
    ``href_prefix``: where the chapters' pages are, relative to the page that shows the table
    (each link goes to the chapter's verdict box, ``#verdict-<chapter>``).
    """
    titles, marks = titles or {}, marks or {}
    stems = list(chapters) + sorted(set(verdicts) - set(chapters))
    lines = [
        "| chapter | claim | verdict | profile |",
        "| --- | --- | --- | --- |",
    ]
    for stem in stems:
        record = verdicts.get(stem)
        title = titles.get(stem, stem)
        if stem in chapters:
            target = f"{href_prefix}{stem}.html" + (f"#{anchor(stem)}" if record else "")
            link = _link(title, target)
        else:
            link = _cell(title)
        claim = _cell(record.get("claim", "")) if record else ""
        profile = f"`{record['profile']}`" if record and record.get("profile") else ""
        if marks.get(stem):
            profile += "<br>" + "; ".join(f"⚠ {_cell(m)}" for m in marks[stem])
        lines.append(f"| {link} | {claim} | {_verdict_word(record)} | {profile} |")
    held = sum(1 for s in stems if (verdicts.get(s) or {}).get("holds") is True)
    ran = sum(1 for s in stems if s in verdicts)
    marked = sum(1 for s in stems if s in verdicts and marks.get(s))
    summary = f"{held} of {ran} verdicts hold" + (
        f"; {len(stems) - ran} chapters have not run yet" if ran < len(stems) else ""
    ) + (f"; {marked} records (⚠) differ from this build" if marked else "")
    return "\n".join(lines) + f"\n\n{summary}.\n"


def write_scoreboard(
    path: str | os.PathLike[str],
    chapters: Sequence[str],
    verdicts_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write :func:`scoreboard_markdown` for the records in ``verdicts_dir`` to ``path``, with
    the chapters' titles and the marks of records that differ from the build at ``root`` (its
    commit, its notebooks and profiles)."""
    lay = layout(root)
    verdicts = records.load_records(verdicts_dir)
    commit, _ = records.git_state(lay.root)
    titles, marks = {}, {}
    for stem in set(chapters) | set(verdicts):
        source = lay.notebooks / f"{stem}.ipynb"
        notebook = source if source.is_file() else None
        if notebook is not None:
            titles[stem] = chapter_title(notebook)
        if stem in verdicts:
            marks[stem] = records.differences(verdicts[stem], commit, notebook, lay.root)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = scoreboard_markdown(chapters, verdicts, titles, marks)
    if not out.exists() or out.read_text() != text:  # unchanged: Sphinx need not rebuild intro
        out.write_text(text)
    return out
