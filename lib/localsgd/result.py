"""What a run returns, and where it came from.

:class:`Result` holds the arrays of every seed of a run, held at their last finite record where a
seed diverged (:func:`stop_at_divergence`); :func:`provenance` records how they were made (the
config, the library and its dependencies, the platform, the device path, the time taken).
:func:`identity` and :func:`source_digest` say what besides an
:class:`~localsgd.experiments.Experiment`'s fields decides its numbers (a user's data files by
content, the platform, the sharded path, the source of the modules that compute): the cache key
holds them, so that an entry computed one way is never served for another.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from . import __version__
from . import data as dt
from . import engine as en

if TYPE_CHECKING:
    from .experiments import Experiment


@dataclasses.dataclass
class Result:
    """What a run returns. Arrays carry a leading seed axis ``S``.

    ``metrics[name]``: ``(S, E, ...)`` at the recorded rounds ``rounds: (E,)``; ``iterations``
    is ``rounds * tau`` (local steps per client); ``eta: (S,)`` the step sizes used;
    ``diverged_at: (S,)`` the round at which a seed diverged, or -1; ``test``: dict of ``(S,)``
    test metrics where the data set has a test split; ``provenance``: config, versions, platform,
    time taken.

    A seed diverges when its weights or any recorded metric become non-finite; ``diverged_at`` is
    then the first such round (a recorded round when only a metric shows it), training stops at
    the last finite weights, and from there on ``metrics`` repeat the last finite record, so
    every recorded value is finite. :meth:`divergence_message` names the parameter to lower.
    """

    config: Experiment
    metrics: dict[str, np.ndarray]
    rounds: np.ndarray
    eta: np.ndarray
    diverged_at: np.ndarray
    test: dict[str, np.ndarray]
    provenance: dict[str, Any]

    @property
    def iterations(self) -> np.ndarray:
        return self.rounds * self.config.tau

    @property
    def diverged(self) -> bool:
        return bool(np.any(self.diverged_at >= 0))

    def divergence_message(self) -> str | None:
        """Why the run cannot be plotted, naming the parameter to lower; None when it converged."""
        if not self.diverged:
            return None
        s = int(np.argmax(self.diverged_at >= 0))
        why = self.provenance.get("diverged_why") or [en.WHY[1]] * len(self.diverged_at)
        cfg = self.config.run_config(float(self.eta[s]))
        return (
            en.divergence_message(cfg, int(self.diverged_at[s]), en.WHY.index(why[s]))
            + f" (seed {self.config.seed + s})"
        )


def stop_at_divergence(
    metrics: dict[str, np.ndarray], rounds: np.ndarray, diverged_at: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Holds every metric ``(S, E, ...)`` of a diverged seed at its last record before the
    divergence round, so that the returned metrics show no value of the weights the run was
    stopped at, whichever metrics were recorded; returns them with ``diverged_at: (S,)``. (The
    engine's guard marks a run diverged when its loss, computed whatever is recorded, or any
    recorded value is non-finite; a non-finite record that it could not see marks the run here,
    at that record's round ``rounds: (E,)``.)"""
    metrics = {k: np.array(v) for k, v in metrics.items()}
    diverged_at = np.array(diverged_at)
    S, E = diverged_at.shape[0], len(rounds)
    bad = np.zeros((S, E), bool)
    for v in metrics.values():
        bad |= ~np.isfinite(v.reshape(S, E, -1)).all(axis=-1)
    for s in range(S):
        hits = np.flatnonzero(bad[s])
        if hits.size and hits[0] > 0 and (diverged_at[s] < 0 or rounds[hits[0]] < diverged_at[s]):
            diverged_at[s] = rounds[hits[0]]
        if diverged_at[s] < 0:
            continue
        e = int(np.searchsorted(rounds, diverged_at[s]))
        if 0 < e < E:
            for v in metrics.values():
                v[s, e:] = v[s, e - 1]
    return metrics, diverged_at


# -- where the numbers came from ---------------------------------------------------------------

# The modules whose code decides a run's numbers (the sharded path's included).
_COMPUTING_MODULES = (
    "algorithms", "config", "data", "diagnostics", "distributed", "engine", "experiments", "model",
    "result", "theory",
)


@functools.cache
def source_digest() -> str:
    """SHA-256 of the source of the modules whose code decides a run's numbers."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _COMPUTING_MODULES:
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()


def mesh_name() -> str:
    """The path a run takes: ``"none"`` (one device) or ``"clients:<devices>"`` (the clients
    sharded over that many devices by ``LOCALSGD_MESH=clients``)."""
    mesh = os.environ.get("LOCALSGD_MESH", "") or "none"
    return f"clients:{jax.device_count()}" if mesh == "clients" else mesh


def identity(exp: Experiment) -> dict:
    """What decides a run's numbers besides its fields: the contents of a user's IDX files
    (SHA-256 of their bytes; the paths alone would serve stale results after a rewrite), the
    platform (``jax.default_backend()``) and the path (:func:`mesh_name`): the sharded and the
    single-device program agree only to float32 rounding, so neither may serve the other's
    entry."""
    ident = {"platform": jax.default_backend(), "mesh": mesh_name()}
    if exp.dataset == "idx":
        ident["idx_contents"] = []
        for name in ("idx_images", "idx_labels"):
            try:
                ident["idx_contents"].append(dt.file_digest(getattr(exp, name)))
            except OSError as err:  # gone or unreadable since the config was built
                raise ValueError(
                    f"{name} must name a readable IDX file, got {getattr(exp, name)!r} ({err})"
                ) from err
    return ident


def provenance(exp: Experiment, seconds: float, resumed_from: int = 0) -> dict[str, Any]:
    """The record kept with a result: ``exp``'s fields and cache key, the versions of the library
    and its dependencies, Python, the platform and device, the path (:func:`mesh_name`), the
    machine, ``seconds`` taken, the round a checkpointed run resumed from, the time of writing."""
    import flax
    import jaxlib
    import optax

    return {
        "config": dataclasses.asdict(exp),
        "key": exp.key(),
        "localsgd": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": jax.default_backend(),
        "mesh": mesh_name(),
        "device": str(jax.devices()[0].device_kind),
        "machine": platform.machine(),
        "os": platform.platform(),
        "seconds": round(seconds, 3),
        "resumed_from_round": int(resumed_from),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
