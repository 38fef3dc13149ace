"""Verdict records: what a chapter's verdict writes, where it goes, and how a record compares
with the build that renders it.

A record (:func:`localsgd_book.report.verdict` writes it) holds the verdict (``chapter``,
``claim``, ``holds``, ``checks``, ``headline``) and where it came from:

``profile``
    the profile whose parameters the run had (None when they are no profile's);
``book``
    whether the record is the book's (see below);
``parameters``
    every parameter of the chapter as the run checked it (None without a started session);
``commit``, ``dirty``
    ``git rev-parse HEAD`` of the repository and whether it had uncommitted changes (None
    outside a git checkout);
``versions``, ``platform``
    localsgd, JAX, jaxlib, Flax, NumPy and Python; the JAX backend, device, operating system;
``runs``
    the cache keys of the runs the chapter used (:mod:`localsgd_book.session` notes them);
``created``
    when it was written (UTC).

Where it goes: a run whose parameters are exactly a profile's (the one ``$LOCALSGD_PROFILE``
names, which the pipeline sets; for a plain papermill run, any profile) is the book's and writes
``$LOCALSGD_RESULTS/verdicts/<chapter>.json``. Any other run (other parameters, or no checked
parameters) writes ``$LOCALSGD_RESULTS/runs/<chapter>-<digest>.json``, ``digest`` from its
parameters, and never replaces the book's record.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localsgd.claims import plain

from .parameters import available_profiles, notebook_parameters, profile_parameters

PROFILE_ENV = "LOCALSGD_PROFILE"
BOOK_FOLDER = "verdicts"
APART_FOLDER = "runs"


def anchor(chapter: str) -> str:
    """The HTML id of a chapter's verdict box, which its outcome box and the scoreboard link."""
    return f"verdict-{chapter}"


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and numpy / jax scalars as Python numbers (non-finite
    floats as the strings JSON needs), recursively; any other object as its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    value = plain(value)
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def parameters_digest(parameters: Mapping[str, Any] | None) -> str:
    """12 hex digits of the SHA-256 of the parameters as canonical JSON."""
    blob = json.dumps(jsonable(parameters), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_state(root: str | os.PathLike[str]) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout at ``root``: the full hash of ``HEAD`` and whether
    ``git status`` lists any change (untracked files included; ignored ones not). ``(None,
    None)`` outside a checkout or without git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain")
    return commit.strip(), (None if status is None else bool(status.strip()))


def versions() -> dict[str, str]:
    """The versions that decide a run's numbers: localsgd, JAX, jaxlib, Flax, NumPy, Python."""
    import flax
    import jax
    import jaxlib
    import numpy as np

    import localsgd

    return {"localsgd": localsgd.__version__, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def platform_facts() -> dict[str, str]:
    """The JAX backend and first device, the operating system and the machine."""
    import jax

    return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "os": platform.platform(), "machine": platform.machine()}


def matching_profile(
    chapter_notebook: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None,
    named: str | None,
    root: str | os.PathLike[str],
) -> str | None:
    """The profile whose parameters for this notebook are exactly ``parameters``: ``named`` only
    when given (the pipeline's profile), else the first of ``default`` and the others by name.
    None when no profile matches, or ``parameters`` is None."""
    if parameters is None:
        return None
    profiles = available_profiles(root)
    if named:
        candidates = [named] if named in profiles else []
    else:
        candidates = sorted(profiles, key=lambda p: (p != "default", p))
    want = jsonable(parameters)
    for profile in candidates:
        if jsonable(profile_parameters(chapter_notebook, profile, root)) == want:
            return profile
    return None


def provenance(
    chapter_notebook: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None,
    runs: Sequence[str],
    root: str | os.PathLike[str],
) -> dict[str, Any]:
    """The provenance fields of a record (see the module docstring) for a run of the notebook at
    ``chapter_notebook`` in the repository ``root``."""
    named = os.environ.get(PROFILE_ENV) or None
    profile = matching_profile(chapter_notebook, parameters, named, root)
    commit, dirty = git_state(root)
    return {
        "profile": profile if profile is not None else named,
        "book": profile is not None,
        "parameters": None if parameters is None else jsonable(parameters),
        "commit": commit,
        "dirty": dirty,
        "versions": versions(),
        "platform": platform_facts(),
        "runs": list(runs),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def record_path(results: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Where ``record`` is written under the results folder: the book's
    ``verdicts/<chapter>.json``, or ``runs/<chapter>-<digest>.json`` for any other run."""
    chapter = record["chapter"]
    if record.get("book"):
        return Path(results) / BOOK_FOLDER / f"{chapter}.json"
    digest = parameters_digest(record.get("parameters"))
    return Path(results) / APART_FOLDER / f"{chapter}-{digest}.json"


def load_records(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{chapter: record}`` for every readable ``*.json`` under ``directory``; a file that is
    not a verdict record (unreadable, or without ``chapter`` and ``holds``) is skipped."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "holds" in record:
            out[str(record.get("chapter") or path.stem)] = record
    return out


def differences(
    record: Mapping[str, Any],
    commit: str | None,
    notebook: str | os.PathLike[str] | None,
    root: str | os.PathLike[str],
) -> list[str]:
    """How ``record`` differs from the build that renders it (at ``commit``, with the chapter's
    source ``notebook`` and the profiles under ``root``), in words; empty when it does not.

    Named: a record without provenance, one from another commit or from a tree with uncommitted
    changes, and parameters that are not (any more) its profile's.
    """
    if "commit" not in record:
        return ["no provenance (written before records carried it)"]
    out = []
    if record["commit"] != commit:
        had = (record["commit"] or "no commit")[:7]
        out.append(f"commit {had}, not this build's {(commit or 'none')[:7]}")
    elif record.get("dirty"):
        out.append("uncommitted changes")
    profile, params = record.get("profile"), record.get("parameters")
    if notebook is None or params is None or profile not in available_profiles(root):
        out.append("parameters of no profile")
        return out
    want = jsonable(profile_parameters(notebook, profile, root))
    changed = sorted(k for k in set(want) | set(params) if want.get(k) != params.get(k))
    if changed:
        known = notebook_parameters(notebook)
        shown = ", ".join(f"{k} = {json.dumps(params.get(k))}" for k in changed if k in known)
        out.append(f"parameters differ from profile {profile}: {shown or ', '.join(changed)}")
    return out
