"""The source archive runs its own test suite, and the metadata says what is true.

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
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
SETUPTOOLS: dict[str, Any] = PYPROJECT["tool"]["setuptools"]
PACKAGES = ("phonehome_plugin", "hookspecs")

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
    "hookspecs/py.typed",
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


def _package_data(path: Path) -> bool:
    """True when pyproject.toml's package-data ships ``path`` (a file in a package)."""
    for package, patterns in SETUPTOOLS["package-data"].items():
        folder = ROOT / package.replace(".", "/")
        if path.is_relative_to(folder):
            inner = path.relative_to(folder).as_posix()
            if any(fnmatch.fnmatch(inner, pattern) for pattern in patterns):
                return True
    return False


def _package_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from _files_under(ROOT / package)


@cache
def shipped() -> frozenset[str]:
    """Every file the sdist holds (beside PKG-INFO, setup.cfg and the egg-info)."""
    files = _manifest((ROOT / "MANIFEST.in").read_text("utf-8").splitlines())
    for path in _package_files():
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


def test_every_file_of_the_packages_reaches_a_wheel_too() -> None:
    other = [path for path in _package_files() if path.suffix not in (".py", ".pyc")]
    assert "phonehome_plugin/reports/report.schema.json" in map(_relative, other)
    assert [_relative(p) for p in other if not _package_data(p)] == []


def test_both_packages_say_they_are_typed() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file()
        assert "py.typed" in SETUPTOOLS["package-data"][package]


# Metadata --------------------------------------------------------------------------------


def test_the_license_is_an_spdx_expression_with_its_file_and_no_classifier() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    head = (ROOT / "LICENSE").read_text("utf-8").split()[:5]
    assert head == ["Apache", "License", "Version", "2.0,", "January"]
    # PEP 639: no license classifier beside a license expression (setuptools refuses).
    assert [c for c in PROJECT.get("classifiers", []) if c.startswith("License ::")] == []


def test_the_build_backend_reads_a_license_expression() -> None:
    [setuptools] = [
        r
        for r in map(Requirement, PYPROJECT["build-system"]["requires"])
        if r.name == "setuptools"
    ]
    lowest = [Version(s.version) for s in setuptools.specifier if s.operator == ">="]
    assert lowest and min(lowest) >= Version("77"), "setuptools 77 reads project.license-files"


def test_the_classifiers_name_the_pythons_tox_runs() -> None:
    pythons = {
        c.rsplit(" ", 1)[-1]
        for c in PROJECT["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert pythons == {"3.11", "3.12", "3.13"}
    assert PROJECT["requires-python"] == ">=3.11"
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_the_version_is_written_once_in_the_package() -> None:
    assert "version" not in PROJECT
    assert "version" in PROJECT["dynamic"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "phonehome_plugin.__version__"}
    # A literal assignment, so that setuptools reads it without importing the package.
    tree = ast.parse((ROOT / "phonehome_plugin" / "__init__.py").read_text("utf-8"))
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert len(versions) == 1 and isinstance(versions[0], str)
    Version(versions[0])  # raises InvalidVersion unless PEP 440 allows it


def test_the_sdist_builder_is_a_development_tool_only() -> None:
    def names(requirements: list[str]) -> set[str]:
        return {Requirement(r).name for r in requirements}

    assert "build" in names(PROJECT["optional-dependencies"]["dev"])
    assert "build" not in names(PROJECT["dependencies"])
    assert "build" not in names(PROJECT["optional-dependencies"]["test"])
