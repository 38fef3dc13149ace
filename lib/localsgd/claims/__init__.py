"""Each chapter's checks as functions of recorded results.

A chapter of the book states one claim of the paper and ends with a verdict: a list of
:class:`Check` rows, each comparing a measurement with a prediction. The functions that build
those lists live here, one module per chapter (``localsgd.claims.key_lemma``, ...), so that the
notebook calls them on its runs and the tests call them on deliberately wrong runs (negative
controls) and see the verdict fail. They take recorded results (arrays, :class:`Result` objects,
fitted numbers) and return ``list[Check]``; they run no experiment themselves.

Every check says where its prediction comes from (``basis``):

* ``"theory"``: a bound or identity stated by a cited paper (ALS19, Du et al., the paper's
  abstract), in the shape the book can test;
* ``"computed"``: a number computed from the run itself, for example the linearised model's rate
  from the run's own initialisation, or a critical step from its Gram matrix;
* ``"tolerance"``: a threshold the book chose (an allowance around a computed prediction, a
  minimum effect size); the verdict box marks these so a reader can judge them.

Every threshold a chapter's checks use is declared once, in its module's ``TOLERANCES``, as a
:class:`Tolerance` that says where it comes from (:data:`ORIGINS`): from theory, fitted on the
``ci`` profile's runs and then applied unchanged to ``default`` (a held-out test), or fixed before
any run for a stated reason. The check functions read them from there; a notebook passes none.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["BASES", "ORIGINS", "Check", "Tolerance", "all_hold", "plain"]

BASES = ("theory", "computed", "tolerance")
# Where a tolerance comes from: a cited result or an identity; a fit on the ci profile's runs,
# applied unchanged to the default and paper profiles; a choice made before any run.
ORIGINS = ("theory", "ci-fit", "prior")


def plain(value: Any) -> Any:
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


def _number(measured: Any) -> float:
    m = plain(measured)
    return float(m) if isinstance(m, numbers.Real) else math.nan


@dataclass(frozen=True)
class Check:
    """One row of a verdict: the prediction (as text), where it comes from (``basis``, one of
    :data:`BASES`), what the run measured, and whether the measurement agrees. ``holds`` must be
    computed from the measurement."""

    name: str
    predicted: str
    measured: float | int | str
    holds: bool
    basis: str = "tolerance"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Check name={self.name!r} must be a non-empty string")
        if self.basis not in BASES:
            raise ValueError(f"Check basis={self.basis!r} must be one of {BASES}")
        object.__setattr__(self, "holds", _as_bool(self.holds, f"Check {self.name!r}: holds"))
        object.__setattr__(self, "measured", plain(self.measured))
        object.__setattr__(self, "predicted", str(self.predicted))

    @classmethod
    def at_most(
        cls, name: str, measured: float, bound: float, fmt: str = ".4g", basis: str = "tolerance"
    ) -> Check:
        """Holds when ``measured <= bound`` (and is not NaN)."""
        holds = bool(_number(measured) <= bound)
        return cls(name, f"≤ {format(bound, fmt)}", plain(measured), holds, basis)

    @classmethod
    def at_least(
        cls, name: str, measured: float, bound: float, fmt: str = ".4g", basis: str = "tolerance"
    ) -> Check:
        """Holds when ``measured >= bound`` (and is not NaN)."""
        holds = bool(_number(measured) >= bound)
        return cls(name, f"≥ {format(bound, fmt)}", plain(measured), holds, basis)

    @classmethod
    def between(
        cls,
        name: str,
        measured: float,
        low: float,
        high: float,
        fmt: str = ".4g",
        basis: str = "tolerance",
    ) -> Check:
        """Holds when ``low <= measured <= high`` (and is not NaN)."""
        predicted = f"in [{format(low, fmt)}, {format(high, fmt)}]"
        holds = bool(low <= _number(measured) <= high)
        return cls(name, predicted, plain(measured), holds, basis)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "predicted": self.predicted,
            "basis": self.basis,
            "measured": self.measured,
            "holds": self.holds,
        }


def all_hold(checks: list[Check]) -> bool:
    """Whether every check holds: the verdict of a chapter. An empty list is refused, since a
    verdict needs at least one computed check."""
    checks = list(checks)
    if not checks:
        raise ValueError("checks=[] is empty; a verdict needs at least one computed check")
    return all(c.holds for c in checks)


@dataclass(frozen=True)
class Tolerance:
    """A threshold of a verdict, fixed before the data it judges.

    ``value``: a number, or a ``(low, high)`` pair; ``origin``: one of :data:`ORIGINS`;
    ``source``: where it comes from, in words (the citation or identity for ``"theory"``, the
    fit and its margin for ``"ci-fit"``, the reason for ``"prior"``)."""

    value: Any
    origin: str
    source: str

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"Tolerance origin={self.origin!r} must be one of {ORIGINS}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Tolerance source must say where the value comes from")
        vals = self.value if isinstance(self.value, tuple) else (self.value,)
        if not vals or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in vals):
            raise ValueError(f"Tolerance value={self.value!r} must be a finite number or a tuple "
                             "of them")

    @property
    def basis(self) -> str:
        """The :data:`BASES` entry of a check built on this tolerance."""
        return "theory" if self.origin == "theory" else "tolerance"
