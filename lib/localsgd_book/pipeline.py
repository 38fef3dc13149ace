"""The notebook pipeline: execute the book's notebooks with papermill, then render the book.

Command line (run from anywhere; paths resolve against the repository root)::

    python -m localsgd_book.pipeline book    [--profile default] [--warnings-as-errors] [--jobs 1]
    python -m localsgd_book.pipeline execute [--profile default] [--jobs 1] [NAME ...]
                                             [-p NAME VALUE ...]
    python -m localsgd_book.pipeline run NB  [--profile default] [-p NAME VALUE ...]
                                             [-r NAME VALUE ...]
    python -m localsgd_book.pipeline render  [--warnings-as-errors]

Profiles and parameters (what a chapter runs with, and how a bad value is refused before any
notebook runs and before anything is written) are :mod:`localsgd_book.parameters`; where the files
are, :mod:`localsgd_book.layout`. This module executes and renders.

Notebooks run with papermill on the kernel ``python3``, with the repository root as working
directory, writing ``book/executed/<stem>.ipynb``. The kernel sees two environment variables:
``LOCALSGD_RESULTS`` (an absolute path, ``<root>/results`` unless already set) and
``LOCALSGD_PROFILE``. Run times go to ``$LOCALSGD_RESULTS/timings/<profile>.json``; the figure
records of a chapter (``$LOCALSGD_RESULTS/figures/<stem>/``) are emptied before it runs.
Notebooks run in the order of ``_toc.yml`` (any not listed there follow, by name). Each executed
notebook is then tidied for reading (:mod:`localsgd_book.tidy`: the parameters shown once).

Rendering empties ``book/_build/html`` first, writes the intro's scoreboard from the verdict
records (:mod:`localsgd_book.scoreboard`), runs jupyter-book, and keeps of the bundled MathJax
only what the pages load (:mod:`localsgd_book.sitefiles`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsgd.store import write_json_atomic

from . import cores, records, scoreboard, sitefiles, tidy
from .layout import (
    layout,
    list_notebooks,
    resolve_notebook,
    toc_executed_stems,
    toc_notebooks_without_source,
)
from .parameters import ALL_KEY, load_profile, parse_params, resolve_parameters

KERNEL_NAME = "python3"


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; the message names the notebook and the cell."""

    def __init__(self, notebook: str, message: str):
        super().__init__(message)
        self.notebook = notebook

    def __reduce__(self):  # raised in a worker process of execute(jobs > 1), re-raised here
        return type(self), (self.notebook, str(self))


# --------------------------------------------------------------------------------------------
# execution


@dataclass(frozen=True)
class Executed:
    """One executed notebook."""

    name: str
    output: Path
    seconds: float
    parameters: dict[str, Any]


def _timings(results: Path, profile: str) -> dict:
    """The run times recorded under ``profile`` (``{"notebooks": {stem: {"seconds", ...}},
    ...}``), or an empty record where there is none or it is unreadable."""
    try:
        data = json.loads((results / "timings" / f"{profile}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"notebooks": {}}
    if not isinstance(data, dict) or not isinstance(data.get("notebooks"), dict):
        return {"notebooks": {}}
    return data


def _record_timing(results: Path, profile: str, item: Executed) -> None:
    path = results / "timings" / f"{profile}.json"
    data = _timings(results, profile)
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
    jobs: int = 1,
) -> list[Executed]:
    """Execute notebooks with papermill under a profile.

    ``names`` (stems or paths) default to every notebook (:func:`list_notebooks`). Parameters are
    the profile's ``_all`` + the notebook's entry + ``extra_params``, all validated (see
    :func:`resolve_parameters`) for every selected notebook before the first one runs.
    Outputs go to ``output_dir`` (default ``book/executed``) as ``<stem>.ipynb``.

    ``jobs``: how many notebooks run at once, each in its own kernel, on a share of the cores of
    its own (:mod:`localsgd_book.cores`: kernels whose thread pools span every core slow each
    other more than they gain). They start longest first, by the last recorded run times of the
    profile, else by those the repository carries (``notebooks/profiles/run_times.json``, see
    :func:`_expected_seconds`), else in table-of-contents order, and the last notebook starts
    only when every other has finished: the book's last appendix reports their run times.

    Raises ValueError for a bad profile, notebook name or parameter, and NotebookFailed,
    naming the notebook and the cell, when a notebook raises; notebooks after it do not run
    (with ``jobs > 1``: none starts after it, those running finish).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    lay = layout(root)
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
        # JAX's persistent compilation cache: a rebuilt book skips recompiling unchanged programs,
        # and the chapters share the programs they have in common. Every program goes in, however
        # fast it compiles: the chapters' programs are many and small (0.1-0.2 s each), and JAX's
        # default (1 s) would leave almost all of them out.
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", str(Path(results).resolve() / "jax-cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
    }
    one = _OneNotebook(env, out_dir, lay.root, timeout, profile,
                       *tidy.repository(lay.root / "_config.yml"))
    if jobs == 1 or len(plan) == 1:
        with _environ(**env):
            for i, (path, params) in enumerate(plan, start=1):
                say(f"[{i}/{len(plan)}] {path.stem} ... ", end="")
                item = one(path, params, say)
                _record_timing(results, profile, item)
                done.append(item)
        return done
    expected = _expected_seconds(lay.profiles / "run_times.json", results, profile)
    return _execute_at_once(plan, one, jobs, say, results, profile, expected)


def _silent(msg: str, end: str = "\n") -> None:
    """The progress lines of a notebook run in a worker: the parent reports it."""


@dataclass(frozen=True)
class _OneNotebook:
    """Executes one notebook of a plan and tidies it, in this process or in a worker."""

    env: dict[str, str]
    out_dir: Path
    root: Path
    timeout: float | None
    profile: str
    repo_url: str
    branch: str

    def __call__(self, path: Path, params: dict[str, Any], say: Any = _silent) -> Executed:
        os.environ.update(self.env)
        os.environ["LOCALSGD_NOTEBOOK"] = path.stem
        # the chapter's figure records describe its last run only
        shutil.rmtree(Path(self.env["LOCALSGD_RESULTS"]) / "figures" / path.stem,
                      ignore_errors=True)
        item = _execute_one(path, params, self.out_dir, self.root, self.timeout, say)
        tidy.tidy_executed(item.output, self.profile, self.repo_url, self.branch)
        return item


def _execute_at_once(plan, one: _OneNotebook, jobs: int, say, results: Path, profile: str,
                     seconds: Mapping[str, float]) -> list[Executed]:
    """:func:`execute`'s plan, ``jobs`` notebooks at a time in worker processes, the longest by
    ``seconds`` (:func:`_expected_seconds`) first, the last one after all others."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    first = sorted(plan[:-1], key=lambda item: -seconds.get(item[0].stem, float("inf")))
    done: dict[str, Executed] = {}
    context = multiprocessing.get_context("spawn")
    free = context.Queue()  # every worker takes a share of the cores of its own
    shares = cores.shares(jobs)
    for share in shares:
        free.put(share)
    with ProcessPoolExecutor(jobs, mp_context=context,
                             initializer=_take_share if shares else None,
                             initargs=(free,) if shares else ()) as pool:
        for group in (first, plan[-1:]):
            running = {pool.submit(one, path, params): path for path, params in group}
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    path = running.pop(future)
                    label = f"[{len(done) + 1}/{len(plan)}] {path.stem} ... "
                    try:
                        item = future.result()
                    except BaseException:
                        say(label + "FAILED")
                        for other in running:
                            other.cancel()
                        raise
                    say(label + f"ok ({item.seconds:.1f} s)")
                    _record_timing(results, profile, item)
                    done[path.stem] = item
    return [done[path.stem] for path, _ in plan]


def _take_share(free) -> None:
    """A worker's start: it and the kernels it starts run on a share of the cores taken from
    the queue ``free`` (:func:`localsgd_book.cores.pin`), one share for every worker."""
    import queue

    with contextlib.suppress(queue.Empty):
        cores.pin(free.get(timeout=1))


def _expected_seconds(carried: Path, results: Path, profile: str) -> dict[str, float]:
    """Every notebook's expected run time under ``profile``, which decides the order in which
    ``--jobs`` starts them (the longest first, so that no worker waits alone on a long chapter
    at the end): its last recorded run time, else the one the repository carries in
    ``carried`` (``{profile: {stem: seconds}}``, run times of a fresh clone's build, for a
    fresh clone, which has none of its own; only their order matters)."""
    out = {}
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
        out = {str(k): float(v) for k, v in json.loads(carried.read_text())[profile].items()}
    return {**out, **_recorded_seconds(results, profile)}


def _recorded_seconds(results: Path, profile: str) -> dict[str, float]:
    """The last recorded run time of every notebook under ``profile`` that has one."""
    out = {}
    for stem, entry in _timings(results, profile)["notebooks"].items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[stem] = float(entry["seconds"])
    return out


def _kernel_sockets(directory: str):
    """The kernel's connection as files in ``directory`` (ZeroMQ's ``ipc`` transport), not TCP
    ports: kernels started at the same moment by ``--jobs`` workers pick their TCP ports
    independently and can pick the same one (a heartbeat that cannot bind, replies on another
    kernel's socket); a directory of a notebook's own cannot be shared."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(directory) / "kernel")}})


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
        with tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
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
                config=_kernel_sockets(sockets),
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
    lay = layout(root)
    orphans = toc_notebooks_without_source(lay)
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
        lay.scoreboard, toc_executed_stems(lay), lay.results / records.BOOK_FOLDER, lay.root)
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
    jobs: int = 1,
) -> list[Executed]:
    """Execute every notebook under ``profile`` (``jobs`` at a time, see :func:`execute`), then
    render the book (see :func:`render`)."""
    done = execute(profile, None, extra_params, root=root, jobs=jobs)
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

    def add_jobs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--jobs", type=int, default=1,
                       help="notebooks executed at once (default 1; see execute())")

    p_book = sub.add_parser("book", help="execute every notebook, then render the book")
    add_profile(p_book)
    add_w(p_book)
    add_jobs(p_book)
    _add_param_flags(p_book)

    p_exec = sub.add_parser("execute", help="execute notebooks (default: all) without rendering")
    add_profile(p_exec)
    add_jobs(p_exec)
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
            book(args.profile, args.warnings_as_errors, extra_params=extra, root=root,
                 jobs=args.jobs)
        elif args.command == "execute":
            execute(args.profile, args.names or None, extra, root=root, jobs=args.jobs)
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
