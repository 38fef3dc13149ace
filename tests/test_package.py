"""The package as a Python user installs it: `pip install .` declares what `import localsgd`
needs, the pinned lock falls inside those ranges, a wheel installs into a fresh virtual
environment and imports from there, and `ACCEL=cuda` names a CUDA build of the pinned jax that
resolves.

Everything here is offline except the last test, which asks the package index whether the CUDA
plugin of the pinned jax exists for this platform and skips, with the reason, when the index
cannot be reached.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _pins() -> dict[str, str]:
    """``{distribution name (lower case): version}`` from requirements.txt."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


RUNTIME = PROJECT["dependencies"]
EXTRAS = PROJECT["optional-dependencies"]


@pytest.mark.parametrize("group", ["dependencies", "book", "test"])
def test_every_declared_range_holds_its_pin_from_the_lock(group: str) -> None:
    strings = RUNTIME if group == "dependencies" else EXTRAS[group]
    assert strings, f"pyproject.toml declares no {group}"
    pins = _pins()
    for text in strings:
        req = Requirement(text)
        name = _normal(req.name)
        assert name in pins, f"{text} ({group}) has no pin in requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.txt pins {name}=={pins[name]}, outside pyproject's {text!r}"
        )


def test_the_runtime_ranges_name_the_libraries_the_design_uses() -> None:
    names = {_normal(Requirement(s).name) for s in RUNTIME}
    expected = {"jax", "flax", "optax", "numpy", "scipy", "scikit-learn", "matplotlib", "tqdm",
                "pyyaml"}
    assert expected <= names, f"runtime dependencies lack {sorted(expected - names)}"
    for text in RUNTIME:
        spec = Requirement(text).specifier
        assert any(s.operator in ("<", "<=", "~=") for s in spec), (
            f"{text!r} has no upper bound: a compatible range is bounded above"
        )
        assert not any(s.operator == "==" for s in spec), f"{text!r} is a pin, not a range"


def _imported_top_level(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _distributions_of(modules: set[str]) -> set[str]:
    mapping = md.packages_distributions()
    out = set()
    for mod in modules:
        if mod in sys.stdlib_module_names or mod.startswith("localsgd") or mod == "__future__":
            continue
        dists = mapping.get(mod)
        assert dists, f"module {mod!r} is imported but belongs to no installed distribution"
        out |= {_normal(d) for d in dists}
    return out


# modules that ship inside a declared distribution's own dependencies (jaxlib with jax)
_BUNDLED = {"jaxlib": "jax"}


@pytest.mark.parametrize(
    "package, groups",
    [("localsgd", ["dependencies"]), ("localsgd_book", ["dependencies", "book"])],
)
def test_every_imported_third_party_package_is_declared(package: str, groups: list[str]) -> None:
    declared: set[str] = set()
    for g in groups:
        declared |= {_normal(Requirement(s).name) for s in (RUNTIME if g == "dependencies"
                                                            else EXTRAS[g])}
    used = _distributions_of(_imported_top_level(ROOT / "lib" / package))
    undeclared = sorted(d for d in used if d not in declared and _BUNDLED.get(d) not in declared)
    # IPython and jupyter_client come with ipykernel, myst_nb's glue with myst-nb
    undeclared = [d for d in undeclared if not (package == "localsgd_book" and d in
                                                {"ipython", "jupyter-client"})]
    assert not undeclared, f"{package} imports {undeclared}, not declared in pyproject {groups}"


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _build_wheel(tmp: Path) -> Path:
    """A wheel of the project, built from a copy of its packaging files (so nothing is written
    into the repository), offline and with this venv's setuptools."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lib", src / "lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("localsgd-*.whl")
    return wheel


PROBE = """
import importlib.metadata as md, json, sys
import localsgd
from localsgd import experiments
print(json.dumps({
    "file": localsgd.__file__, "prefix": sys.prefix, "version": md.version("localsgd"),
    "requires": md.requires("localsgd"), "exports": sorted(localsgd.__all__),
    "book_tools_loaded": sorted(m for m in ("papermill", "sphinx", "localsgd_book")
                                if m in sys.modules),
}))
"""


def test_the_wheel_installs_into_a_fresh_venv_and_imports_from_there(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True,
                   timeout=60)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from the project venv's site-packages: a plain path in a .pth file
    # adds that folder, but not the .pth files in it, so the project's editable install of
    # localsgd stays out and the wheel's copy is the one imported.
    (site / "deps.pth").write_text(_site_packages() + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["JAX_PLATFORMS"] = "cpu"
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve().is_relative_to(fresh.resolve()), info["file"]
    assert info["version"] == PROJECT["version"]
    declared = {_normal(Requirement(r).name) for r in info["requires"]
                if "extra" not in str(Requirement(r).marker or "")}
    assert declared == {_normal(Requirement(s).name) for s in RUNTIME}
    assert {"Experiment", "run", "run_grid", "Result"} <= set(info["exports"])
    assert info["book_tools_loaded"] == [], "importing localsgd loaded the book's tooling"


# --------------------------------------------------------------------------------------------
# ACCEL=cuda


def _accel_requirement(accel: str) -> str:
    proc = subprocess.run(["make", "--no-print-directory", "-s", "accel-requirement",
                           f"ACCEL={accel}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_accel_cuda_names_the_cuda_build_of_the_pinned_jax() -> None:
    text = _accel_requirement("cuda")
    req = Requirement(text)
    pin = _pins()["jax"]
    assert (_normal(req.name), req.extras) == ("jax", {"cuda12"}), text
    assert str(req.specifier) == f"=={pin}", f"{text} is not the pinned jax=={pin}"
    assert _pins()["jaxlib"] == pin
    assert _accel_requirement("cpu") == ""
    # the `cuda` extra of the package asks for the same build, as a range holding the pin
    (extra,) = (Requirement(s) for s in EXTRAS["cuda"])
    assert (_normal(extra.name), extra.extras) == ("jax", {"cuda12"})
    assert extra.specifier.contains(pin)


def test_an_unknown_accel_is_refused_naming_it() -> None:
    proc = subprocess.run(["make", "-s", "accel-requirement", "ACCEL=tpu9"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "ACCEL=tpu9" in proc.stderr


def _cuda_plugins(version: str) -> list[Requirement]:
    """What the installed jax's ``cuda12`` extra pulls in (read from its metadata, offline)."""
    assert md.version("jax") == version, "the venv's jax is not the pinned one"
    reqs = [Requirement(r) for r in md.requires("jax") or []]
    picked = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "cuda12"})]
    return [r for r in picked if _normal(r.name) != "jaxlib"]


def test_the_cuda12_extra_of_the_pinned_jax_pins_its_plugin_to_the_same_version() -> None:
    pin = _pins()["jax"]
    plugins = _cuda_plugins(pin)
    assert plugins, "jax declares no cuda12 extra"
    for r in plugins:
        assert r.specifier.contains(pin) and not r.specifier.contains(pin + ".post999"), r


def _index_reachable(host: str = "pypi.org") -> bool:
    try:
        with socket.create_connection((host, 443), timeout=5):
            return True
    except OSError:
        return False


def test_accel_cuda_resolves_with_a_pip_dry_run(tmp_path: Path) -> None:
    """The CUDA plugin of the pinned jax exists for this Python and platform (no GPU needed)."""
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is unreachable from here")
    pin = _pins()["jax"]
    wanted = [_accel_requirement("cuda")] + [
        f"{r.name}=={pin}" for r in _cuda_plugins(pin)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
         "--report", str(tmp_path / "report.json"), "-q", *wanted],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    got = {_normal(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    assert got.get("jax") == pin and got.get("jax-cuda12-plugin") == pin, got


# --------------------------------------------------------------------------------------------
# the public API


def _fresh_python(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_localsgd_is_light_until_a_name_is_used() -> None:
    got = _fresh_python(
        "import json, sys, localsgd; before = 'jax' in sys.modules; localsgd.Experiment; "
        "print(json.dumps([before, 'jax' in sys.modules]))")
    assert got == [False, True]


def test_all_names_exactly_the_lazily_exported_names() -> None:
    import localsgd

    names = set(localsgd.__all__) - {"__version__"}
    assert names == set(localsgd._EXPORTS)
    assert {"Experiment", "run", "run_grid", "Result", "client_data", "sphere", "digits",
            "normalise_rows", "partition", "read_idx"} <= names
    for name in names:
        obj = getattr(localsgd, name)
        home = importlib.import_module(f"localsgd.{localsgd._EXPORTS[name]}")
        assert obj is getattr(home, name), name
        assert name in dir(localsgd)
    with pytest.raises(AttributeError, match="no_such_name"):
        localsgd.no_such_name  # noqa: B018
    assert localsgd.experiments is importlib.import_module("localsgd.experiments")


def test_help_on_the_package_and_each_export_reads_well() -> None:
    import pydoc

    import localsgd

    text = pydoc.render_doc(localsgd, renderer=pydoc.plaintext)
    for name in ("Experiment", "run_grid", "client_data", "Running experiments"):
        assert name in text, f"help(localsgd) does not mention {name}"
    for name in set(localsgd.__all__) - {"__version__"}:
        doc = inspect.getdoc(getattr(localsgd, name))
        assert doc and len(doc.split()) >= 5, f"{name} has no docstring worth reading"


# exported functions whose every parameter and return value carry a type hint


@pytest.mark.parametrize("name", ["run", "run_grid", "load_data", "client_data",
                                  "checkpoint_path", "results_dir"])
def test_public_functions_carry_type_hints(name: str) -> None:
    import localsgd

    sig = inspect.signature(getattr(localsgd, name))
    missing = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
    assert not missing, f"localsgd.{name}: parameters {missing} have no type hint"
    assert sig.return_annotation is not inspect.Signature.empty, f"localsgd.{name} -> ?"


# --------------------------------------------------------------------------------------------
# project files


def test_licence_and_citation_agree_with_the_package_and_the_bibliography() -> None:
    import re

    import yaml

    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license"]["text"] == "MIT"
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert cff["version"] == PROJECT["version"]
    bib = (ROOT / "book" / "references.bib").read_text()
    entry = bib[bib.index("@inproceedings{deng2022local"):]
    title = re.search(r"title\s*=\s*\{(.+?)\},\n", entry).group(1).replace("{", "").replace("}", "")
    paper = cff["preferred-citation"]
    assert paper["title"] == title
    assert [a["family-names"] for a in paper["authors"]] == ["Deng", "Kamani", "Mahdavi"]
    assert "2107.10868" in paper["url"]
