"""Verdicts and glue: how a notebook states whether its run agrees with the paper.

Every notebook ends with :func:`verdict`, which takes checks whose ``holds`` the notebook has
*computed* from its measurements (never typed in), shows a box with the claim, a table of
predicted against measured values and the overall verdict, glues it as ``verdict_<chapter>``
for the prose and a short outcome box as ``outcome_<chapter>`` for the chapter's first screen,
and writes the record (:mod:`localsgd_book.records`) for the tests and the scoreboard::

    from localsgd.claims import Check
    from localsgd_book.report import verdict
    verdict("01_setting", r"Forward norms stay close to 1 at initialisation.", [
        Check.between(r"max \\(|\\|h_l\\| - 1|\\)", measured=dev, low=0.0, high=0.5),
        Check(r"\\(\\lambda_{\\min}(G_0) > 0\\)", predicted="> 0", measured=lam, holds=lam > 0),
    ], headline=[1])

Every chapter pastes its outcome box under its title (a glue reference placed before the cell
that glues it renders: myst-nb reads a notebook's glued outputs before its text)::

    # The setting at initialisation

    ```{glue:} outcome_01_setting
    ```

:func:`glue` wraps ``myst_nb.glue`` for numbers (written by
:func:`localsgd.analysis.format_number`) and figures. In the same notebook, paste a key with
``{glue:text}`key```. From a prose page in ``book/``, name the executed notebook relative to the
page and always end with a format spec (``s`` for text; without one the role misreads the
``::``)::

    {glue:text}`executed/01_setting.ipynb::lambda_min:s`
    {glue:text}`executed/01_setting.ipynb::verdict_01_setting_holds:s`

and paste a figure or the whole verdict box with the directive and its ``:doc:`` option::

    ```{glue:} verdict_01_setting
    :doc: executed/01_setting.ipynb
    ```
"""

from __future__ import annotations

import html
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localsgd.analysis import format_number
from localsgd.claims import Check, all_hold
from localsgd.store import results_dir, write_json_atomic

from . import layout, records, session
from .records import anchor

__all__ = ["Check", "VerdictRecord", "glue", "verdict"]

BASIS_LABEL = {
    "theory": "theory",
    "computed": "computed from the run",
    "tolerance": "book's tolerance",
}
HOLDS_COLOUR, FAILS_COLOUR = "#1b7f3b", "#b3261e"

_CHAPTER = re.compile(r"^[A-Za-z0-9_.-]+$")


def _overall(holds: bool, checks: list[Check]) -> str:
    if holds:
        return "HOLDS"
    return "DOES NOT HOLD (failing: " + ", ".join(c.name for c in checks if not c.holds) + ")"


def _mark(ok: bool) -> str:
    colour = HOLDS_COLOUR if ok else FAILS_COLOUR
    return f"<strong style='color:{colour}'>{'✓' if ok else '✗'}</strong>"


def _run_line(record: dict[str, Any]) -> str:
    """Where the verdict came from, in one line: profile, commit, versions, platform, runs."""
    parts = [f"profile {record['profile']}" if record.get("profile") else "no profile"]
    if record.get("commit"):
        parts.append(f"commit {record['commit'][:7]}"
                     + (" with uncommitted changes" if record.get("dirty") else ""))
    v, p = record.get("versions") or {}, record.get("platform") or {}
    if v:
        parts.append(f"localsgd {v.get('localsgd')}, JAX {v.get('jax')} on "
                     f"{p.get('backend', '?')}")
    runs = len(record.get("runs") or [])
    parts.append(f"{runs} cached run{'s' if runs != 1 else ''}")
    return " · ".join(parts)


def _apart_line(record: dict[str, Any], where: str) -> str:
    if record.get("book"):
        return ""
    why = ("its parameters are not checked (no session started)" if record.get("parameters")
           is None else "its parameters are not those of "
           + (f"profile {record['profile']}" if record.get("profile") else "any profile"))
    return (f"This run is not the book's: {why}. Its record is kept apart, in {where} under the "
            "results folder, and does not replace the book's verdict.")


def _verdict_html(record: dict[str, Any], checks: list[Check], where: str) -> str:
    holds = record["holds"]
    colour = HOLDS_COLOUR if holds else FAILS_COLOUR
    td = "style='padding:0.15em 0.5em 0.15em 0;text-align:left;vertical-align:top'"
    rows = "".join(
        "<tr>"
        f"<td {td}>{html.escape(c.name)}</td>"
        f"<td {td}>{html.escape(c.predicted)}<br><em style='font-size:0.85em'>"
        f"{html.escape(BASIS_LABEL[c.basis])}</em></td>"
        f"<td {td}>{html.escape(format_number(c.measured))}</td>"
        f"<td style='text-align:center'>{_mark(c.holds)}</td>"
        "</tr>"
        for c in checks
    )
    apart = _apart_line(record, where)
    return (
        # mathjax_process: MathJax (as the book configures it) typesets \( ... \) in the box
        f"<div id='{anchor(record['chapter'])}' class='localsgd-verdict mathjax_process' "
        f"style='border:2px solid {colour};border-radius:6px;padding:0.6em 1em;margin:1em 0'>"
        f"<p style='margin:0 0 0.4em 0;color:{colour};font-size:1.1em'>"
        f"<strong>{html.escape(_overall(holds, checks))}</strong></p>"
        f"<p style='margin:0 0 0.4em 0'><strong>Verdict</strong>: "
        f"{html.escape(record['claim'])}</p>"
        "<div class='localsgd-scroll' style='overflow-x:auto;max-width:100%'>"
        "<table style='border-collapse:collapse;margin:0.4em 0'>"
        f"<thead><tr><th {td}>check</th><th {td}>predicted (from)</th><th {td}>measured</th>"
        f"<th>agrees</th></tr></thead><tbody>{rows}</tbody></table></div>"
        f"<p style='margin:0.4em 0 0 0;font-size:0.85em'>{html.escape(_run_line(record))}</p>"
        + (f"<p style='margin:0.3em 0 0 0;font-size:0.85em'>{html.escape(apart)}</p>"
           if apart else "")
        + "</div>"
    )


def _verdict_text(record: dict[str, Any], checks: list[Check], where: str) -> str:
    lines = [_overall(record["holds"], checks), f"Verdict ({record['chapter']}): "
             f"{record['claim']}"]
    for c in checks:
        mark = "✓" if c.holds else "✗"
        lines.append(
            f"  {mark} {c.name}: predicted {c.predicted} ({BASIS_LABEL[c.basis]}), "
            f"measured {format_number(c.measured)}"
        )
    lines.append(_run_line(record))
    apart = _apart_line(record, where)
    return "\n".join(lines + ([apart] if apart else []))


def _outcome_html(record: dict[str, Any], checks: list[Check], headline: list[Check]) -> str:
    """The box under a chapter's title: holds or not, and the headline checks, measured against
    predicted, with a link to the verdict box."""
    holds = record["holds"]
    colour = HOLDS_COLOUR if holds else FAILS_COLOUR
    failing = [c.name for c in checks if not c.holds]
    state = ("The claim holds on this run" if holds else
             f"The claim does not hold on this run: {len(failing)} of {len(checks)} checks fail")
    where = f" (profile {record['profile']})" if record.get("profile") else ""
    items = "".join(
        f"<li>{html.escape(c.name)}: measured {html.escape(format_number(c.measured))}, "
        f"predicted {html.escape(c.predicted)} {_mark(c.holds)}</li>" for c in headline)
    return (
        f"<div class='localsgd-outcome mathjax_process' style='border-left:4px solid {colour};"
        "padding:0.3em 0.9em;margin:0.4em 0 1em 0'>"
        f"<p style='margin:0'><strong style='color:{colour}'>{'✓' if holds else '✗'} "
        f"{html.escape(state)}</strong>{html.escape(where)}. "
        f"<a href='#{anchor(record['chapter'])}'>All {len(checks)} checks ↓</a></p>"
        f"<ul style='margin:0.2em 0 0 0;padding-left:1.2em'>{items}</ul></div>"
    )


def _outcome_text(record: dict[str, Any], headline: list[Check]) -> str:
    lines = ["Outcome: " + ("holds" if record["holds"] else "does not hold")]
    lines += [f"  {c.name}: measured {format_number(c.measured)}, predicted {c.predicted}"
              for c in headline]
    return "\n".join(lines)


class VerdictRecord(dict):
    """The verdict's JSON record, a plain dict that shows nothing as a cell's last value (the
    verdict box is already displayed)."""

    def _ipython_display_(self) -> None:
        pass


def _headline(checks: list[Check], headline: Sequence[str | int] | None) -> list[Check]:
    if headline is None:
        return checks[:1]
    if isinstance(headline, str | int):
        headline = [headline]
    names = [c.name for c in checks]
    picked = []
    for h in headline:
        if isinstance(h, int) and not isinstance(h, bool) and -len(checks) <= h < len(checks):
            picked.append(checks[h])
        elif isinstance(h, str) and h in names:
            picked.append(checks[names.index(h)])
        else:
            raise ValueError(f"headline={h!r} names no check; the checks are {names} "
                             f"(or an index below {len(checks)})")
    if not picked:
        raise ValueError("headline must name at least one check")
    return picked


def _chapter_source(chapter: str) -> tuple[Path | None, Path]:
    """The chapter's source notebook (None when there is none) and the repository root."""
    try:
        path = layout.chapter_source(chapter)
    except ValueError:
        return None, layout.default_root()
    return path, path.parents[1]


def verdict(
    chapter: str,
    claim: str,
    checks: list[Check],
    headline: Sequence[str | int] | str | int | None = None,
) -> dict[str, Any]:
    """State a chapter's verdict: it holds when every check holds.

    Displays the verdict box (HTML id ``verdict-<chapter>``), glues its HTML as
    ``verdict_<chapter>``, ``"holds"`` or ``"does not hold"`` as ``verdict_<chapter>_holds``,
    and the outcome box that the chapter shows under its title (holds or not, and the
    ``headline`` checks, measured against predicted) as ``outcome_<chapter>``; all with
    display=False. ``headline``: names or indices of checks, default the first check.

    Writes the record (:mod:`localsgd_book.records`: the verdict, the profile, the parameters
    of the started :mod:`localsgd_book.session`, the commit, versions, platform and the runs
    used) atomically to ``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` when the run is the
    book's, else to ``$LOCALSGD_RESULTS/runs/<chapter>-<digest>.json``. Returns the record (a
    dict that displays as nothing). Write inline math in ``claim`` and check names as
    ``\\( ... \\)``. By convention ``chapter`` is the notebook's stem. Raises ValueError for an
    empty or path-like chapter name, an empty claim, an empty check list or a headline that
    names no check.
    """
    if not isinstance(chapter, str) or not _CHAPTER.match(chapter):
        raise ValueError(
            f"chapter={chapter!r} must be a non-empty name of letters, digits, '_', '.' or '-'"
        )
    if not isinstance(claim, str) or not claim.strip():
        raise ValueError(f"claim={claim!r} must be a non-empty string")
    checks = list(checks)
    for c in checks:
        if not isinstance(c, Check):
            raise TypeError(f"checks must hold Check objects, got {c!r}")
    holds = all_hold(checks)
    top = _headline(checks, headline)
    run = session.current()
    run = run if run is not None and run.chapter == chapter else None
    notebook, root = _chapter_source(chapter)
    record = VerdictRecord(
        {
            "chapter": chapter,
            "claim": claim,
            "holds": holds,
            "checks": [c.as_dict() for c in checks],
            "headline": [c.name for c in top],
            **records.provenance(notebook, run.parameters if run else None,
                                 run.runs if run else [], root),
        }
    )
    results = results_dir()
    path = records.record_path(results, record)
    write_json_atomic(path, record)
    where = path.relative_to(results).as_posix()

    box = _Bundle(_verdict_html(record, checks, where), _verdict_text(record, checks, where))
    _display({"text/html": box.html_text, "text/plain": box.plain})
    _myst_glue(f"verdict_{chapter}", box)
    _myst_glue(f"verdict_{chapter}_holds", _Text("holds" if holds else "does not hold"))
    _myst_glue(f"outcome_{chapter}",
               _Bundle(_outcome_html(record, checks, top), _outcome_text(record, top)))
    return record


# --------------------------------------------------------------------------------------------
# glue


class _Text:
    """Displays as bare text (no quotes), so ``{glue:text}`` pastes e.g. ``0.123``."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Bundle:
    """Displays as the given HTML, with a plain-text fallback."""

    def __init__(self, html_text: str, plain: str):
        self.html_text, self.plain = html_text, plain

    def _repr_html_(self) -> str:
        return self.html_text

    def __repr__(self) -> str:
        return self.plain


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _display(bundle: dict[str, str]) -> None:
    if _in_kernel():
        from IPython.display import display

        display(bundle, raw=True)
    else:
        print(bundle["text/plain"])


def _myst_glue(name: str, value: Any) -> None:
    if not _in_kernel():
        return
    from myst_nb import glue as myst_glue

    myst_glue(name, value, display=False)


def glue(name: str, value: Any, fmt: str | None = None) -> None:
    """Glue ``value`` under ``name`` for the book's prose, without displaying it.

    Numbers (Python, numpy or jax scalars) are glued as text written by
    :func:`localsgd.analysis.format_number`, with ``fmt`` (e.g. ``".3f"``) when given: integers as
    integers, infinity as "not reached", no "0.0" for a small nonzero value. Strings are glued as
    they are; anything else (a matplotlib figure) as it displays. Outside a kernel this does
    nothing. Paste with ``{glue:text}`name``` or, for a figure, ``{glue:figure} name``; see the
    module docstring for pasting from another page. A glued figure still shows inline unless the
    notebook closes it (``plt.close(fig)``; :func:`glue_figure` does both).

    A glued matplotlib figure is measured first (:func:`localsgd.plotting.figure_report`: the
    size its smallest text would have on the page at the book's column width, legends over data,
    axes without labels) and the measurement written to
    ``$LOCALSGD_RESULTS/figures/<chapter>/<name>.json`` (``<chapter>`` from the started
    :mod:`localsgd_book.session`, else ``$LOCALSGD_NOTEBOOK``), where the tests check it.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name={name!r} must be an identifier")
    scalar = value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () \
        else value
    if isinstance(scalar, numbers.Real) and not isinstance(scalar, bool):
        _myst_glue(name, _Text(format_number(scalar, fmt)))
    elif isinstance(scalar, str):
        _myst_glue(name, _Text(scalar))
    else:
        if _is_figure(value):
            _record_figure(name, value)
        _myst_glue(name, value)


def _is_figure(value: Any) -> bool:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    return isinstance(value, Figure)


def _record_figure(name: str, fig: Any) -> None:
    from localsgd import plotting

    run = session.current()
    notebook = run.chapter if run else os.environ.get("LOCALSGD_NOTEBOOK") or "unknown"
    record = {"figure": name, "notebook": notebook, **plotting.figure_report(fig)}
    write_json_atomic(results_dir() / "figures" / notebook / f"{name}.json", record)


def glue_all(values: dict[str, Any], fmt: str | None = None) -> None:
    """:func:`glue` every ``name: value`` of ``values``; a value given as ``(value, fmt)`` takes
    its own format, the others ``fmt``."""
    for name, value in values.items():
        value, f = value if isinstance(value, tuple) and len(value) == 2 else (value, fmt)
        glue(name, value, fmt=f)


def glue_figure(name: str, fig: Any) -> None:
    """:func:`glue` a matplotlib figure (which measures it) and close it, so that it shows only
    where the prose pastes it."""
    import matplotlib.pyplot as plt

    glue(name, fig)
    plt.close(fig)


def show_divergences(results, what: str = "m = {m}") -> list:
    """Shows a line for every diverged run of ``results`` (``localsgd.experiments.Result``):
    ``what`` filled in with the run's configuration fields (``"{arch}, m = {m}"``), then why it
    diverged. Returns the diverged runs."""
    diverged = [r for r in results if r.diverged]
    for r in diverged:
        text = f"**{what.format_map(vars(r.config))}:** {r.divergence_message()}"
        _display({"text/markdown": text, "text/plain": text})
    return diverged


ORIGIN_LABEL = {
    "theory": "theory",
    "ci-fit": "fitted on the ci profile's runs",
    "prior": "fixed before any run",
}


def tolerance_table(tolerances) -> str:
    """The Markdown table of a chapter's tolerances (``{name: localsgd.claims.Tolerance}``, in
    order): what each bounds (its name, with spaces for underscores), its value, where it comes
    from (:data:`ORIGIN_LABEL`) and its source (Markdown with MyST math; a pipe is escaped for
    the table, so write norms as ``\\Vert``). For a notebook's verdict section:
    ``display(Markdown(report.tolerance_table(claims.TOLERANCES)))``."""
    from localsgd.claims import Tolerance

    rows = []
    for name, tol in tolerances.items():
        if not isinstance(tol, Tolerance):
            raise ValueError(f"tolerances[{name!r}] must be a Tolerance, got {tol!r}")
        vals = tol.value if isinstance(tol.value, tuple) else (tol.value,)
        shown = ", ".join(format_number(v) for v in vals)
        source = tol.source.replace("|", "\\|")  # a bare pipe would end the table's cell
        rows.append(f"| {name.replace('_', ' ')} | {f'[{shown}]' if len(vals) > 1 else shown} | "
                    f"{ORIGIN_LABEL[tol.origin]} | {source} |")
    if not rows:
        raise ValueError("tolerances must hold at least one Tolerance")
    return "\n".join(["| tolerance | value | origin | source |", "|:---|---:|:---|:---|", *rows])
