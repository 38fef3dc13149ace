"""Fixtures shared by the test files."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Results (cache entries, checkpoints, verdicts) in a temporary folder."""
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    return tmp_path


@pytest.fixture
def patched_engine_results(tmp_results):
    """Results in a temporary folder, and no compiled program reused across a test's boundary:
    programs traced with a monkeypatched engine (a negative control's wrong run) must not serve
    the next test, nor a correct one serve the patched run."""
    jax.clear_caches()
    yield tmp_results
    jax.clear_caches()
