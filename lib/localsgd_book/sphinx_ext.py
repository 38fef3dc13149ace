"""A small Sphinx extension for the book (listed in ``_config.yml``'s ``extra_extensions``).

* Jupyter Book always loads ``sphinx_thebe``, which puts an inline script declaring
  ``const THEBE_JS_URL`` (a network address) and ``sphinx-thebe.js`` into every page, even with
  ``launch_buttons.thebe: false``; in a browser that is a console error on every page. The book
  runs no code in the page, so this extension unhooks sphinx_thebe's page assets.
* sphinx-proof's index of definitions, theorems and algorithms (``prf-prf.html``) lists each
  statement by its internal label and file path. This extension replaces that index by one
  that names each statement as the page does, "Definition 11 (Partitions and label skew)",
  grouped by kind and in order of number, with the chapter's title beside it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

THEBE_MODULE = "sphinx_thebe"
THEBE_CSS = "sphinx-thebe.css"


def _drop_thebe(app: Any, config: Any = None) -> None:
    for event in ("env-before-read-docs", "doctree-resolved"):
        for listener in list(app.events.listeners.get(event, [])):
            if getattr(listener.handler, "__module__", "") == THEBE_MODULE:
                app.disconnect(listener.id)
    app.registry.css_files = [
        (name, attrs) for name, attrs in app.registry.css_files if name != THEBE_CSS
    ]


# --------------------------------------------------------------------------------------------
# the proof index, by name


def _proof_titles(env: Any) -> dict[str, str]:
    if not hasattr(env, "localsgd_proof_titles"):
        env.localsgd_proof_titles = {}
    return env.localsgd_proof_titles


def _collect_titles(app: Any, doctree: Any) -> None:
    """Remember the title of every labelled statement of the page just read (sphinx-proof keeps
    the label, kind and page, not the title)."""
    titles = _proof_titles(app.env)
    for node in doctree.findall(lambda n: hasattr(n, "get") and "proof" in n.get("classes", [])):
        if node.get("label"):
            title = re.sub(r"^\s*\((.*)\)\s*$", r"\1", str(node.get("title", ""))).strip()
            titles[node["label"]] = f"{app.env.docname}\0{title}"


def _purge(app: Any, env: Any, docname: str) -> None:
    titles = _proof_titles(env)
    for label in [k for k, v in titles.items() if v.split("\0", 1)[0] == docname]:
        del titles[label]


def _merge(app: Any, env: Any, docnames: Any, other: Any) -> None:
    _proof_titles(env).update(_proof_titles(other))


def _named_index_class() -> type:
    from sphinx_proof.domain import ProofIndex

    class NamedProofIndex(ProofIndex):
        """sphinx-proof's index, with each entry named "Kind N (title)"."""

        def generate(self, docnames=None):  # noqa: D102
            env = self.domain.env
            proofs = getattr(env, "proof_list", {})
            titles = _proof_titles(env)
            groups: dict[str, list] = defaultdict(list)
            for label, info in proofs.items():
                docname = info["docname"]
                if docnames and docname not in docnames:
                    continue
                number = env.toc_fignumbers.get(docname, {}).get(info["countertype"], {}).get(
                    label, ())
                kind = info["realtype"].title()
                title = titles.get(label, "").split("\0", 1)[-1]
                name = " ".join(filter(None, [kind, ".".join(map(str, number))]))
                name += f" ({title})" if title else ""
                page = env.titles[docname].astext() if docname in env.titles else docname
                groups[f"{kind}s"].append((tuple(number), (name, 0, docname, label, page, "",
                                                           "")))
            content = [(group, [entry for _, entry in sorted(items, key=lambda e: e[0])])
                       for group, items in sorted(groups.items())]
            return content, True

    return NamedProofIndex


def _use_named_index(app: Any, config: Any = None) -> None:
    """Put the named index in sphinx-proof's domain, in place of its own (same page)."""
    try:
        from sphinx_proof.domain import ProofDomain
    except ImportError:  # the book without sphinx-proof: nothing to rename
        return
    ProofDomain.indices = [_named_index_class()]


def setup(app: Any) -> dict[str, Any]:
    """Register with Sphinx (after jupyter-book's own extensions have loaded)."""
    # before the builder copies the registered stylesheets
    app.connect("config-inited", _drop_thebe)
    app.connect("config-inited", _use_named_index)
    app.connect("doctree-read", _collect_titles)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
