"""A small Sphinx extension for the book (listed in ``_config.yml``'s ``extra_extensions``).

Jupyter Book always loads ``sphinx_thebe``, which puts an inline script declaring
``const THEBE_JS_URL`` (a network address) and ``sphinx-thebe.js`` into every page, even with
``launch_buttons.thebe: false``; in a browser that is a console error on every page. The book
runs no code in the page, so this extension unhooks sphinx_thebe's page assets.
"""

from __future__ import annotations

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


def setup(app: Any) -> dict[str, Any]:
    """Register with Sphinx (after jupyter-book's own extensions have loaded)."""
    # before the builder copies the registered stylesheets
    app.connect("config-inited", _drop_thebe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
