"""Verdicts and glue: how a notebook states whether its run agrees with the paper.

Every notebook ends with :func:`verdict`, which takes checks whose ``holds`` the notebook has
*computed* from its measurements (never typed in), shows a box with the claim, a table of
predicted against measured values and the overall verdict, glues it as ``verdict_<chapter>``
for the prose, and writes ``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` for the tests::

    from localsgd.claims import Check
    from localsgd_book.report import verdict
    verdict("01_setting", "Forward norms stay close to 1 at initialisation.", [
        Check.between("max |‖h_l‖ - 1|", measured=dev, low=0.0, high=0.5),
        Check("λ_min(Gram) > 0", predicted="> 0", measured=lam, holds=lam > 0),
    ])

:func:`glue` wraps ``myst_nb.glue`` for numbers (formatted, without numpy's ``np.float64(...)``
repr) and figures. In the same notebook, paste a key with ``{glue:text}`key``` (or
``{glue:text}`key:.3f``` for a number glued without ``fmt``). From a prose page in ``book/``,
name the executed notebook relative to the page and always end with a format spec (``s`` for
text; without one the role misreads the ``::``)::

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
from typing import Any

from localsgd.claims import Check, all_hold, plain
from localsgd.store import results_dir, write_json_atomic

__all__ = ["Check", "VerdictRecord", "glue", "verdict"]

BASIS_LABEL = {
    "theory": "theory",
    "computed": "computed from the run",
    "tolerance": "book's tolerance",
}

_CHAPTER = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fmt(value: Any, fmt: str | None = None) -> str:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if fmt:
        return format(value, fmt)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _overall(holds: bool, checks: list[Check]) -> str:
    if holds:
        return "HOLDS"
    return "DOES NOT HOLD (failing: " + ", ".join(c.name for c in checks if not c.holds) + ")"


def _verdict_html(chapter: str, claim: str, checks: list[Check], holds: bool) -> str:
    colour = "#1b7f3b" if holds else "#b3261e"
    td = "style='padding:0.15em 1em 0.15em 0;text-align:left;vertical-align:top'"
    rows = "".join(
        "<tr>"
        f"<td {td}>{html.escape(c.name)}</td>"
        f"<td {td}>{html.escape(c.predicted)}</td>"
        f"<td {td}><em>{html.escape(BASIS_LABEL[c.basis])}</em></td>"
        f"<td {td}>{html.escape(_fmt(c.measured))}</td>"
        f"<td style='text-align:center;font-weight:bold;"
        f"color:{'#1b7f3b' if c.holds else '#b3261e'}'>"
        f"{'✓' if c.holds else '✗'}</td>"
        "</tr>"
        for c in checks
    )
    return (
        # mathjax_process: MathJax (as the book configures it) typesets \( ... \) in the claim
        f"<div class='localsgd-verdict mathjax_process' style='border:2px solid {colour};"
        "border-radius:6px;padding:0.6em 1em;margin:1em 0'>"
        f"<p style='margin:0 0 0.4em 0;color:{colour};font-size:1.1em'>"
        f"<strong>{html.escape(_overall(holds, checks))}</strong></p>"
        f"<p style='margin:0 0 0.4em 0'><strong>Verdict ({html.escape(chapter)})</strong>: "
        f"{html.escape(claim)}</p>"
        "<div style='overflow-x:auto;max-width:100%'>"
        "<table style='border-collapse:collapse;margin:0.4em 0'>"
        f"<thead><tr><th {td}>check</th><th {td}>predicted</th><th {td}>from</th>"
        f"<th {td}>measured</th><th>agrees</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        "</div>"
    )


def _verdict_text(chapter: str, claim: str, checks: list[Check], holds: bool) -> str:
    lines = [_overall(holds, checks), f"Verdict ({chapter}): {claim}"]
    for c in checks:
        mark = "✓" if c.holds else "✗"
        lines.append(
            f"  {mark} {c.name}: predicted {c.predicted} ({BASIS_LABEL[c.basis]}), "
            f"measured {_fmt(c.measured)}"
        )
    return "\n".join(lines)


class VerdictRecord(dict):
    """The verdict's JSON record, a plain dict that shows nothing as a cell's last value (the
    verdict box is already displayed)."""

    def _ipython_display_(self) -> None:
        pass


def verdict(chapter: str, claim: str, checks: list[Check]) -> dict[str, Any]:
    """State a chapter's verdict: it holds when every check holds.

    Displays the verdict box, glues its HTML as ``verdict_<chapter>`` (display=False) and
    writes ``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` atomically with the keys
    ``chapter, claim, holds, checks, profile`` (profile from ``$LOCALSGD_PROFILE``, else null).
    Returns that record (a dict that displays as nothing). Write inline math in ``claim`` as
    ``\\( ... \\)``. By convention ``chapter`` is the notebook's stem. Raises ValueError for
    an empty or path-like chapter name, an empty claim or an empty check list.
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
    record = VerdictRecord(
        {
            "chapter": chapter,
            "claim": claim,
            "holds": holds,
            "checks": [c.as_dict() for c in checks],
            "profile": os.environ.get("LOCALSGD_PROFILE") or None,
        }
    )
    write_json_atomic(results_dir() / "verdicts" / f"{chapter}.json", record)

    box_html = _verdict_html(chapter, claim, checks, holds)
    box_text = _verdict_text(chapter, claim, checks, holds)
    _display({"text/html": box_html, "text/plain": box_text})
    _myst_glue(f"verdict_{chapter}", _Bundle(box_html, box_text))
    _myst_glue(f"verdict_{chapter}_holds", _Text("holds" if holds else "does not hold"))
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

    Numbers (Python, numpy or jax scalars) are glued as plain text, formatted with ``fmt``
    (e.g. ``".3f"``) when given; anything else (a matplotlib figure, a string) is glued as it
    displays. Outside a kernel this does nothing. Paste with ``{glue:text}`name``` (numbers
    glued without ``fmt`` also take a format there: ``{glue:text}`name:.3f```) or, for a
    figure, ``{glue:figure} name``; see the module docstring for pasting from another page.
    A glued figure still shows inline unless the notebook closes it (``plt.close(fig)``).

    A glued matplotlib figure is measured first: the size its smallest text would have on the
    page, at the book's column width (:func:`localsgd.plotting.smallest_text_px`), is written to
    ``$LOCALSGD_RESULTS/figures/<notebook>/<name>.json`` (``<notebook>`` from
    ``$LOCALSGD_NOTEBOOK``, which the pipeline sets), where the tests check it.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name={name!r} must be an identifier")
    value_plain = plain(value)
    if isinstance(value_plain, numbers.Number) and not isinstance(value_plain, bool):
        _myst_glue(name, _Text(_fmt(value_plain, fmt)) if fmt else value_plain)
    elif isinstance(value_plain, str):
        _myst_glue(name, _Text(value_plain))
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

    px, text = plotting.smallest_text_px(fig)
    notebook = os.environ.get("LOCALSGD_NOTEBOOK") or "unknown"
    record = {
        "figure": name,
        "notebook": notebook,
        "width_in": float(fig.get_figwidth()),
        "height_in": float(fig.get_figheight()),
        "column_px": plotting.COLUMN_PX,
        "smallest_text_px": px,
        "smallest_text": text,
    }
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
        shown = ", ".join(_fmt(v) for v in vals)
        source = tol.source.replace("|", "\\|")  # a bare pipe would end the table's cell
        rows.append(f"| {name.replace('_', ' ')} | {f'[{shown}]' if len(vals) > 1 else shown} | "
                    f"{ORIGIN_LABEL[tol.origin]} | {source} |")
    if not rows:
        raise ValueError("tolerances must hold at least one Tolerance")
    return "\n".join(["| tolerance | value | origin | source |", "|:---|---:|:---|:---|", *rows])
