"""What the pipeline does to an executed notebook before the book renders it.

* The parameters appear once: papermill's injected-parameters cell is tagged ``remove-cell``,
  and its assignments are appended, under a comment naming the profile, to the notebook's own
  ``parameters`` cell, which is tagged ``hide-input`` (a "show code" toggle). The code that ran
  is unchanged; only what the reader sees is.
* With a public repository (``repository.url`` in ``_config.yml``, a GitHub address), a link
  under the chapter's title opens the source notebook in Colab. Without one nothing is added,
  and the book makes no link to a repository that does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
MERGED_MARK = "# this build's values"
LAUNCH_MARK = "localsgd-launch"
COLAB = "https://colab.research.google.com"


def _tags(cell) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def _add_tag(cell, tag: str) -> None:
    tags = _tags(cell)
    if tag not in tags:
        tags.append(tag)


def _assignments(source: str) -> list[str]:
    """The injected cell's lines without papermill's ``# Parameters`` heading."""
    return [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def merge_parameters(nb, profile: str | None) -> None:
    """Show the parameters once (see the module docstring); idempotent."""
    params = [c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    injected = [c for c in nb.cells if INJECTED_TAG in c.get("metadata", {}).get("tags", [])]
    for cell in injected:
        _add_tag(cell, "remove-cell")
    if not params:
        return
    target = params[0]
    _add_tag(target, "hide-input")
    lines = [ln for c in injected for ln in _assignments(c.source)]
    if lines and MERGED_MARK not in target.source:
        where = f" (profile {profile})" if profile else ""
        target.source = target.source.rstrip("\n") + f"\n\n{MERGED_MARK}{where}:\n" + "\n".join(
            lines
        )


def colab_url(repository_url: str, stem: str, branch: str = "main") -> str | None:
    """Colab's address for ``notebooks/<stem>.ipynb`` in a GitHub repository, else None."""
    url = (repository_url or "").strip().rstrip("/")
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        return None
    parts = url[len(prefix):].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    owner, repo = parts
    return f"{COLAB}/github/{owner}/{repo}/blob/{branch or 'main'}/notebooks/{stem}.ipynb"


def add_launch_link(nb, stem: str, repository_url: str, branch: str = "main") -> None:
    """Put an "Open in Colab" link under the title when the repository is public; idempotent."""
    url = colab_url(repository_url, stem, branch)
    if url is None or any(c.get("metadata", {}).get(LAUNCH_MARK) for c in nb.cells):
        return
    import nbformat

    cell = nbformat.v4.new_markdown_cell(
        f"[Open this chapter in Colab]({url}) (the notebook from `notebooks/{stem}.ipynb`)",
        metadata={LAUNCH_MARK: True},
    )
    first_md = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    nb.cells.insert(first_md + 1, cell)


def repository(config_path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(url, branch)`` of ``repository`` in ``_config.yml``; ``("", "main")`` when unset."""
    import yaml

    path = Path(config_path)
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    repo = (data or {}).get("repository") or {}
    return str(repo.get("url") or ""), str(repo.get("branch") or "main")


def tidy_executed(
    path: str | os.PathLike[str],
    profile: str | None = None,
    repository_url: str = "",
    branch: str = "main",
) -> None:
    """Apply the above to the executed notebook at ``path``, in place."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    merge_parameters(nb, profile)
    add_launch_link(nb, Path(path).stem, repository_url, branch)
    nbformat.write(nb, str(path))
