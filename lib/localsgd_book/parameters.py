"""A chapter's parameters: the profiles that set them, the notebook's ``parameters`` cell that
defines them (names, defaults and so types), papermill's flags that override them, and the
declared ranges that the notebook checks in its first code cell.

Profiles are YAML files ``notebooks/profiles/<profile>.yaml``: a mapping from notebook stem to a
mapping of papermill parameters, plus an optional ``_all`` mapping whose entries go to every
notebook whose ``parameters`` cell defines them. For one notebook the parameters are, later
winning: the cell's defaults, ``_all``, the notebook's own entry, then the command line.

A value must have the type of the cell's default (an int is accepted, and converted, where the
default is a float; a float must be finite; a list's items have the type of the default's items).
Every number, or list of numbers, must also lie in its declared range: each notebook passes its
ranges to :func:`check_parameters` (through :func:`localsgd_book.session.start`), as a mapping
from parameter name to a rule, one of::

    ">= 1"   "> 0"   "<= 1"   "< 2"            a bound
    "[0, 1]" "(0, 2)" "(0, 1]" "[1, inf)"      an interval, ends closed ``[ ]`` or open ``( )``
    ("gelu", "softplus")                        the allowed values (for names)

For a list the rule applies to every item, and a list whose default is not empty may not be
empty. A bad value is a ``ValueError`` naming the parameter, the value, what is allowed and how to
pass it with papermill (``-p NAME VALUE`` for a scalar, ``-y "NAME: [...]"`` for a list).
"""

from __future__ import annotations

import ast
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import chapter_source, layout, safe_yaml

PARAMETERS_TAG = "parameters"
ALL_KEY = "_all"

# --------------------------------------------------------------------------------------------
# profiles


def available_profiles(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the profiles present under ``notebooks/profiles/`` (sorted)."""
    return sorted(p.stem for p in layout(root).profiles.glob("*.yaml"))


def load_profile(profile: str, root: str | os.PathLike[str] | None = None) -> dict[str, dict]:
    """Read ``notebooks/profiles/<profile>.yaml`` as ``{stem: {param: value}}``.

    Raises ValueError naming ``profile`` when there is no such profile or its file is not a
    mapping of mappings.
    """
    lay = layout(root)
    allowed = available_profiles(lay.root)
    if not isinstance(profile, str) or profile not in allowed:
        raise ValueError(f"profile={profile!r} is not a known profile; allowed: {allowed}")

    path = lay.profiles / f"{profile}.yaml"
    data = safe_yaml(path.read_text(), f"profile={profile!r}: {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"profile={profile!r}: {path} must hold a mapping, not {type(data).__name__}"
        )
    out: dict[str, dict] = {}
    for key, value in data.items():
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ValueError(
                f"profile={profile!r}: entry {key!r} in {path} must be a mapping of parameters, "
                f"not {value!r}"
            )
        out[str(key)] = dict(value)
    return out


# --------------------------------------------------------------------------------------------
# the parameters cell


class _Unknown:
    """The default of a parameter whose value is not a Python literal: any value goes."""

    def __repr__(self) -> str:
        return "<not a literal>"


UNKNOWN = _Unknown()


def notebook_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The defaults that a notebook's ``parameters``-tagged cell assigns: ``{name: value}``.

    Values that are not Python literals (``n = 2 ** 5`` is, ``n = np.arange(3)`` is not) map to
    :data:`UNKNOWN`, which accepts any value. Raises ValueError when the notebook has no such
    cell.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return _parse_parameters_source(cell.source, str(path))
    raise ValueError(f"notebook {path} has no code cell tagged {PARAMETERS_TAG!r}")


def _parse_parameters_source(source: str, where: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"the parameters cell of {where} does not parse: {exc}") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = UNKNOWN
        for target in targets:
            if isinstance(target, ast.Name):
                out[target.id] = default
    return out


def how_to_pass(name: str, default: Any) -> str:
    """How papermill passes a value of ``default``'s kind: ``-p`` for a scalar, ``-y`` for a
    list (papermill's ``-p`` passes ``"[1, 4]"`` as a string)."""
    if isinstance(default, list | tuple):
        example = "[" + ", ".join(repr(v) for v in list(default)[:2]) + "]"
        return (f"pass a list with -y, e.g. -y \"{name}: {example}\" (papermill's -p {name} "
                f"\"{example}\" passes a string)")
    return f"pass it with -p {name} VALUE"


def _item_default(default: Sequence[Any]) -> Any:
    """A representative item of a list default, whose type every item of a value must have:
    a float when the items are numbers and one is a float, else the first item when all items
    share its type; None (no check) for an empty or mixed list."""
    items = list(default)
    if not items:
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
        return next((v for v in items if isinstance(v, float)), items[0])
    kind = type(items[0])
    return items[0] if kind in (int, float, str, bool) and all(type(v) is kind
                                                               for v in items) else None


def coerce_parameter(name: str, value: Any, default: Any, notebook: str = "") -> Any:
    """Check ``value`` against the type of ``default``; return it, an int widened to float
    where the default is a float, and a list as a tuple where the default is a tuple (the
    items checked against the default's items).

    Raises ValueError naming the parameter, the value, the expected type and how to pass it.
    """
    if default is UNKNOWN or default is None:
        return value
    where = f" (notebook {notebook})" if notebook else ""
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(
                    f"parameter {name}{where}: the integer {str(value)[:12]}... "
                    f"({len(str(abs(value)))} digits) does not fit a float"
                ) from None
        ok = isinstance(value, float)
        if ok and not math.isfinite(value):
            raise ValueError(
                f"parameter {name}={value!r}{where} must be a finite number; nan and inf are "
                f"not allowed (the default there is {default!r})"
            )
    elif isinstance(default, tuple | list):
        if isinstance(value, tuple | list):
            item = _item_default(default)
            if item is not None:
                value = [_coerce_item(name, i, v, item, notebook, default)
                         for i, v in enumerate(value)]
            return expected(value)
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(
            f"parameter {name}={value!r}{where} has type {type(value).__name__}; expected "
            f"{expected.__name__} (the default there is {default!r}); "
            f"{how_to_pass(name, default)}"
        )
    return value


def _coerce_item(name: str, i: int, value: Any, item: Any, notebook: str, default: Any) -> Any:
    try:
        return coerce_parameter(f"{name}[{i}]", value, item, notebook)
    except ValueError as err:
        raise ValueError(f"{err}; the items of {name} are {type(item).__name__}s "
                         f"(the default is {default!r})") from None


def resolve_parameters(
    notebook: str | os.PathLike[str],
    profile_entries: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The validated papermill parameters for one notebook: ``_all`` (only the names the
    notebook defines), then its own profile entry, then ``extra``; later entries win.

    Raises ValueError for a name the notebook's parameters cell does not define or a value of
    the wrong type.
    """
    path = Path(notebook)
    stem = path.stem
    defaults = notebook_parameters(path)
    merged: dict[str, Any] = {}
    for key, value in (profile_entries.get(ALL_KEY) or {}).items():
        if key in defaults:
            merged[key] = value
    for source, params in (
        ("profile", profile_entries.get(stem) or {}),
        ("command line", extra or {}),
    ):
        for key, value in params.items():
            if key not in defaults:
                raise ValueError(
                    f"parameter {key}={value!r} (from the {source}) is not defined in the "
                    f"parameters cell of notebook {stem}; allowed: {sorted(defaults)}"
                )
            merged[key] = value
    return {k: coerce_parameter(k, v, defaults[k], stem) for k, v in merged.items()}


def profile_parameters(
    notebook: str | os.PathLike[str], profile: str, root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Every parameter of ``notebook`` as ``profile`` runs it: the cell's defaults updated by
    :func:`resolve_parameters` with the profile's entries."""
    defaults = notebook_parameters(notebook)
    defaults.update(resolve_parameters(notebook, load_profile(profile, root)))
    return defaults


# --------------------------------------------------------------------------------------------
# PARAMS in papermill's style


def resolve_value(text: str) -> Any:
    """A command-line value, as papermill's ``-p`` reads it: True/False/None, an int, a float,
    else the string. YAML's lower-case true/false/null and flow lists/mappings (``[1, 2]``)
    are read as YAML too.
    """
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if text in ("None", "null", "~"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in ("[", "{"):
        return safe_yaml(text, f"value {text!r}")
    return text


def parse_params(tokens: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse papermill-style parameter flags, as ``make run PARAMS="..."`` passes them.

    ``-p NAME VALUE`` (typed, see :func:`resolve_value`), ``-r NAME VALUE`` (raw string) and
    ``-y YAML`` (a YAML mapping); the long forms ``--parameters``, ``--parameters_raw`` and
    ``--parameters_yaml`` too. A string is split as a shell would. Later flags win.
    """
    if tokens is None:
        return {}
    items = shlex.split(tokens) if isinstance(tokens, str) else list(tokens)
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        flag = items[i]
        if flag in ("-p", "--parameters", "-r", "--parameters_raw"):
            if i + 2 >= len(items):
                raise ValueError(f"PARAMS: {flag} needs NAME VALUE, got {items[i + 1 :]!r}")
            name, value = items[i + 1], items[i + 2]
            if not name.isidentifier():
                raise ValueError(f"PARAMS: parameter name {name!r} is not a Python identifier")
            out[name] = value if flag in ("-r", "--parameters_raw") else resolve_value(value)
            i += 3
        elif flag in ("-y", "--parameters_yaml"):
            if i + 1 >= len(items):
                raise ValueError(f"PARAMS: {flag} needs a YAML mapping")
            data = safe_yaml(items[i + 1], f"PARAMS: {flag} {items[i + 1]!r}")
            if not isinstance(data, dict):
                raise ValueError(f"PARAMS: {flag} {items[i + 1]!r} is not a YAML mapping")
            out.update(data)
            i += 2
        else:
            raise ValueError(
                f"PARAMS: unexpected {flag!r}; use -p NAME VALUE, -r NAME VALUE or -y YAML"
            )
    return out


# --------------------------------------------------------------------------------------------
# ranges, and the check a notebook runs in its first code cell

_NUMBER = r"[-+]?(?:inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_BOUND = re.compile(rf"^\s*(>=|>|<=|<)\s*({_NUMBER})\s*$", re.I)
_INTERVAL = re.compile(rf"^\s*([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])\s*$", re.I)


@dataclass(frozen=True)
class Rule:
    """What a parameter (or each item of a list parameter) may be: a number between ``low``
    and ``high`` (each end open or closed), or one of ``allowed``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    allowed: tuple | None = None

    def admits(self, value: Any) -> bool:
        if self.allowed is not None:
            return value in self.allowed
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)

    def describe(self) -> str:
        """The rule in words: ``≥ 1``, ``in (0, 2]``, ``one of 'gelu', 'softplus'``."""
        if self.allowed is not None:
            return "one of " + ", ".join(repr(v) for v in self.allowed)
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if math.isinf(self.low):
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


def parse_rule(name: str, spec: Any) -> Rule:
    """A :class:`Rule` from its declaration (see the module docstring); ValueError naming the
    parameter for one that is not a rule."""
    if isinstance(spec, tuple | list | set | frozenset):
        if not spec:
            raise ValueError(f"the range of {name} lists no allowed value")
        return Rule(allowed=tuple(spec))
    text = spec if isinstance(spec, str) else ""
    bound, interval = _BOUND.match(text), _INTERVAL.match(text)
    if bound:
        op, value = bound.group(1), float(bound.group(2))
        if op.startswith(">"):
            return Rule(low=value, low_open=op == ">")
        return Rule(high=value, high_open=op == "<")
    if interval:
        low, high = float(interval.group(2)), float(interval.group(3))
        if not low < high:
            raise ValueError(f"the range of {name}, {spec!r}, is empty")
        return Rule(low, high, interval.group(1) == "(", interval.group(4) == ")")
    raise ValueError(
        f"the range of {name}, {spec!r}, is not a rule: write '>= 1', '> 0', '<= 1', '< 2', "
        "'[0, 1]', '(0, 2)', '(0, 1]' or a tuple of the allowed values"
    )


def _needs_rule(default: Any) -> bool:
    """Numbers and lists of numbers must declare a range; names, flags and text need not."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if isinstance(default, list | tuple):
        return bool(default) and all(number(v) for v in default)
    return number(default)


def _check_range(name: str, value: Any, default: Any, rule: Rule, notebook: str) -> None:
    where = f" (notebook {notebook})"
    hint = how_to_pass(name, default)
    if isinstance(value, list | tuple):
        if default and not value:
            raise ValueError(f"parameter {name}={value!r}{where} is empty; it needs at least "
                             f"one item, each {rule.describe()}; {hint}")
        bad = [(i, v) for i, v in enumerate(value) if not rule.admits(v)]
        if bad:
            i, v = bad[0]
            raise ValueError(f"parameter {name}={value!r}{where}: item {i}, {v!r}, is out of "
                             f"range; allowed: each item {rule.describe()}; {hint}")
    elif not rule.admits(value):
        raise ValueError(f"parameter {name}={value!r}{where} is out of range; allowed: "
                         f"{rule.describe()}; {hint}")


def check_parameters(
    chapter: str,
    namespace: Mapping[str, Any],
    ranges: Mapping[str, Any],
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Check every parameter of ``chapter`` as the kernel holds it (``namespace``, the
    notebook's ``globals()``): its type against the default in ``notebooks/<chapter>.ipynb``'s
    parameters cell (:func:`coerce_parameter`) and its value against its rule in ``ranges``.

    Returns ``{name: value}`` for every parameter, converted as :func:`coerce_parameter` does.
    Raises ValueError naming the parameter, the value, what is allowed and how to pass it; and,
    for the notebook's author, for a range that names no parameter or a number without a range.
    """
    defaults = notebook_parameters(chapter_source(chapter, root))
    unknown = sorted(set(ranges) - set(defaults))
    if unknown:
        raise ValueError(f"ranges={unknown} name no parameter of notebook {chapter}; its "
                         f"parameters are {sorted(defaults)}")
    rules = {name: parse_rule(name, spec) for name, spec in ranges.items()}
    missing = sorted(n for n, d in defaults.items() if n not in rules and _needs_rule(d))
    if missing:
        raise ValueError(f"parameters {missing} of notebook {chapter} have no declared range; "
                         "add a rule for each to the ranges passed to the check")
    checked: dict[str, Any] = {}
    for name, default in defaults.items():
        if name not in namespace:
            raise ValueError(f"parameter {name} of notebook {chapter} is not defined in the "
                             "kernel: run the parameters cell first")
        value = coerce_parameter(name, namespace[name], default, chapter)
        if name in rules:
            _check_range(name, value, default, rules[name], chapter)
        checked[name] = value
    return checked


__all__ = [
    "ALL_KEY", "PARAMETERS_TAG", "Rule", "UNKNOWN", "available_profiles", "check_parameters",
    "coerce_parameter", "how_to_pass", "load_profile", "notebook_parameters",
    "parse_params", "parse_rule", "profile_parameters", "resolve_parameters", "resolve_value",
]
