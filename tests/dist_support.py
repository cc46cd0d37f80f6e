"""Building and installing real distributions in tests, with no network at all.

Wheels are built by pip with the setuptools already installed (no build isolation, no
index), from a copy of the project so that the build leaves nothing in the tree; they
are installed by pip from a folder of wheels (``--no-index --find-links``). A fresh
virtualenv gets pip's installs through ``pip --python`` (it has no pip of its own),
and the distributions it should already hold (pluggy, blinker) as copies of the
installed files, metadata included, so that pip sees them as installed.

Every pip call runs with the machine's pip configuration and ``PIP_*`` variables
left out (an index, a constraint file or a find-links folder there would change what
is installed, or reach for the network).
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "contract"
PIP_TIMEOUT = 300
"""Seconds one pip call may take before the test fails (only a hung pip takes long)."""


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment without pip's settings, ``PYTHON*`` variables or a virtualenv."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PIP_", "PYTHON")) and name != "VIRTUAL_ENV"
    }
    return {
        **kept,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        **extra,
    }


def run(command: list[str | Path], *, cwd: Path | None = None, **env: str) -> str:
    """Run ``command``; its output, or a test failure that shows it."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def pip(*args: str | Path, python: Path | None = None) -> str:
    """This interpreter's pip, for ``python``'s environment when given."""
    target: list[str | Path] = ["--python", python] if python is not None else []
    return run([sys.executable, "-m", "pip", *target, *args])


def build_wheel(project: Path, wheels: Path) -> Path:
    """A wheel of the project in ``project``, built into ``wheels``; returns its path."""
    wheels.mkdir(parents=True, exist_ok=True)
    source = wheels.parent / f"source-{project.name}"
    shutil.copytree(
        project,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    before = set(wheels.glob("*.whl"))
    pip(
        "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source
    )
    [wheel] = set(wheels.glob("*.whl")) - before
    return wheel


def fresh_venv(where: Path) -> Path:
    """A new virtualenv without pip or any distribution; returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    return where / "bin" / "python"


def site_packages(python: Path) -> Path:
    """Where ``python`` installs pure-Python distributions."""
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(run([python, "-I", "-c", code]).strip())


def copy_installed(name: str, python: Path) -> None:
    """Copy the installed distribution ``name`` and those it requires (their files and
    metadata, as their RECORDs list them) into ``python``'s environment: installed there
    too, for pip as well. (blinker 1.6, the lowest version, requires typing-extensions.)"""
    target = site_packages(python)
    todo, done = [name], set()
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        done.add(canonicalize_name(dist.metadata["Name"]))
        _copy_files(dist, target)
        for line in dist.requires or ():
            requirement = Requirement(line)
            needed = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
            if needed and canonicalize_name(requirement.name) not in done:
                todo.append(requirement.name)


def _copy_files(dist: importlib.metadata.Distribution, target: Path) -> None:
    for file in dist.files or ():
        if file.suffix == ".pyc" or file.parts[0] == "..":  # bytecode, scripts
            continue
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / file)


# The module written from docs/modules.md ---------------------------------------------

MODULES_DOC = ROOT / "docs" / "modules.md"
FENCE = re.compile(r"^```[a-z]+ file=(\S+)\n(.*?)^```$", re.M | re.S)
MODULE = "acme_historian/telemetry.py"
"""The file of the page that holds the collector."""
BROKEN = 'raise RuntimeError("the historian is down")'
"""What the broken variant's ``collect()`` does first."""
_written: dict[bool, tuple[Path, Path]] = {}


def page_files() -> dict[str, str]:
    """Every file docs/modules.md shows whole (a fenced block with ``file=PATH``)."""
    return {path: text for path, text in FENCE.findall(MODULES_DOC.read_text("utf-8"))}


def break_collect(source: str) -> str:
    """``source`` with ``BROKEN`` as the first statement of every ``collect`` method."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    starts = sorted(
        (node.body[1] if ast.get_docstring(node) else node.body[0]).lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "collect"
    )
    assert starts, "no collect() to break"
    for line in reversed(starts):
        indent = lines[line - 1][: len(lines[line - 1]) - len(lines[line - 1].lstrip())]
        lines.insert(line - 1, f"{indent}{BROKEN}\n")
    return "".join(lines)


def written_module(scratch: Path, *, broken: bool = False) -> tuple[Path, Path]:
    """The project of docs/modules.md written out under ``scratch`` and its wheel, built
    once per test session (``broken``: with :func:`break_collect` applied to it).

    Returns ``(tests, wheel)``: ``tests`` is the project without its package (what its
    test suite needs: conftest.py, tests/), so that the tests import the installed
    module, not the source beside them.
    """
    if broken not in _written:
        project = scratch / ("broken" if broken else "written") / "acme-historian"
        for path, shown in page_files().items():
            text = break_collect(shown) if broken and path == MODULE else shown
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(text, "utf-8")
        wheel = build_wheel(project, project.parent / "wheels")
        tests = project.parent / "checkout"
        tests.mkdir()
        shutil.copy2(project / "conftest.py", tests)
        shutil.copytree(project / "tests", tests / "tests")
        _written[broken] = (tests, wheel)
    return _written[broken]
