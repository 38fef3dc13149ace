"""Where results go, and how files are written there.

One function, :func:`results_dir`, says where every result of the library and the book goes:
the run cache, checkpoints, verdicts, figure records and timings all live under it. Every file is
written atomically (:func:`write_bytes_atomic`): a reader, or a process killed mid-write, never
sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["results_dir", "write_bytes_atomic", "write_json_atomic"]

RESULTS_ENV = "LOCALSGD_RESULTS"


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
