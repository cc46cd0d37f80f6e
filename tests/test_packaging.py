"""Two distributions, each built as it claims; the source archive runs its own test
suite; and the metadata says what is true.

The repository builds ``maestrohub-phonehome`` (its root) and ``maestrohub-hookspecs``,
the contract (``contract/``), which MaestroHub, the plugin and every module depend on.
A module that adds collectors depends on the contract alone, so the contract must work
without the plugin: a fresh virtualenv holding pluggy, blinker, the contract's wheel
and a collector module's wheel, and no phonehome, runs a host that loads every entry
point (the slow test at the end).

``python -m build --sdist``, unpacked anywhere, must take ``pip install -e ".[test]"
&& python -m pytest`` as a clone does: so it must carry every file the tests, tox, CI
and the benchmarks read. What it carries is computed here from ``MANIFEST.in`` (read
with its own small reader: only the directives it uses, any other fails the test) and
from what setuptools adds by itself (the packages' modules, their package data, the
readme, the license files, pyproject.toml), without building anything. Then:

- every helper module, the conftest and every test module in tests/, every module of
  bench/, and the files named in the list below are in it;
- every file the tests or the benchmarks name by a literal path from the repository's
  root (``ROOT / "README.md"``, ``... / "docs" / "telemetry.md"``) is in it;
- every file of the two packages that is not a module is package data, so that a
  wheel (a non-editable install) holds it too.

And the metadata: an SPDX license expression with its license file and no license
classifier (PEP 639), a build backend that understands both, and one version, written
in ``phonehome_plugin/__init__.py``.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from dist_support import (
    build_wheel,
    copy_installed,
    fresh_venv,
    pip,
    run,
    site_packages,
    written_module,
)
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
SETUPTOOLS: dict[str, Any] = PYPROJECT["tool"]["setuptools"]
CONTRACT = ROOT / "contract"
CONTRACT_PYPROJECT: dict[str, Any] = tomllib.loads(
    (CONTRACT / "pyproject.toml").read_text("utf-8")
)
CONTRACT_PROJECT: dict[str, Any] = CONTRACT_PYPROJECT["project"]
DISTRIBUTIONS = {"maestrohub-phonehome": ROOT, "maestrohub-hookspecs": CONTRACT}
PACKAGES = {"phonehome_plugin": ROOT, "hookspecs": CONTRACT}
"""Each package, and the folder of the distribution it belongs to."""

NEEDED = (
    "README.md",
    "BENCHMARKS.md",
    "LICENSE",
    "tox.ini",
    "pyproject.toml",
    "MANIFEST.in",
    ".ci/run",
    "docs/telemetry.md",
    "tests/conftest.py",
    "phonehome_plugin/reports/report.schema.json",
    "phonehome_plugin/py.typed",
    "contract/pyproject.toml",
    "contract/README.md",
    "contract/LICENSE",
    "contract/hookspecs/py.typed",
)
"""Files the suite, tox or CI read, beside the modules of tests/ and bench/."""


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _files_under(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def _manifest(lines: list[str]) -> set[str]:
    """The files MANIFEST.in ``lines`` select, relative to the root, as setuptools reads
    the directives used there (each applies to the selection made so far)."""
    chosen: set[str] = set()
    for number, line in enumerate(lines, 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        directive, arguments = words[0], words[1:]
        if directive == "include":
            for pattern in arguments:
                chosen.update(_relative(p) for p in ROOT.glob(pattern) if p.is_file())
        elif directive == "graft":
            [folder] = arguments
            chosen.update(_relative(p) for p in _files_under(ROOT / folder))
        elif directive == "recursive-include":
            folder, *patterns = arguments
            for path in _files_under(ROOT / folder):
                if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                    chosen.add(_relative(path))
        elif directive == "global-exclude":
            chosen = {
                name
                for name in chosen
                if not any(fnmatch.fnmatch(Path(name).name, p) for p in arguments)
            }
        else:
            raise AssertionError(f"MANIFEST.in:{number}: this test cannot read {directive!r}")
    return chosen


def _setuptools_of(root: Path) -> dict[str, Any]:
    pyproject = PYPROJECT if root == ROOT else CONTRACT_PYPROJECT
    found: dict[str, Any] = pyproject["tool"]["setuptools"]
    return found


def _package_data(path: Path) -> bool:
    """True when its distribution's package-data ships ``path`` (a file in a package)."""
    root = CONTRACT if path.is_relative_to(CONTRACT) else ROOT
    for package, patterns in _setuptools_of(root)["package-data"].items():
        folder = root / package.replace(".", "/")
        if path.is_relative_to(folder):
            inner = path.relative_to(folder).as_posix()
            if any(fnmatch.fnmatch(inner, pattern) for pattern in patterns):
                return True
    return False


def _package_files() -> Iterator[Path]:
    for package, root in PACKAGES.items():
        yield from _files_under(root / package)


@cache
def shipped() -> frozenset[str]:
    """Every file maestrohub-phonehome's sdist holds (beside PKG-INFO, setup.cfg and
    the egg-info): its own package, and the contract's whole source, through MANIFEST.in."""
    files = _manifest((ROOT / "MANIFEST.in").read_text("utf-8").splitlines())
    for path in _files_under(ROOT / "phonehome_plugin"):
        if path.suffix == ".py" or _package_data(path):
            files.add(_relative(path))
    files.update([PROJECT["readme"], "pyproject.toml", "MANIFEST.in", *PROJECT["license-files"]])
    return frozenset(files)


def _literal_paths(tree: ast.AST) -> Iterator[str]:
    """Every string constant, and every ``a / "b" / "c"`` chain of them as ``b/c``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts: list[str] = []
            left: ast.expr = node
            while isinstance(left, ast.BinOp) and isinstance(left.op, ast.Div):
                if isinstance(left.right, ast.Constant) and isinstance(left.right.value, str):
                    parts.insert(0, left.right.value)
                left = left.left
            if isinstance(left, ast.Constant) and isinstance(left.value, str):
                parts.insert(0, left.value)
            yield "/".join(parts)


def _sources() -> list[Path]:
    return sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")])


# What the archive holds ----------------------------------------------------------------


def test_the_reader_of_manifest_in_follows_its_directives() -> None:
    selected = _manifest(["include README.md tox.ini", "graft docs", "global-exclude *.md"])
    assert selected == {"tox.ini"}
    assert "tests/conftest.py" in _manifest(["recursive-include tests *.py"])


def test_the_archive_holds_everything_the_suite_tox_and_ci_read() -> None:
    needed = {*NEEDED, *(_relative(p) for p in _sources())}
    assert {name for name in needed if (ROOT / name).is_file()} == needed, "a needed file is gone"
    assert sorted(needed - shipped()) == []


def test_the_archive_holds_every_file_the_tests_and_benchmarks_name() -> None:
    named: dict[str, str] = {}
    for source in _sources():
        for text in _literal_paths(ast.parse(source.read_text("utf-8"))):
            if not text or "\n" in text or len(text) > 200:
                continue
            relative = Path(text)
            if relative.is_absolute() or ".." in relative.parts:
                continue
            if (ROOT / relative).is_file():
                named.setdefault(relative.as_posix(), _relative(source))
    # The reader finds the files the suite is known to read (so it can fail).
    assert {"README.md", ".ci/run", "tox.ini", "docs/telemetry.md", "BENCHMARKS.md"} <= set(named)
    missing = {name: source for name, source in named.items() if name not in shipped()}
    assert missing == {}, f"named by a test or benchmark, not in the sdist: {missing}"


def test_the_archive_holds_the_contracts_whole_source() -> None:
    """The Quick start installs the contract from ./contract: so must the unpacked sdist."""
    source = {_relative(p) for p in _files_under(CONTRACT / "hookspecs") if p.suffix != ".pyc"}
    assert "contract/hookspecs/phonehome.py" in source
    assert sorted(source - shipped()) == []
    left_by_a_build = {_relative(p) for p in _files_under(CONTRACT) if "egg-info" in str(p)}
    assert left_by_a_build & shipped() == set()


def test_every_file_of_the_packages_reaches_a_wheel_too() -> None:
    other = [path for path in _package_files() if path.suffix not in (".py", ".pyc")]
    assert "phonehome_plugin/reports/report.schema.json" in map(_relative, other)
    assert [_relative(p) for p in other if not _package_data(p)] == []


def test_both_packages_say_they_are_typed() -> None:
    for package, root in PACKAGES.items():
        assert (root / package / "py.typed").is_file()
        assert "py.typed" in _setuptools_of(root)["package-data"][package]


# Metadata --------------------------------------------------------------------------------


def _pyproject(root: Path) -> dict[str, Any]:
    return PYPROJECT if root == ROOT else CONTRACT_PYPROJECT


def _written_version(package: str) -> Version:
    """The package's ``__version__``: a literal assignment in its ``__init__``, so that
    setuptools reads it without importing the package."""
    tree = ast.parse((PACKAGES[package] / package / "__init__.py").read_text("utf-8"))
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert len(versions) == 1 and isinstance(versions[0], str)
    return Version(versions[0])  # raises InvalidVersion unless PEP 440 allows it


@pytest.mark.parametrize("root", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS)
def test_the_license_is_an_spdx_expression_with_its_file_and_no_classifier(root: Path) -> None:
    project = _pyproject(root)["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert (root / "LICENSE").read_text("utf-8") == (ROOT / "LICENSE").read_text("utf-8")
    head = (ROOT / "LICENSE").read_text("utf-8").split()[:5]
    assert head == ["Apache", "License", "Version", "2.0,", "January"]
    # PEP 639: no license classifier beside a license expression (setuptools refuses).
    assert [c for c in project.get("classifiers", []) if c.startswith("License ::")] == []


@pytest.mark.parametrize("root", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS)
def test_the_build_backend_reads_a_license_expression(root: Path) -> None:
    [setuptools] = [
        r
        for r in map(Requirement, _pyproject(root)["build-system"]["requires"])
        if r.name == "setuptools"
    ]
    lowest = [Version(s.version) for s in setuptools.specifier if s.operator == ">="]
    assert lowest and min(lowest) >= Version("77"), "setuptools 77 reads project.license-files"


@pytest.mark.parametrize("root", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS)
def test_the_classifiers_name_the_pythons_tox_runs(root: Path) -> None:
    project = _pyproject(root)["project"]
    pythons = {
        c.rsplit(" ", 1)[-1]
        for c in project["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert pythons == {"3.11", "3.12", "3.13"}
    assert project["requires-python"] == ">=3.11"
    assert "Typing :: Typed" in project["classifiers"]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_version_is_written_once_in_its_package(package: str) -> None:
    project = _pyproject(PACKAGES[package])["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    dynamic = _setuptools_of(PACKAGES[package])["dynamic"]
    assert dynamic["version"] == {"attr": f"{package}.__version__"}
    _written_version(package)


def test_the_plugin_depends_on_the_contract_it_is_built_with() -> None:
    """Its lower bound is the contract's version here (the only one the suite tests), its
    upper bound the next major (which renames something of the contract)."""
    [contract] = [
        r for r in map(Requirement, PROJECT["dependencies"]) if r.name == CONTRACT_PROJECT["name"]
    ]
    version = _written_version("hookspecs")
    assert str(contract.specifier) == f"<{version.major + 1},>={version.major}.{version.minor}"
    assert contract.specifier.contains(version)
    assert _setuptools_of(ROOT)["packages"]["find"]["include"] == ["phonehome_plugin*"]


def test_the_contract_depends_on_pluggy_and_blinker_alone_as_the_plugin_does() -> None:
    def bounds(requirements: list[str]) -> dict[str, str]:
        return {r.name: str(r.specifier) for r in map(Requirement, requirements)}

    contract = bounds(CONTRACT_PROJECT["dependencies"])
    assert set(contract) == {"pluggy", "blinker"}
    plugin = bounds(PROJECT["dependencies"])
    assert {name: plugin[name] for name in contract} == contract
    assert _setuptools_of(CONTRACT)["packages"] == ["hookspecs"]


def test_the_sdist_builder_is_a_development_tool_only() -> None:
    def names(requirements: list[str]) -> set[str]:
        return {Requirement(r).name for r in requirements}

    assert "build" in names(PROJECT["optional-dependencies"]["dev"])
    assert "build" not in names(PROJECT["dependencies"])
    assert "build" not in names(PROJECT["optional-dependencies"]["test"])


# The contract without the plugin -------------------------------------------------------

BARE_HOST = """
import importlib.util
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pluggy

import hookspecs.host
from hookspecs import PROJECT_NAME, signals


class App:
    version, edition, config, config_path = "2.3.0", "core", {}, None
    data_dir = Path(".")
    started_at = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


pm = pluggy.PluginManager(PROJECT_NAME)
pm.add_hookspecs(hookspecs.host)
pm.load_setuptools_entrypoints(PROJECT_NAME)
pm.check_pending()
app = App()
app.plugin_manager = pm
pm.hook.on_startup.call_historic(kwargs={"app": app})
for module in ("users", "connections", "pipelines", "organizations", "data_models"):
    signals.inventory_synced.send(app, module=module, items=[])
signals.execution_finished.send(app, pipeline_id="p1", status="completed", duration_ms=5)
pm.hook.on_tick(app=app, now=app.started_at + timedelta(seconds=10))
user = {"id": "u1", "email": "admin@example.com", "created_at": app.started_at}
pm.hook.on_user_created(app=app, user=user)
pm.hook.on_shutdown(app=app)
print(json.dumps({
    "plugins": sorted(name for name, _ in pm.list_name_plugin()),
    "phonehome": importlib.util.find_spec("phonehome_plugin") is not None,
}))
"""
"""A host as the contract describes one (section 1), in a few lines, on the contract alone."""


@pytest.mark.slow
def test_the_contract_and_a_collector_module_run_on_a_host_without_phonehome(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Done when: in a fresh virtualenv with pluggy, blinker, the contract distribution
    and a collector distribution (the one docs/modules.md writes), but without
    phonehome, a host loads every entry point and runs: no error."""
    wheels = tmp_path / "wheels"
    build_wheel(CONTRACT, wheels)
    _, module_wheel = written_module(tmp_path_factory.mktemp("modules-doc"))
    python = fresh_venv(tmp_path / "venv")
    for name in ("pluggy", "blinker"):  # already installed there, as on any host
        copy_installed(name, python)
    pip(
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        wheels,
        "--find-links",
        module_wheel.parent,
        "maestrohub-hookspecs",
        "acme-historian",
        python=python,
    )
    site = site_packages(python)
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert installed >= {"acme_historian", "blinker", "maestrohub_hookspecs", "pluggy"}
    # Nothing else but what those require (blinker 1.6: typing_extensions).
    assert installed - {"acme_historian", "blinker", "maestrohub_hookspecs", "pluggy"} <= {
        "typing_extensions"
    }

    outcome = json.loads(run([python, "-I", "-c", BARE_HOST], cwd=tmp_path))
    assert outcome == {"plugins": ["acme_historian"], "phonehome": False}
