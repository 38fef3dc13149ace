"""Where results go, and how files are written there.

One function, :func:`results_dir`, says where every result of the library and the book goes:
the run cache, checkpoints, verdicts, figure records and timings all live under it. Every file is
written atomically (:func:`write_bytes_atomic`): a reader, or a process killed mid-write, never
sees a half-written file. :func:`check_writable` says, before a run's work starts, whether its
files can be written there; it also removes the temporary files that killed writers left behind
(:func:`sweep_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "NotWritableError",
    "check_writable",
    "results_dir",
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
