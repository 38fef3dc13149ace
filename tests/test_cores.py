"""Sharing the cores among processes that run at once (localsgd_book.cores)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from localsgd_book import cores


@pytest.mark.parametrize(("parts", "have", "want"), [
    (1, (0, 1), [(0, 1)]),
    (2, (0, 1), [(0,), (1,)]),
    (2, (0, 1, 2, 3, 4), [(0, 1), (2, 3, 4)]),
    (3, (4, 5, 6, 7, 8, 9), [(4, 5), (6, 7), (8, 9)]),
    (3, (0, 1), [(0,), (1,), (0,)]),  # more parts than cores: they take turns
    (2, (), []),
])
def test_shares_split_the_cores_into_disjoint_consecutive_parts(parts, have, want):
    assert cores.shares(parts, have) == want


@pytest.mark.parametrize("parts", [0, -1, 1.5, True, "2"])
def test_shares_refuse_a_bad_count_naming_it(parts):
    with pytest.raises(ValueError, match="parts"):
        cores.shares(parts, (0, 1))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_pin_holds_for_the_process_and_what_it_starts():
    mine = cores.available()
    code = ("import os, subprocess, sys\n"
            "from localsgd_book import cores\n"
            f"cores.pin({mine[-1:]!r})\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted("
            "os.sched_getaffinity(0)), os.environ[\"OPENBLAS_NUM_THREADS\"])'], "
            "capture_output=True, text=True, check=True).stdout.strip()\n"
            "print(child)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"[{mine[-1]}] 1"
    assert cores.available() == mine  # the test's own process is untouched


def test_pin_of_no_share_does_nothing(monkeypatch):
    for name in cores.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = cores.available()
    cores.pin(())
    assert cores.available() == before
    assert not any(name in os.environ for name in cores.THREAD_VARIABLES)
