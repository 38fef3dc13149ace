"""What a build ran with: pinned and installed package versions, the platform, the profiles'
parameters per chapter and the recorded run times, each as a Markdown table for the
reproducibility appendix.

Every function reads files or the running interpreter only; none runs an experiment.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from localsgd_book import layout, parameters

SHOWN_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "matplotlib",
                  "papermill", "myst-nb", "jupyter-book", "sphinx")
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)")
_LITERALS = (bool, int, float, str, list, tuple, dict, type(None))


def pins(path: str | os.PathLike[str]) -> dict[str, str]:
    """name -> pinned version for every ``name==version`` line of a requirements file."""
    out = {}
    for line in Path(path).read_text().splitlines():
        hit = _PIN.match(line.split("#", 1)[0].strip())
        if hit:
            out[hit.group(1)] = hit.group(3)
    return out


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def mismatches(pinned: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    """name -> (installed, pinned) for every pin the environment does not match."""
    return {k: (installed(k), v) for k, v in pinned.items() if installed(k) != v}


def versions_table(pinned: dict[str, str], shown=SHOWN_PACKAGES) -> str:
    """Markdown table: python, the ``shown`` packages and every other pin, installed vs pinned."""
    by_norm = {_norm(k): v for k, v in pinned.items()}
    first = {_norm(s) for s in shown}
    rows = ["| package | installed | pinned | matches |", "|---|---|---|:---:|",
            f"| python | {platform.python_version()} | (the interpreter) | |"]
    for name in list(shown) + sorted(k for k in pinned if _norm(k) not in first):
        have, want = installed(name), by_norm.get(_norm(name))
        mark = "" if want is None else ("✓" if have == want else "✗")
        rows.append(f"| {name} | {have or 'not installed'} | {want or '—'} | {mark} |")
    return "\n".join(rows)


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor")) and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def platform_table(profile: str) -> str:
    """Markdown table of the JAX backend and devices, CPU, OS, Python and the build's profile."""
    import jax

    facts = {
        "JAX backend": jax.default_backend(),
        "devices": ", ".join(f"{dv.platform}:{dv.id} ({dv.device_kind})" for dv in jax.devices()),
        "CPU": cpu_model(),
        "CPU cores (os.cpu_count)": os.cpu_count(),
        "operating system": platform.platform(),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "profile that built this page": profile,
    }
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()])


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, _LITERALS) else "(not a literal)"


def _overrides(entries: dict[str, dict], stem: str, defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in (entries.get(parameters.ALL_KEY) or {}).items() if k in defaults}
    merged.update(entries.get(stem) or {})
    return merged


def profiles_tables(root: str | os.PathLike[str], current: str) -> tuple[str, list[str]]:
    """One Markdown table per notebook, under the chapter's title: each parameter's value under
    each profile, in bold where the profile sets it, plain where the notebook's default applies;
    ``current`` is marked. The tables fold into one collapsible section (a sphinx-design
    ``dropdown``), closed until the reader opens it. Returns (markdown, profile names)."""
    profiles = parameters.available_profiles(root)
    entries = {p: parameters.load_profile(p, root) for p in profiles}
    head = "| parameter | " + " | ".join(
        f"**{p}** (this build)" if p == current else p for p in profiles) + " |"
    blocks = []
    for path in layout.list_notebooks(root):
        defaults = parameters.notebook_parameters(path)
        over = {p: _overrides(entries[p], path.stem, defaults) for p in profiles}
        lines = [f"**{layout.chapter_title(path)}** (`{path.stem}`)", "", head,
                 "|---|" + "---|" * len(profiles)]
        for k in list(defaults) + sorted(set().union(*over.values()) - set(defaults)):
            cells = [f"**{_shown(over[p][k])}**" if k in over[p] else _shown(defaults.get(k))
                     for p in profiles]
            lines.append(f"| `{k}` | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    title = f"The parameters of the {len(blocks)} chapters under each profile"
    return f"````{{dropdown}} {title}\n\n" + "\n\n".join(blocks) + "\n````", profiles


def timings_table(results: str | os.PathLike[str], profile: str) -> tuple[str, float, int]:
    """Markdown table of the run time of every notebook recorded for ``profile`` under
    ``results/timings``, or a note that none is recorded. Returns (markdown, total seconds,
    number of notebooks timed)."""
    path = Path(results) / "timings" / f"{profile}.json"
    try:
        timings = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        return (f"*No run times recorded for the `{profile}` profile yet ({type(err).__name__}: "
                f"`{path}`). They appear when the book is built through the pipeline "
                "(`make book`), which writes that file after every chapter.*"), 0.0, 0
    nbs = timings.get("notebooks", {})
    rows, total = ["| chapter | seconds | finished (UTC) |", "|---|---:|---|"], 0.0
    for stem in sorted(nbs):
        sec = float(nbs[stem].get("seconds", float("nan")))
        total += sec
        rows.append(f"| {stem} | {sec:.1f} | {nbs[stem].get('finished', '')} |")
    rows.append(f"| **total** | **{total:.1f}** | |")
    machine = timings.get("machine", {})
    text = "\n".join(rows) + (f"\n\nMachine: {machine.get('platform', '?')}, "
                              f"{machine.get('cpus', '?')} CPUs, "
                              f"Python {machine.get('python', '?')}.")
    return text, total, len(nbs)
