"""Everything the library writes and reads back, and where it goes.

One function, :func:`results_dir`, says where every result of the library and the book goes:
the run cache, checkpoints, verdicts, figure records and timings all live under it. Every file is
written atomically (:func:`write_bytes_atomic`): a reader, or a process killed mid-write, never
sees a half-written file. :func:`check_writable` says, before a run's work starts, whether its
files can be written there; it also removes the temporary files that killed writers left behind
(:func:`sweep_temporaries`).

A run's cache entry (:func:`save_result`, :func:`load_result`, at :func:`cache_path`) and its
checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`, at :func:`checkpoint_path`) share
one file format: a magic line, the header's length (8 bytes, little-endian), the header (JSON),
the SHA-256 of header and payload (64 hex digits), the payload (an ``.npz`` of the arrays). A file
that fails its checksum, or whose arrays cannot be what its config computes, is not used: with a
warning, the run recomputes the entry, or starts from round 0 instead of the checkpoint.

JAX, the run configuration and :class:`~localsgd.result.Result` are imported inside the functions
that need them: the book's tooling imports this module for its paths and atomic writes alone,
and loads no JAX.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .experiments import Experiment
    from .result import Result

__all__ = [
    "NotWritableError",
    "cache_path",
    "check_writable",
    "checkpoint_info",
    "checkpoint_path",
    "load_checkpoint",
    "load_result",
    "results_dir",
    "save_checkpoint",
    "save_result",
    "sweep_temporaries",
    "write_bytes_atomic",
    "write_json_atomic",
]

RESULTS_ENV = "LOCALSGD_RESULTS"
# A temporary file older than this is stale whoever wrote it (a writer on another host, whose
# process cannot be asked, or a recycled process id).
STALE_AFTER_S = 6 * 3600.0


class NotWritableError(OSError, ValueError):
    """The results folder cannot take a run's files. An OSError (the file system said no) and a
    ValueError (``$LOCALSGD_RESULTS`` names an unusable folder), raised before any work."""


def results_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The results folder: ``$LOCALSGD_RESULTS`` if set, else ``<root>/results`` (``root``
    defaults to the current directory). The book's pipeline sets the variable to an absolute
    path for the notebooks it executes."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    return Path(root if root is not None else ".") / "results"


def write_bytes_atomic(path: str | os.PathLike[str], blob: bytes) -> Path:
    """Write ``blob`` to ``path`` through a temporary file in the same folder, flushed to disk,
    then ``os.replace``: a reader, or a process killed mid-write, never leaves a half-written
    file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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


# -- temporary files and writability -----------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", platform.node()) or "host"


def _temp_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: who writes the temporary file, so that a sweep can tell the
    file of a dead writer from one being written."""
    return f".{path.name}.{_host()}-{os.getpid()}."


_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a process id this system can have
        return False
    return True


def sweep_temporaries(folder: str | os.PathLike[str], max_age_s: float = STALE_AFTER_S) -> list:
    """Removes the temporary files ``.<name>.<host>-<pid>.*.tmp`` in ``folder`` left by writers
    that died mid-write: those of this host whose process is gone, and any older than
    ``max_age_s`` seconds (a writer on another host, or a name without a writer). A live
    writer's file is kept. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host, now = [], _host(), time.time()
    for p in folder.glob(".*.tmp"):
        match = _TEMP.match(p.name)
        try:
            old = now - p.stat().st_mtime > max_age_s
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        mine = match is not None and match["host"] == host
        dead = mine and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"]))
        if dead or old:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def check_writable(*paths: str | os.PathLike[str]) -> None:
    """Before a run's work starts: every file in ``paths`` can be written (its folder exists or
    can be made, takes a new file, and the path itself is not a folder). Sweeps the folders'
    stale temporary files on the way. Raises :class:`NotWritableError` naming
    ``$LOCALSGD_RESULTS`` otherwise."""
    for path in map(Path, paths):
        if path.is_dir():
            raise NotWritableError(
                f"{RESULTS_ENV} must name a folder where results can be written: {path} is a "
                f"folder where a results file goes; remove it or set {RESULTS_ENV} to another "
                f"folder (now {results_dir()})"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(path.parent)
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise NotWritableError(
                f"{RESULTS_ENV} must name a folder where results can be written: cannot write "
                f"in {path.parent} ({err.strerror or err}); set {RESULTS_ENV} to a writable "
                f"folder (now {results_dir()}), or run with cache=False and no checkpoints"
            ) from err


# -- the file format of cache entries and checkpoints ------------------------------------------

_MAGIC = b"localsgd-results-v1\n"


def _pack(meta: dict, arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    head = json.dumps(meta, sort_keys=True).encode()
    digest = hashlib.sha256(head + payload).hexdigest().encode()
    return _MAGIC + len(head).to_bytes(8, "little") + head + digest + payload


def _unpack(blob: bytes):
    """``(meta, arrays)``; raises ValueError on a file that is not one, truncated or corrupt."""
    if not blob.startswith(_MAGIC):
        raise ValueError("not a localsgd results file (bad magic line)")
    blob = blob[len(_MAGIC) :]
    size = int.from_bytes(blob[:8], "little")
    if len(blob) < 8 + size + 64:
        raise ValueError(f"truncated: {len(blob)} bytes after the magic line")
    head, digest = blob[8 : 8 + size], blob[8 + size : 8 + size + 64]
    payload = blob[8 + size + 64 :]
    if hashlib.sha256(head + payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch")
    return json.loads(head), np.load(io.BytesIO(payload))


def _prefixed(arrays, prefix: str) -> dict:
    """The arrays named ``<prefix>/<name>``, by ``name``."""
    return {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith(f"{prefix}/")}


# -- the results cache -------------------------------------------------------------------------


def cache_path(exp: Experiment) -> Path:
    """Where a run of ``exp`` is cached: ``$LOCALSGD_RESULTS/cache/<key>.npz``."""
    return results_dir() / "cache" / f"{exp.key()}.npz"


def save_result(path: Path, res: Result) -> None:
    """Writes the result atomically (temporary file, then rename) with a checksum. A write that
    fails (disk full, the folder gone read-only since the run began) costs only the cache entry:
    a warning says so and the result is still returned."""
    arrays = {f"metrics/{k}": v for k, v in res.metrics.items()}
    arrays.update({f"test/{k}": v for k, v in res.test.items()})
    arrays.update(rounds=res.rounds, eta=res.eta, diverged_at=res.diverged_at)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, _pack({"provenance": res.provenance}, arrays))
    except OSError as err:
        warnings.warn(
            f"the result was not cached: cannot write {path} ({err}); check LOCALSGD_RESULTS",
            stacklevel=3,
        )


def load_result(path: Path, exp: Experiment) -> Result | None:
    """The cached :class:`~localsgd.result.Result` of ``exp`` at ``path``; None when there is
    none, and None with a warning when the entry is unreadable, fails its checksum, holds another
    key or arrays that do not fit ``exp`` (:func:`_check_entry`)."""
    from .result import Result

    if not path.is_file():  # missing, or a folder (which the run then refuses to overwrite)
        return None
    try:
        meta, arrays = _unpack(path.read_bytes())
        if meta["provenance"]["key"] != exp.key():
            raise ValueError(f"it holds key {meta['provenance']['key']}, not {exp.key()}")
        res = Result(
            exp,
            _prefixed(arrays, "metrics"),
            arrays["rounds"],
            arrays["eta"],
            arrays["diverged_at"],
            _prefixed(arrays, "test"),
            meta["provenance"],
        )
        _check_entry(res)
        return res
    except Exception as err:  # noqa: BLE001  (a corrupt, truncated or invalid entry is recomputed)
        warnings.warn(
            f"cache entry {path} is unreadable or does not match its config ({err}); recomputing",
            stacklevel=3,
        )
        return None


# Metrics recorded as one value an evaluation, and as a vector (clients or layers) an evaluation.
_SCALAR_METRICS = ("loss", "grad_norm", "pl_ratio", "dist_rel", "flips", "ever_flipped")
_VECTOR_METRICS = ("client_loss", "dist", "forward_norms", "gap", "gap_rel", "local_flips", "drift")


def _check_entry(res: Result) -> None:
    """Raises ValueError where a cache entry's arrays cannot be the result of its config: the
    recorded rounds, the ``(S,)`` step sizes and divergence rounds, every metric the config asks
    for at ``(S, E, ...)``, finite where the run records finite values (ratios may be 0/0), and
    the test metrics exactly where the data has a test split. The checksum guards against damage;
    this guards against an entry written whole but wrong."""
    from .config import METRICS

    exp, S = res.config, res.config.seeds
    want_rounds = np.arange(0, exp.rounds + 1, exp.eval_every)
    if not np.array_equal(res.rounds, want_rounds):
        raise ValueError(f"its rounds {np.shape(res.rounds)} are not {want_rounds.shape}")
    E = want_rounds.size
    eta, div = np.asarray(res.eta), np.asarray(res.diverged_at)
    if eta.shape != (S,) or not np.all(np.isfinite(eta) & (eta > 0)):
        raise ValueError(f"its step sizes are not {S} positive finite numbers: {eta!r}")
    if div.shape != (S,) or div.dtype.kind not in "iu" or np.any((div < -1) | (div > exp.rounds)):
        raise ValueError(f"its divergence rounds are not {S} integers in [-1, {exp.rounds}]")
    want = {k for name in exp.metrics for k in METRICS.get(name, (name,))}
    if set(res.metrics) != want:
        raise ValueError(f"it records {sorted(res.metrics)}, the config asks for {sorted(want)}")
    for k, v in res.metrics.items():
        ndim = 2 if k in _SCALAR_METRICS else 3 if k in _VECTOR_METRICS else v.ndim
        if v.shape[:2] != (S, E) or v.ndim != ndim or v.dtype.kind != "f":
            raise ValueError(f"its metric {k} is {v.dtype}{v.shape}, expected ({S}, {E}, ...)")
        if k != "pl_ratio" and not k.endswith("_rel") and not np.all(np.isfinite(v)):
            raise ValueError(f"its metric {k} has NaN or infinite values")
    want_test = set() if exp.dataset == "sphere" else {"accuracy", "loss"}
    if set(res.test) != want_test or any(np.shape(v) != (S,) for v in res.test.values()):
        raise ValueError(f"its test metrics {sorted(res.test)} are not {sorted(want_test)}")


# -- checkpoints -------------------------------------------------------------------------------


def checkpoint_path(exp: Experiment) -> Path:
    """Where :func:`localsgd.experiments.run` keeps ``exp``'s checkpoint:
    ``$LOCALSGD_RESULTS/checkpoints/<key>.npz``."""
    return results_dir() / "checkpoints" / f"{exp.key()}.npz"


def checkpoint_info(exp: Experiment) -> dict | None:
    """The header of ``exp``'s checkpoint (``round``: rounds done, ``key``, ``created``), or None
    when there is none or it is unreadable."""
    try:
        meta, _ = _unpack(checkpoint_path(exp).read_bytes())
    except Exception:  # noqa: BLE001  (missing or corrupt: no usable checkpoint)
        return None
    return meta


def save_checkpoint(path: Path, exp: Experiment, state: Any, metrics: dict, rounds: np.ndarray,
                    etas: np.ndarray) -> None:
    """Writes a run's ``state`` (any pytree of arrays) after ``rounds[-1]`` rounds, with the
    ``metrics`` recorded so far (``(S, E, ...)`` at ``rounds: (E,)``) and its step sizes
    ``etas: (S,)``, atomically and with a checksum. A write that fails warns: the run goes on,
    only a resume after a kill is lost."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(state)
    arrays = {f"state/{i}": np.asarray(a) for i, a in enumerate(leaves)}
    arrays.update({f"metrics/{k}": v for k, v in metrics.items()})
    arrays.update(rounds=rounds, eta=etas)
    meta = {
        "key": exp.key(),
        "round": int(rounds[-1]),
        "rounds": exp.rounds,
        "treedef": str(treedef),
        "leaves": len(leaves),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, _pack(meta, arrays))
    except OSError as err:
        warnings.warn(
            f"checkpoint at round {meta['round']} not saved: cannot write {path} ({err}); "
            f"check LOCALSGD_RESULTS",
            stacklevel=3,
        )


def load_checkpoint(path: Path, exp: Experiment, etas: np.ndarray, template):
    """``(state, metrics, rounds, round_done)`` from a valid checkpoint of ``exp``, else None (with
    a warning when one exists but cannot be used). ``template()`` gives a state of the right
    structure (only its shapes are evaluated)."""
    import jax
    import jax.numpy as jnp

    if not path.exists():
        return None
    try:
        meta, arrays = _unpack(path.read_bytes())
        if meta["key"] != exp.key():
            raise ValueError(f"it holds key {meta['key']}, not {exp.key()}")
        done, every = int(meta["round"]), exp.checkpoint_every
        if not (0 < done < exp.rounds and done % every == 0):
            raise ValueError(
                f"round {done} is not a multiple of checkpoint_every={every} below "
                f"rounds={exp.rounds}"
            )
        if not np.array_equal(arrays["eta"], etas):
            raise ValueError("its step sizes differ from this run's")
        shapes, treedef = jax.tree_util.tree_flatten(jax.eval_shape(template))
        if meta["treedef"] != str(treedef) or meta["leaves"] != len(shapes):
            raise ValueError("its state has another structure")
        leaves = [arrays[f"state/{i}"] for i in range(len(shapes))]
        for a, t in zip(leaves, shapes, strict=True):
            if a.shape != t.shape or a.dtype != t.dtype:
                raise ValueError(
                    f"a state array is {a.dtype}{a.shape}, expected {t.dtype}{t.shape}"
                )
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
        return state, _prefixed(arrays, "metrics"), arrays["rounds"], done
    except Exception as err:  # noqa: BLE001  (an unusable checkpoint means a fresh start)
        warnings.warn(f"checkpoint {path} is unusable ({err}); starting from round 0", stacklevel=3)
        return None
