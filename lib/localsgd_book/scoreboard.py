"""The intro's scoreboard: one row per chapter (chapter, claim, verdict, profile), built at render
time from the verdict records ``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` that
:func:`localsgd_book.report.verdict` writes, never typed by hand.

The pipeline writes it to ``book/_generated/scoreboard.md``, which ``book/intro.md`` includes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOT_RUN = "not run yet"
_INLINE_MATH = re.compile(r"\\\((.+?)\\\)")


def load_verdicts(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{chapter: record}`` for every readable ``*.json`` under ``directory``; a file that is
    not a verdict record (unreadable, or without ``chapter`` and ``holds``) is skipped."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "holds" in record:
            out[str(record.get("chapter") or path.stem)] = record
    return out


def _cell(text: str) -> str:
    """Table-safe Markdown: ``\\( x \\)`` becomes ``$x$``; pipes and line breaks are escaped."""
    text = _INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$", str(text))
    return " ".join(text.split()).replace("|", "\\|")


def _verdict_word(record: dict[str, Any] | None) -> str:
    if record is None:
        return NOT_RUN
    return "**HOLDS**" if record.get("holds") is True else "**DOES NOT HOLD**"


def scoreboard_markdown(
    chapters: Sequence[str],
    verdicts: dict[str, dict[str, Any]],
    doc_prefix: str = "/book/executed/",
) -> str:
    """A Markdown table, one row per chapter in ``chapters`` order (verdicts of chapters not
    listed follow, sorted); a chapter without a record reads "not run yet".

    ``chapters``: notebook stems; ``doc_prefix``: where their pages are, for the ``{doc}`` links.
    """
    stems = list(chapters) + sorted(set(verdicts) - set(chapters))
    lines = [
        "| chapter | claim | verdict | profile |",
        "| --- | --- | --- | --- |",
    ]
    for stem in stems:
        record = verdicts.get(stem)
        link = f"{{doc}}`{stem} <{doc_prefix}{stem}>`" if stem in chapters else f"`{stem}`"
        claim = _cell(record.get("claim", "")) if record else ""
        profile = f"`{record['profile']}`" if record and record.get("profile") else ""
        lines.append(f"| {link} | {claim} | {_verdict_word(record)} | {profile} |")
    held = sum(1 for s in stems if (verdicts.get(s) or {}).get("holds") is True)
    ran = sum(1 for s in stems if s in verdicts)
    summary = f"{held} of {ran} verdicts hold" + (
        f"; {len(stems) - ran} chapters have not run yet" if ran < len(stems) else ""
    )
    return "\n".join(lines) + f"\n\n{summary}.\n"


def write_scoreboard(
    path: str | os.PathLike[str],
    chapters: Sequence[str],
    verdicts_dir: str | os.PathLike[str],
) -> Path:
    """Write :func:`scoreboard_markdown` for the verdicts in ``verdicts_dir`` to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = scoreboard_markdown(chapters, load_verdicts(verdicts_dir))
    if not out.exists() or out.read_text() != text:  # unchanged: Sphinx need not rebuild intro
        out.write_text(text)
    return out
