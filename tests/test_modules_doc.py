"""docs/modules.md, the page for module authors, is true: a collector distribution
written from the page alone, built and installed as a real wheel, passes its own test,
which uses only the testing kit; and the same test fails when the collector's
``collect()`` is broken."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dist_support import (
    BROKEN,
    MODULE,
    MODULES_DOC,
    break_collect,
    clean_environment,
    page_files,
    pip,
    run,
    written_module,
)

PAGE = MODULES_DOC.read_text("utf-8")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modules-doc")


def _run_its_tests(scratch: Path, *, broken: bool, name: str) -> tuple[int, str]:
    """Install the written module's wheel into a folder of its own and run its test
    suite there with pytest, as its author would, in a child process. The developer's
    shell says DO_NOT_TRACK=1: the kit must clear it."""
    tests, wheel = written_module(scratch, broken=broken)
    site = scratch / f"site-{name}"
    pip("install", "--quiet", "--no-deps", "--no-index", "--target", site, wheel)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x"],
        cwd=tests,
        env=clean_environment(PYTHONPATH=str(site), DO_NOT_TRACK="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_page_shows_a_whole_project() -> None:
    files = page_files()
    assert set(files) == {
        "pyproject.toml",
        "conftest.py",
        "acme_historian/__init__.py",
        "acme_historian/telemetry.py",
        "tests/test_telemetry.py",
    }
    project = tomllib.loads(files["pyproject.toml"])["project"]
    assert project["dependencies"] == ["maestrohub-hookspecs>=1.0,<2"], "the contract alone"
    assert "maestrohub-phonehome" in project["optional-dependencies"]["test"]
    assert "import phonehome_plugin" not in files["acme_historian/telemetry.py"]
    assert "from phonehome_plugin" not in files["acme_historian/telemetry.py"]
    # Its install commands install the contract from the clone, beside phonehome.
    assert "pip install -e ../maestrohub-phonehome/contract -e ../maestrohub-phonehome" in PAGE


def test_the_section_rules_are_stated_once() -> None:
    assert PAGE.count("## 4. The section rules") == 1
    readme = (MODULES_DOC.parent.parent / "README.md").read_text("utf-8")
    assert "docs/modules.md" in readme
    assert "dropped and counted" not in readme, "the README points to the page instead"


def test_the_pages_collector_holds_its_lock_for_every_use_of_its_count() -> None:
    """Thread-safe, as written: the receiver (host threads) and collect() (phonehome's
    thread) read and write the count only inside ``with self._lock:``. (A test cannot
    see a lost update on a Python with a GIL; the code can be read.)"""
    tree = ast.parse(page_files()[MODULE])
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    uses, guarded = 0, 0
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        if method.name == "__init__":
            continue
        locked = {
            id(inner)
            for block in ast.walk(method)
            if isinstance(block, ast.With)
            and any(ast.unparse(item.context_expr) == "self._lock" for item in block.items)
            for inner in ast.walk(block)
        }
        for node in ast.walk(method):
            if isinstance(node, ast.Attribute) and ast.unparse(node) == "self._writes":
                uses += 1
                guarded += id(node) in locked
    assert uses >= 2 and guarded == uses


def test_breaking_collect_changes_only_collect() -> None:
    source = page_files()["acme_historian/telemetry.py"]
    broken = break_collect(source)
    assert broken.count(BROKEN) == 1
    assert broken.replace(f"        {BROKEN}\n", "") == source
    compile(broken, "telemetry.py", "exec")


@pytest.mark.slow
def test_a_collector_written_from_the_page_passes_its_test(scratch: Path) -> None:
    status, output = _run_its_tests(scratch, broken=False, name="good")
    assert status == 0, output
    assert "2 passed" in output


@pytest.mark.slow
def test_the_same_test_fails_when_collect_is_broken(scratch: Path) -> None:
    status, output = _run_its_tests(scratch, broken=True, name="broken")
    assert status == 1, output
    assert "1 failed" in output
    assert "no section 'acme.historian' in the startup report: collect() raised RuntimeError" in (
        output
    )


def test_run_reports_a_failing_command() -> None:
    with pytest.raises(pytest.fail.Exception, match="exited 3"):
        run([sys.executable, "-c", "import sys; sys.exit(3)"])
