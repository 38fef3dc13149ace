"""The notebook pipeline: execute the book's notebooks with papermill, then render the book.

Command line (run from anywhere; paths resolve against the repository root)::

    python -m localsgd_book.pipeline book    [--profile default] [--warnings-as-errors]
    python -m localsgd_book.pipeline execute [--profile default] [NAME ...] [-p NAME VALUE ...]
    python -m localsgd_book.pipeline run NB  [--profile default] [-p NAME VALUE ...]
                                             [-r NAME VALUE ...]
    python -m localsgd_book.pipeline render  [--warnings-as-errors]

Profiles are YAML files ``notebooks/profiles/<profile>.yaml``: a mapping from notebook stem to a
mapping of papermill parameters, plus an optional ``_all`` mapping whose entries go to every
notebook whose ``parameters`` cell defines them. For one notebook the parameters are, later
winning: ``_all``, then the notebook's own entry, then the command line.

Every parameter is checked against the notebook's ``parameters``-tagged cell before anything
runs: it must be a name that cell assigns, with a value of the type of the default there (an
int is accepted, and converted, where the default is a float; a float must be finite). A bad
name, value or profile is a ``ValueError`` that names it (and, for YAML that does not parse or
uses a ``!!python`` tag, the flag or file and the line), raised before any notebook runs and
before anything is written.

Notebooks run with papermill on the kernel ``python3``, with the repository root as working
directory, writing ``book/executed/<stem>.ipynb``. The kernel sees two environment variables:
``LOCALSGD_RESULTS`` (an absolute path, ``<root>/results`` unless already set) and
``LOCALSGD_PROFILE``. Run times go to ``$LOCALSGD_RESULTS/timings/<profile>.json``.
Notebooks run in the order of ``_toc.yml`` (any not listed there follow, by name). Each executed
notebook is then tidied for reading (:mod:`localsgd_book.tidy`: the parameters shown once).

Rendering empties ``book/_build/html`` first, writes the intro's scoreboard from the verdict
records (:mod:`localsgd_book.scoreboard`), runs jupyter-book, and keeps of the bundled MathJax
only what the pages load (:mod:`localsgd_book.sitefiles`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsgd.store import results_dir, write_json_atomic

from . import scoreboard, sitefiles, tidy

KERNEL_NAME = "python3"
PARAMETERS_TAG = "parameters"
ALL_KEY = "_all"


def default_root() -> Path:
    """The repository root: the folder holding ``_config.yml`` above this file, else the cwd."""
    here = Path(__file__).resolve().parents[2]
    if (here / "_config.yml").exists() and (here / "notebooks").is_dir():
        return here
    return Path.cwd()


@dataclass(frozen=True)
class Layout:
    """Where the pipeline reads and writes, all under one root (the repository, or a test's
    temporary folder)."""

    root: Path

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def profiles(self) -> Path:
        return self.notebooks / "profiles"

    @property
    def executed(self) -> Path:
        return self.root / "book" / "executed"

    @property
    def results(self) -> Path:
        return results_dir(self.root).resolve()

    @property
    def html(self) -> Path:
        return self.root / "book" / "_build" / "html"

    @property
    def scoreboard(self) -> Path:
        return self.root / "book" / "_generated" / "scoreboard.md"


def _layout(root: str | os.PathLike[str] | None) -> Layout:
    return Layout(Path(root).resolve() if root is not None else default_root())


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; the message names the notebook and the cell."""

    def __init__(self, notebook: str, message: str):
        super().__init__(message)
        self.notebook = notebook


# --------------------------------------------------------------------------------------------
# profiles and notebooks


def available_profiles(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the profiles present under ``notebooks/profiles/`` (sorted)."""
    lay = _layout(root)
    return sorted(p.stem for p in lay.profiles.glob("*.yaml"))


def load_profile(profile: str, root: str | os.PathLike[str] | None = None) -> dict[str, dict]:
    """Read ``notebooks/profiles/<profile>.yaml`` as ``{stem: {param: value}}``.

    Raises ValueError naming ``profile`` when there is no such profile or its file is not a
    mapping of mappings.
    """
    lay = _layout(root)
    allowed = available_profiles(lay.root)
    if not isinstance(profile, str) or profile not in allowed:
        raise ValueError(f"profile={profile!r} is not a known profile; allowed: {allowed}")

    path = lay.profiles / f"{profile}.yaml"
    data = _safe_yaml(path.read_text(), f"profile={profile!r}: {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"profile={profile!r}: {path} must hold a mapping, not {type(data).__name__}"
        )
    out: dict[str, dict] = {}
    for key, value in data.items():
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ValueError(
                f"profile={profile!r}: entry {key!r} in {path} must be a mapping of parameters, "
                f"not {value!r}"
            )
        out[str(key)] = dict(value)
    return out


def list_notebooks(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every ``notebooks/*.ipynb``: those ``_toc.yml`` lists, in its order, then the rest by
    name."""
    lay = _layout(root)
    found = {p.stem: p for p in sorted(lay.notebooks.glob("*.ipynb"))}
    ordered = [found.pop(s) for s in _toc_executed_stems(lay) if s in found]
    return ordered + list(found.values())


def _safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; malformed YAML, or a tag such as ``!!python/object``, is a
    ValueError naming ``where`` and the line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}{line}: not valid YAML for a parameter: {problem}") from None


def resolve_notebook(
    name: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> Path:
    """A notebook given as a stem (``01_setting``), a file name or a path -> its path.

    Raises ValueError naming ``notebook`` and the notebooks there are.
    """
    lay = _layout(root)
    text = str(name)
    candidates = [Path(text)]
    stem = Path(text).name
    if stem.endswith(".ipynb"):
        stem = stem[: -len(".ipynb")]
    candidates.append(lay.notebooks / f"{stem}.ipynb")
    for c in candidates:
        if c.suffix == ".ipynb" and c.is_file():
            return c.resolve()
    allowed = [p.stem for p in list_notebooks(lay.root)]
    raise ValueError(f"notebook={text!r} does not exist; allowed: {allowed}")


# --------------------------------------------------------------------------------------------
# the parameters cell


_UNKNOWN = object()


def notebook_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The defaults that a notebook's ``parameters``-tagged cell assigns: ``{name: value}``.

    Values that are not Python literals (``n = 2 ** 5`` is, ``n = np.arange(3)`` is not) map to
    a sentinel that accepts any value. Raises ValueError when the notebook has no such cell.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return _parse_parameters_source(cell.source, str(path))
    raise ValueError(f"notebook {path} has no code cell tagged {PARAMETERS_TAG!r}")


def _parse_parameters_source(source: str, where: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"the parameters cell of {where} does not parse: {exc}") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = _UNKNOWN
        for target in targets:
            if isinstance(target, ast.Name):
                out[target.id] = default
    return out


def _type_name(value: Any) -> str:
    return type(value).__name__


def coerce_parameter(name: str, value: Any, default: Any, notebook: str = "") -> Any:
    """Check ``value`` against the type of ``default``; return it, an int widened to float
    where the default is a float, and a list as a tuple where the default is a tuple.

    Raises ValueError naming the parameter, the value and the expected type.
    """
    if default is _UNKNOWN or default is None:
        return value
    where = f" (notebook {notebook})" if notebook else ""
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(
                    f"parameter {name}{where}: the integer {str(value)[:12]}... "
                    f"({len(str(abs(value)))} digits) does not fit a float"
                ) from None
        ok = isinstance(value, float)
        if ok and not math.isfinite(value):
            raise ValueError(
                f"parameter {name}={value!r}{where} must be a finite number; nan and inf are "
                f"not allowed (the default there is {default!r})"
            )
    elif isinstance(default, tuple | list):
        if isinstance(value, tuple | list):
            return expected(value)
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(
            f"parameter {name}={value!r}{where} has type {_type_name(value)}; expected "
            f"{expected.__name__} (the default there is {default!r})"
        )
    return value


def resolve_parameters(
    notebook: str | os.PathLike[str],
    profile_entries: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The validated papermill parameters for one notebook: ``_all`` (only the names the
    notebook defines), then its own profile entry, then ``extra``; later entries win.

    Raises ValueError for a name the notebook's parameters cell does not define or a value of
    the wrong type.
    """
    path = Path(notebook)
    stem = path.stem
    defaults = notebook_parameters(path)
    merged: dict[str, Any] = {}
    for key, value in (profile_entries.get(ALL_KEY) or {}).items():
        if key in defaults:
            merged[key] = value
    for source, params in (
        ("profile", profile_entries.get(stem) or {}),
        ("command line", extra or {}),
    ):
        for key, value in params.items():
            if key not in defaults:
                raise ValueError(
                    f"parameter {key}={value!r} (from the {source}) is not defined in the "
                    f"parameters cell of notebook {stem}; allowed: {sorted(defaults)}"
                )
            merged[key] = value
    return {k: coerce_parameter(k, v, defaults[k], stem) for k, v in merged.items()}


# --------------------------------------------------------------------------------------------
# PARAMS in papermill's style


def resolve_value(text: str) -> Any:
    """A command-line value, as papermill's ``-p`` reads it: True/False/None, an int, a float,
    else the string. YAML's lower-case true/false/null and flow lists/mappings (``[1, 2]``)
    are read as YAML too.
    """
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if text in ("None", "null", "~"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in ("[", "{"):
        return _safe_yaml(text, f"value {text!r}")
    return text


def parse_params(tokens: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse papermill-style parameter flags, as ``make run PARAMS="..."`` passes them.

    ``-p NAME VALUE`` (typed, see :func:`resolve_value`), ``-r NAME VALUE`` (raw string) and
    ``-y YAML`` (a YAML mapping); the long forms ``--parameters``, ``--parameters_raw`` and
    ``--parameters_yaml`` too. A string is split as a shell would. Later flags win.
    """
    if tokens is None:
        return {}
    items = shlex.split(tokens) if isinstance(tokens, str) else list(tokens)
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        flag = items[i]
        if flag in ("-p", "--parameters", "-r", "--parameters_raw"):
            if i + 2 >= len(items):
                raise ValueError(f"PARAMS: {flag} needs NAME VALUE, got {items[i + 1 :]!r}")
            name, value = items[i + 1], items[i + 2]
            if not name.isidentifier():
                raise ValueError(f"PARAMS: parameter name {name!r} is not a Python identifier")
            out[name] = value if flag in ("-r", "--parameters_raw") else resolve_value(value)
            i += 3
        elif flag in ("-y", "--parameters_yaml"):
            if i + 1 >= len(items):
                raise ValueError(f"PARAMS: {flag} needs a YAML mapping")
            data = _safe_yaml(items[i + 1], f"PARAMS: {flag} {items[i + 1]!r}")
            if not isinstance(data, dict):
                raise ValueError(f"PARAMS: {flag} {items[i + 1]!r} is not a YAML mapping")
            out.update(data)
            i += 2
        else:
            raise ValueError(
                f"PARAMS: unexpected {flag!r}; use -p NAME VALUE, -r NAME VALUE or -y YAML"
            )
    return out


# --------------------------------------------------------------------------------------------
# execution


@dataclass(frozen=True)
class Executed:
    """One executed notebook."""

    name: str
    output: Path
    seconds: float
    parameters: dict[str, Any]


def _record_timing(results: Path, profile: str, item: Executed) -> None:
    path = results / "timings" / f"{profile}.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("notebooks"), dict):
            data = {}
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("notebooks", {})
    data["profile"] = profile
    data["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    data["notebooks"][item.name] = {
        "seconds": round(item.seconds, 3),
        "parameters": item.parameters,
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, data)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the kernels this process starts, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_interpreter() -> str:
    """The interpreter that the ``python3`` kernel resolves to from this process.

    jupyter_client replaces a bare ``python`` in a kernel spec by ``sys.executable``, and the
    spec in this virtual environment's ``share/jupyter/kernels`` wins over a user's one when
    ``JUPYTER_PREFER_ENV_PATH`` is set (the pipeline sets it).
    """
    with _environ(JUPYTER_PREFER_ENV_PATH="1"):
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    exe = spec.argv[0]
    if exe in {
        "python",
        f"python{sys.version_info[0]}",
        "python{}.{}".format(*sys.version_info[:2]),
    }:
        return sys.executable
    return exe


def execute(
    profile: str,
    names: Sequence[str | os.PathLike[str]] | None = None,
    extra_params: Mapping[str, Any] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    log: Any = None,
) -> list[Executed]:
    """Execute notebooks with papermill under a profile.

    ``names`` (stems or paths) default to every notebook (:func:`list_notebooks`). Parameters are
    the profile's ``_all`` + the notebook's entry + ``extra_params``, all validated (see
    :func:`resolve_parameters`) for every selected notebook before the first one runs.
    Outputs go to ``output_dir`` (default ``book/executed``) as ``<stem>.ipynb``.

    Raises ValueError for a bad profile, notebook name or parameter, and NotebookFailed,
    naming the notebook and the cell, when a notebook raises; notebooks after it do not run.
    """
    lay = _layout(root)
    entries = load_profile(profile, lay.root)
    paths = (
        [resolve_notebook(n, lay.root) for n in names]
        if names is not None
        else list_notebooks(lay.root)
    )
    plan = [(p, resolve_parameters(p, entries, extra_params)) for p in paths]
    out_dir = Path(output_dir).resolve() if output_dir is not None else lay.executed
    results = lay.results
    say = log if log is not None else (lambda msg, end="\n": print(msg, end=end, flush=True))

    unused = sorted(
        k for k in entries if k != ALL_KEY and k not in {p.stem for p in list_notebooks(lay.root)}
    )
    if unused:
        print(
            f"warning: profile {profile!r} has entries for missing notebooks: {unused}",
            file=sys.stderr,
        )
    if not plan:
        say(f"no notebooks to execute under {lay.notebooks}")
        return []

    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Executed] = []
    env = {
        "LOCALSGD_RESULTS": str(results),
        "LOCALSGD_PROFILE": profile,
        "LOCALSGD_NOTEBOOK": "",
        "JUPYTER_PREFER_ENV_PATH": "1",
        # JAX's persistent compilation cache: a rebuilt book skips recompiling unchanged programs.
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", str(Path(results).resolve() / "jax-cache")),
    }
    repo_url, branch = tidy.repository(lay.root / "_config.yml")
    with _environ(**env):
        for i, (path, params) in enumerate(plan, start=1):
            say(f"[{i}/{len(plan)}] {path.stem} ... ", end="")
            os.environ["LOCALSGD_NOTEBOOK"] = path.stem  # restored by _environ on exit
            item = _execute_one(path, params, out_dir, lay.root, timeout, say)
            tidy.tidy_executed(item.output, profile, repo_url, branch)
            _record_timing(results, profile, item)
            done.append(item)
    return done


def _execute_one(
    path: Path, params: dict[str, Any], out_dir: Path, root: Path, timeout: float | None, say: Any
) -> Executed:
    """Run one notebook with papermill into ``out_dir/<stem>.ipynb``; NotebookFailed names the
    cell that raised."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = out_dir / f"{path.stem}.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            str(output),
            parameters=params,
            kernel_name=KERNEL_NAME,
            cwd=str(root),
            progress_bar=False,
            execution_timeout=timeout,
            # keep the kernel process's own start-up chatter off the progress lines
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as exc:
        say(f"FAILED ({time.perf_counter() - start:.1f} s)")
        message = (
            f"notebook {path.stem} failed in cell {exc.cell_index} "
            f"(In [{exc.exec_count}]): {exc.ename}: {exc.evalue}\n"
            f"the executed notebook with the traceback is {output}"
        )
        raise NotebookFailed(path.stem, message) from exc
    except BaseException:
        say("FAILED")
        raise
    seconds = time.perf_counter() - start
    say(f"ok ({seconds:.1f} s)")
    return Executed(path.stem, output, seconds, params)


def run(
    name: str | os.PathLike[str],
    profile: str = "default",
    params: Mapping[str, Any] | str | Sequence[str] | None = None,
    **kwargs: Any,
) -> Executed:
    """Execute one notebook (a stem or a path) under ``profile`` with extra parameters, given as
    a mapping or as papermill-style flags (``"-p width 4096 -p tau 20"``)."""
    extra = params if isinstance(params, Mapping) else parse_params(params)
    return execute(profile, [name], extra, **kwargs)[0]


def _jupyter_book_command() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise RuntimeError("jupyter-book is not installed next to this interpreter nor on PATH")


def _toc_executed_stems(lay: Layout) -> list[str]:
    """Stems of the executed notebooks that ``_toc.yml`` lists (``book/executed/<stem>``), in
    its order; empty without a ``_toc.yml``."""
    toc = lay.root / "_toc.yml"
    if not toc.exists():
        return []
    files: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and isinstance(value, str):
                    files.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(_safe_yaml(toc.read_text(), str(toc)))
    executed = lay.executed.relative_to(lay.root).as_posix() + "/"
    return [Path(f).stem for f in files if f.startswith(executed)]


def _toc_notebooks_without_source(lay: Layout) -> list[str]:
    """Stems that ``_toc.yml`` lists under ``book/executed/`` with no ``notebooks/<stem>.ipynb``."""
    return [s for s in _toc_executed_stems(lay) if not (lay.notebooks / f"{s}.ipynb").exists()]


def render(
    warnings_as_errors: bool = False,
    *,
    root: str | os.PathLike[str] | None = None,
    rebuild_all: bool | None = None,
) -> None:
    """Render the book with ``jupyter-book build . --path-output book`` (HTML in
    ``book/_build/html``). With ``warnings_as_errors`` Sphinx runs with ``-W -n --keep-going``
    and every page is rebuilt, so that no warning hides in a cached page.

    Before the build the HTML folder is emptied and the intro's scoreboard is written from
    ``$LOCALSGD_RESULTS/verdicts``; after it the bundled MathJax keeps only what pages load.
    Raises ValueError when a notebook has not been executed yet, RuntimeError when the build
    fails.
    """
    lay = _layout(root)
    orphans = _toc_notebooks_without_source(lay)
    if orphans:
        raise ValueError(
            f"_toc.yml lists executed notebooks {orphans} but notebooks/ has no such .ipynb; "
            "add the notebook or remove the entry"
        )
    missing = [
        p.stem for p in list_notebooks(lay.root) if not (lay.executed / f"{p.stem}.ipynb").exists()
    ]
    if missing:
        raise ValueError(
            f"notebooks {missing} have no executed copy in {lay.executed}; run "
            "`python -m localsgd_book.pipeline execute` (or `make book`) first"
        )
    scoreboard.write_scoreboard(
        lay.scoreboard, _toc_executed_stems(lay), lay.results / "verdicts")
    sitefiles.clean_html(lay.html)
    cmd = [
        *_jupyter_book_command(),
        "build",
        str(lay.root),
        "--path-output",
        str(lay.root / "book"),
    ]
    if warnings_as_errors:
        cmd += ["-W", "-n", "--keep-going"]
    if rebuild_all or (rebuild_all is None and warnings_as_errors):
        cmd += ["--all"]
    print("$ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=lay.root)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed with exit code {proc.returncode}")
    freed = sitefiles.prune_mathjax(lay.html)
    print(
        f"HTML: {sitefiles.folder_bytes(lay.html) / 2**20:.1f} MiB in {lay.html} "
        f"(unused MathJax files removed: {freed / 2**20:.1f} MiB)",
        flush=True,
    )


def book(
    profile: str = "default",
    warnings_as_errors: bool = False,
    *,
    root: str | os.PathLike[str] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> list[Executed]:
    """Execute every notebook under ``profile``, then render the book (see :func:`render`)."""
    done = execute(profile, None, extra_params, root=root)
    render(warnings_as_errors, root=root)
    return done


# --------------------------------------------------------------------------------------------
# command line


class _ParamFlag(argparse.Action):
    """Collect -p/-r/-y flags in order, as tokens for :func:`parse_params`."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        tokens = list(getattr(namespace, self.dest, None) or [])
        tokens += [option_string, *values]
        setattr(namespace, self.dest, tokens)


def _add_param_flags(p: argparse.ArgumentParser) -> None:
    kw = {"dest": "param_tokens", "action": _ParamFlag, "default": []}
    p.add_argument(
        "-p",
        "--parameters",
        nargs=2,
        metavar=("NAME", "VALUE"),
        **kw,
        help="a parameter, typed as papermill's -p does (repeatable)",
    )
    p.add_argument(
        "-r",
        "--parameters_raw",
        nargs=2,
        metavar=("NAME", "VALUE"),
        **kw,
        help="a parameter read as a raw string (repeatable)",
    )
    p.add_argument(
        "-y",
        "--parameters_yaml",
        nargs=1,
        metavar="YAML",
        **kw,
        help="parameters as a YAML mapping (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localsgd_book.pipeline",
        description="Execute the book's notebooks with papermill and render the book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_profile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile", default="default", help="profile name (notebooks/profiles/NAME.yaml)"
        )

    def add_w(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-W",
            "--warnings-as-errors",
            action="store_true",
            help="render with Sphinx's -W -n --keep-going",
        )

    p_book = sub.add_parser("book", help="execute every notebook, then render the book")
    add_profile(p_book)
    add_w(p_book)
    _add_param_flags(p_book)

    p_exec = sub.add_parser("execute", help="execute notebooks (default: all) without rendering")
    add_profile(p_exec)
    p_exec.add_argument("names", nargs="*", help="notebook stems or paths (default: all)")
    _add_param_flags(p_exec)

    p_run = sub.add_parser("run", help="execute one notebook with extra parameters")
    p_run.add_argument("notebook", help="notebook stem (01_setting) or path")
    add_profile(p_run)
    _add_param_flags(p_run)

    p_render = sub.add_parser("render", help="render the book from the executed notebooks")
    add_w(p_render)
    for p in (p_book, p_exec, p_run, p_render):
        p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m localsgd_book.pipeline``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        extra = parse_params(getattr(args, "param_tokens", None) or [])
        root = args.root
        if args.command == "book":
            book(args.profile, args.warnings_as_errors, extra_params=extra, root=root)
        elif args.command == "execute":
            execute(args.profile, args.names or None, extra, root=root)
        elif args.command == "run":
            run(args.notebook, args.profile, extra, root=root)
        elif args.command == "render":
            render(args.warnings_as_errors, root=root)
    except (ValueError, NotebookFailed, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
