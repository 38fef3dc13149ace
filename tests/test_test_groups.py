"""The test suite's own grouping: under ``make test`` (pytest-xdist, ``--dist loadgroup``) every
file's tests run on one worker, so that a module fixture (a file's shared runs) is computed once,
and the notebooks' smoke runs are spread over the workers chapter by chapter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import xdist_group

TESTS = Path(__file__).resolve().parent


def test_a_files_tests_share_one_worker_and_its_module_fixture(tmp_path):
    suite = TESTS / "conftest.py"
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("suite_conftest", {str(suite)!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_itemcollected = suite.pytest_itemcollected  # the suite's own grouping
        """))
    for name in ("a", "b", "c"):
        (tmp_path / f"test_{name}.py").write_text(textwrap.dedent(f"""
            import os, time
            import pytest

            @pytest.fixture(scope="module")
            def shared():
                with open("setups.txt", "a") as f:
                    f.write("{name} " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
                return 1

            @pytest.mark.parametrize("i", range(4))
            def test_one(shared, i):
                time.sleep(0.2)
            """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                           "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    setups = (tmp_path / "setups.txt").read_text().split()
    assert sorted(setups[::2]) == ["a", "b", "c"], setups  # one setup per file, not one per worker


def test_notebook_runs_are_grouped_per_chapter():
    assert xdist_group("test_notebooks", "tests/test_notebooks.py::test_runs[04_local_gd]") == \
        "notebook-04_local_gd"
    assert xdist_group("test_kernel", "tests/test_kernel.py::test_x[a]") == "test_kernel"
