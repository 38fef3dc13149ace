"""The reproducibility appendix's checks: two uncached runs of one configuration and a cache hit
give bitwise identical arrays, the cache key changes with the configuration, and the installed
packages are the pinned ones.
"""

from __future__ import annotations

import numpy as np

from . import Check

__all__ = ["arrays", "bitwise_equal", "max_diff", "reproducibility"]


def arrays(result) -> dict[str, np.ndarray]:
    """Every array a :class:`~localsgd.result.Result` records, by name (``metrics/<k>``,
    ``test/<k>``, ``rounds``, ``eta``, ``diverged_at``)."""
    out = {f"metrics/{k}": np.asarray(v) for k, v in result.metrics.items()}
    out.update({f"test/{k}": np.asarray(v) for k, v in result.test.items()})
    out.update(rounds=np.asarray(result.rounds), eta=np.asarray(result.eta),
               diverged_at=np.asarray(result.diverged_at))
    return out


def max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference over all arrays; inf when the names or shapes differ."""
    if a.keys() != b.keys() or any(np.shape(a[k]) != np.shape(b[k]) for k in a):
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)),
                              initial=0.0)) for k in a), default=0.0)


def bitwise_equal(a: dict, b: dict) -> bool:
    """Same names, and every array equal element for element with the same dtype."""
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) and np.asarray(a[k]).dtype == np.asarray(b[k]).dtype for k in a)


def reproducibility(first: dict, second: dict, hit: dict, stored: bool, key: str, other_key: str,
                    n_pins: int, n_mismatch: int) -> list[Check]:
    """``first``, ``second``: :func:`arrays` of two uncached runs; ``hit``: of the same
    configuration read back from the cache (``stored``: its entry exists); ``key`` and
    ``other_key``: the cache keys of the configuration and of one field changed; ``n_mismatch``
    of the ``n_pins`` pinned packages differ from the installed ones."""
    diff_runs, diff_cache = max_diff(first, second), max_diff(first, hit)
    return [
        Check("two uncached runs: largest difference", "0 (bitwise identical)", diff_runs,
              bool(bitwise_equal(first, second) and diff_runs == 0.0)),
        Check("cache hit vs computed run: largest difference", "0 (bitwise identical)", diff_cache,
              bool(stored and bitwise_equal(first, hit) and diff_cache == 0.0)),
        Check("cache key changes with the configuration", "different keys",
              "different" if other_key != key else "same", other_key != key),
        Check.at_most(f"installed versions differing from the {n_pins} pins", n_mismatch, 0,
                      fmt="d"),
    ]
