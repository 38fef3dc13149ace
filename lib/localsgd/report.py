"""Verdicts and glue: how a notebook states whether its run agrees with the paper.

Every notebook ends with :func:`verdict`, which takes checks whose ``holds`` the notebook has
*computed* from its measurements (never typed in), shows a box with the claim, a table of
predicted against measured values and the overall verdict, glues it as ``verdict_<chapter>``
for the prose, and writes ``$LOCALSGD_RESULTS/verdicts/<chapter>.json`` for the tests::

    from localsgd.report import Check, verdict
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

import contextlib
import html
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Check",
    "VerdictRecord",
    "glue",
    "results_dir",
    "verdict",
    "write_bytes_atomic",
    "write_json_atomic",
]

_CHAPTER = re.compile(r"^[A-Za-z0-9_.-]+$")


def results_dir() -> Path:
    """Where runs write results: ``$LOCALSGD_RESULTS`` if set (the pipeline sets it to an
    absolute path), else ``results/`` under the current directory."""
    return Path(os.environ.get("LOCALSGD_RESULTS") or "results")


def write_bytes_atomic(path: str | os.PathLike[str], blob: bytes) -> Path:
    """Write ``blob`` to ``path`` through a temporary file in the same folder, flushed to disk,
    then ``os.replace``: a reader, or a process killed mid-write, never leaves a half-written
    file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` with :func:`write_bytes_atomic`. Returns the path."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python scalars; non-finite floats -> strings (JSON has none)."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value


def _as_bool(value: Any, what: str) -> bool:
    """Accept Python and numpy/jax booleans (as comparisons of measurements give); refuse
    anything else, so that a verdict cannot be fed a string or a number by mistake."""
    if isinstance(value, bool):
        return value
    if hasattr(value, "dtype") and getattr(value, "shape", None) == () and value.dtype == bool:
        return bool(value)
    raise TypeError(f"{what} must be a boolean computed from the run, got {value!r}")


def _fmt(value: Any, fmt: str | None = None) -> str:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if fmt:
        return format(value, fmt)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


@dataclass(frozen=True)
class Check:
    """One row of a verdict: what the theory predicts (as text), what the run measured, and
    whether the measurement agrees. ``holds`` must be computed from the measurement."""

    name: str
    predicted: str
    measured: float | int | str
    holds: bool

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Check name={self.name!r} must be a non-empty string")
        object.__setattr__(self, "holds", _as_bool(self.holds, f"Check {self.name!r}: holds"))
        object.__setattr__(self, "measured", _plain(self.measured))
        object.__setattr__(self, "predicted", str(self.predicted))

    @classmethod
    def at_most(cls, name: str, measured: float, bound: float, fmt: str = ".4g") -> Check:
        """Holds when ``measured <= bound`` (and is not NaN)."""
        m = float(_plain(measured)) if not isinstance(_plain(measured), str) else math.nan
        return cls(name, f"≤ {format(bound, fmt)}", _plain(measured), bool(m <= bound))

    @classmethod
    def at_least(cls, name: str, measured: float, bound: float, fmt: str = ".4g") -> Check:
        """Holds when ``measured >= bound`` (and is not NaN)."""
        m = float(_plain(measured)) if not isinstance(_plain(measured), str) else math.nan
        return cls(name, f"≥ {format(bound, fmt)}", _plain(measured), bool(m >= bound))

    @classmethod
    def between(
        cls, name: str, measured: float, low: float, high: float, fmt: str = ".4g"
    ) -> Check:
        """Holds when ``low <= measured <= high`` (and is not NaN)."""
        m = float(_plain(measured)) if not isinstance(_plain(measured), str) else math.nan
        predicted = f"in [{format(low, fmt)}, {format(high, fmt)}]"
        return cls(name, predicted, _plain(measured), bool(low <= m <= high))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "predicted": self.predicted,
            "measured": self.measured,
            "holds": self.holds,
        }


def _verdict_html(chapter: str, claim: str, checks: list[Check], holds: bool) -> str:
    colour = "#1b7f3b" if holds else "#b3261e"
    td = "style='padding:0.15em 1.2em 0.15em 0;text-align:left'"
    rows = "".join(
        "<tr>"
        f"<td {td}>{html.escape(c.name)}</td>"
        f"<td {td}>{html.escape(c.predicted)}</td>"
        f"<td {td}>{html.escape(_fmt(c.measured))}</td>"
        f"<td style='text-align:center;font-weight:bold;"
        f"color:{'#1b7f3b' if c.holds else '#b3261e'}'>"
        f"{'✓' if c.holds else '✗'}</td>"
        "</tr>"
        for c in checks
    )
    failing = [c.name for c in checks if not c.holds]
    overall = (
        "HOLDS"
        if holds
        else "DOES NOT HOLD (failing: " + ", ".join(html.escape(n) for n in failing) + ")"
    )
    return (
        # mathjax_process: MathJax (as the book configures it) typesets \( ... \) in the claim
        f"<div class='localsgd-verdict mathjax_process' style='border:2px solid {colour};"
        "border-radius:6px;padding:0.6em 1em;margin:1em 0'>"
        f"<p style='margin:0 0 0.4em 0'><strong>Verdict ({html.escape(chapter)})</strong>: "
        f"{html.escape(claim)}</p>"
        "<table style='border-collapse:collapse;margin:0.4em 0'>"
        f"<thead><tr><th {td}>check</th><th {td}>predicted</th><th {td}>measured</th>"
        "<th>agrees</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p style='margin:0.4em 0 0 0;color:{colour}'><strong>{overall}</strong></p>"
        "</div>"
    )


def _verdict_text(chapter: str, claim: str, checks: list[Check], holds: bool) -> str:
    lines = [f"Verdict ({chapter}): {claim}"]
    for c in checks:
        mark = "✓" if c.holds else "✗"
        lines.append(f"  {mark} {c.name}: predicted {c.predicted}, measured {_fmt(c.measured)}")
    failing = [c.name for c in checks if not c.holds]
    lines.append("HOLDS" if holds else "DOES NOT HOLD (failing: " + ", ".join(failing) + ")")
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
    if not checks:
        raise ValueError("checks=[] is empty; a verdict needs at least one computed check")
    for c in checks:
        if not isinstance(c, Check):
            raise TypeError(f"checks must hold Check objects, got {c!r}")
    holds = all(c.holds for c in checks)
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
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name={name!r} must be an identifier")
    plain = _plain(value)
    if isinstance(plain, numbers.Number) and not isinstance(plain, bool):
        _myst_glue(name, _Text(_fmt(plain, fmt)) if fmt else plain)
    elif isinstance(plain, str):
        _myst_glue(name, _Text(plain))
    else:
        _myst_glue(name, value)
