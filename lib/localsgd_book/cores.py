"""The machine's cores shared among processes that run at once: the chapters of ``make book
--jobs`` and the workers of ``make test``.

XLA's and the BLAS's thread pools each size themselves to every core a process may use. Two
processes that both may use every core then run twice the threads the machine has, and on two
cores they slow each other far more than they gain: chapters 04 and 05 side by side took 140 s
with both processes on both cores and 81 s with each on a core of its own. :func:`pin` gives a
process (and the kernels it starts, which inherit it) its own share of the cores, and the
thread pools follow: XLA counts the cores it may run on, the BLAS reads the variables of
:data:`THREAD_VARIABLES` when it loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available() -> tuple[int, ...]:
    """The cores this process may run on, in order; ``()`` where the platform does not say
    (no ``os.sched_getaffinity``: nothing is pinned there)."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


def shares(parts: int, cores: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """``cores`` (default :func:`available`) split into ``parts`` shares of consecutive cores, as
    even as the count allows; with more parts than cores, part ``i`` gets core ``i mod n``
    alone. ``[]`` when there are no cores to share. ValueError naming ``parts`` unless it is an
    integer >= 1."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be an integer >= 1, got {parts!r}")
    cores = tuple(available() if cores is None else cores)
    if not cores:
        return []
    if parts >= len(cores):
        return [(cores[i % len(cores)],) for i in range(parts)]
    bounds = [round(i * len(cores) / parts) for i in range(parts + 1)]
    return [cores[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def pin(share: Sequence[int]) -> None:
    """Run this process, and every process it starts from now on, on the cores ``share`` only,
    with the BLAS's threads (:data:`THREAD_VARIABLES`) as many as its cores. Call it before the
    process loads numpy or starts XLA's backend. Nothing happens for an empty ``share`` or where
    the platform cannot pin."""
    if not share or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0, set(share))
    for name in THREAD_VARIABLES:
        os.environ[name] = str(len(share))
