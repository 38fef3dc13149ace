"""What a chapter's kernel knows about its own run: which chapter it is, its parameters as
checked, and the runs it used.

The first code cell after a notebook's ``parameters`` cell starts the session, before anything
else runs::

    from localsgd_book import session
    session.start("04_local_gd", globals(), ranges=dict(n=">= 2", m=">= 1", c="(0, 2)", ...))

:func:`start` checks every parameter, its type against the parameters cell's default and its value
against its rule in ``ranges`` (:func:`localsgd_book.parameters.check_parameters`), so that a bad
value stops the notebook there with a message that names it; it puts the checked values back
(an int given for a float becomes a float). From then on it notes the cache key of every result
that :func:`localsgd.experiments.run` returns, computed or read from the cache (``run_grid`` goes
through ``run``), so that the verdict's record (:func:`localsgd_book.report.verdict`) lists the
runs the chapter used without the notebook naming them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .parameters import check_parameters

_HOOK = "_localsgd_book_tracked"


@dataclass
class Session:
    """One chapter's run in a kernel: ``parameters`` as checked, ``runs`` the cache keys of the
    results it used, in the order first used."""

    chapter: str
    parameters: dict[str, Any]
    runs: list[str] = field(default_factory=list)

    def note(self, key: str | None) -> None:
        if key and key not in self.runs:
            self.runs.append(key)


_current: Session | None = None


def start(chapter: str, namespace: MutableMapping[str, Any], ranges: Mapping[str, Any]) -> None:
    """Check the parameters of ``chapter`` held in ``namespace`` (the notebook's ``globals()``)
    against their types and ``ranges``, put the checked values back, and begin noting the runs.

    Raises ValueError naming a bad parameter, its value, what is allowed and how to pass it
    (see :mod:`localsgd_book.parameters`), before any experiment runs.
    """
    global _current
    checked = check_parameters(chapter, namespace, ranges)
    namespace.update(checked)
    _current = Session(chapter, checked)
    _track_runs()


def current() -> Session | None:
    """The session :func:`start` began in this process, or None."""
    return _current


def _track_runs() -> None:
    """Wrap :func:`localsgd.experiments.run` (once) so that every result it returns is noted."""
    import localsgd
    from localsgd import experiments

    run = experiments.run
    if getattr(run, _HOOK, False):
        return

    @functools.wraps(run)
    def tracked(*args: Any, **kwargs: Any) -> Any:
        result = run(*args, **kwargs)
        if _current is not None:
            _current.note(getattr(result, "provenance", {}).get("key"))
        return result

    setattr(tracked, _HOOK, True)
    experiments.run = tracked
    if "run" in vars(localsgd):  # the package caches an exported name on first use
        localsgd.run = tracked
