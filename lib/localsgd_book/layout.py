"""Where the book's files are: the repository root, the notebooks in the order of ``_toc.yml``,
the executed copies, the results folder and the rendered HTML, and the chapters' titles.

Every path resolves against one root (the repository, or a test's temporary folder), so that the
pipeline, the scoreboard and the kernel-side checks agree on where a chapter lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsgd.store import results_dir


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


def layout(root: str | os.PathLike[str] | None = None) -> Layout:
    """The layout under ``root`` (default: :func:`default_root`)."""
    return Layout(Path(root).resolve() if root is not None else default_root())


def safe_yaml(text: str, where: str) -> Any:
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


def toc_executed_stems(lay: Layout) -> list[str]:
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

    walk(safe_yaml(toc.read_text(), str(toc)))
    executed = lay.executed.relative_to(lay.root).as_posix() + "/"
    return [Path(f).stem for f in files if f.startswith(executed)]


def toc_notebooks_without_source(lay: Layout) -> list[str]:
    """Stems that ``_toc.yml`` lists under ``book/executed/`` with no ``notebooks/<stem>.ipynb``."""
    return [s for s in toc_executed_stems(lay) if not (lay.notebooks / f"{s}.ipynb").exists()]


def list_notebooks(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every ``notebooks/*.ipynb``: those ``_toc.yml`` lists, in its order, then the rest by
    name."""
    lay = layout(root)
    found = {p.stem: p for p in sorted(lay.notebooks.glob("*.ipynb"))}
    ordered = [found.pop(s) for s in toc_executed_stems(lay) if s in found]
    return ordered + list(found.values())


def resolve_notebook(
    name: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> Path:
    """A notebook given as a stem (``01_setting``), a file name or a path -> its path.

    Raises ValueError naming ``notebook`` and the notebooks there are.
    """
    lay = layout(root)
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


def chapter_source(chapter: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The source notebook of ``chapter`` (a stem), looked for under the working directory's
    ``notebooks/`` (where the pipeline starts every kernel), then under :func:`default_root`.

    Raises ValueError naming the chapter and the folders searched.
    """
    roots = [Path(root)] if root is not None else [Path.cwd(), default_root()]
    for r in roots:
        path = r / "notebooks" / f"{chapter}.ipynb"
        if path.is_file():
            return path.resolve()
    searched = [str(r / "notebooks") for r in roots]
    raise ValueError(f"chapter={chapter!r} has no notebook {chapter}.ipynb under {searched}")


def chapter_title(path: str | os.PathLike[str]) -> str:
    """The first Markdown heading of a notebook (its title), else its stem."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return Path(path).stem
