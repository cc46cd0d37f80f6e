"""The README says what the project does: its commands run, CI runs what it says, and
its configuration table is the configuration the plugin accepts."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from phonehome_plugin.cli import commands
from phonehome_plugin.config import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")
CI_SCRIPT = (ROOT / ".ci" / "run").read_text("utf-8")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
TOX = configparser.ConfigParser(interpolation=None)
TOX.read(ROOT / "tox.ini", "utf-8")


def _section(title: str) -> str:
    """The text under the ``## title`` heading, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def _commands(block: str) -> list[str]:
    lines = (line.strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _quick_start() -> list[str]:
    [block] = _code_blocks(_section("Quick start"))
    return _commands(block)


def test_quick_start_has_exactly_two_commands() -> None:
    assert len(_quick_start()) == 2


def test_the_second_quick_start_command_is_exactly_what_ci_runs() -> None:
    second = _quick_start()[1]
    ci_lines = [line.strip() for line in CI_SCRIPT.splitlines()]
    assert second in ci_lines, f".ci/run does not run {second!r}"
    assert second.split("&&")[-1].split() == ["python3", "-m", "pytest"], "the whole suite"


def test_the_first_quick_start_command_ends_by_running_the_demo() -> None:
    first = _quick_start()[0]
    steps = [shlex.split(step) for step in first.split("&&")]
    assert steps[-1] == ["python3", "-m", "phonehome_plugin", "demo"]
    args = commands._parser().parse_args(steps[-1][3:])
    assert args.run is commands.demo
    assert steps[0][:4] == ["python3", "-m", "pip", "install"], "it starts from a fresh clone"


def _mentioned_subcommands() -> set[str]:
    """Every ``phonehome X`` and ``-m phonehome_plugin X`` in the README's code, and the
    bare names listed after one in the same backticked list (`preview`, `history`)."""
    code = "\n".join([*_code_blocks(README), *re.findall(r"`([^`\n]+)`", README)])
    names = set(re.findall(r"(?:^|\s)phonehome(?:_plugin)? +([a-z][a-z_-]*)", code, re.M))
    for listing in re.findall(r"`phonehome [a-z]+`(?:, `[a-z]+`)+", README):
        names.update(re.findall(r"`([a-z]+)`", listing))
    return names


def _exit_code(argv: list[str]) -> object:
    """What ``phonehome ARGV`` exits with, whether ``main`` returns or raises it."""
    try:
        return commands.main(argv)
    except SystemExit as exited:
        return exited.code


def test_every_subcommand_the_readme_mentions_exists(capsys: pytest.CaptureFixture[str]) -> None:
    mentioned = _mentioned_subcommands()
    assert {"status", "preview", "history", "export", "schema", "demo"} <= mentioned
    for name in sorted(mentioned):
        assert _exit_code([name, "--help"]) == commands.OK, f"`phonehome {name}` is not a command"
    assert _exit_code(["no-such-command", "--help"]) == commands.USAGE, "the check above can fail"
    capsys.readouterr()


def test_the_operator_examples_parse() -> None:
    [block] = _code_blocks(_section("Operators: seeing what telemetry does"))
    parser = commands._parser()
    for line in _commands(block):
        words = shlex.split(line, comments=True)
        assert words[0] == "phonehome"
        parser.parse_args(words[1:])  # exits 2 on an unknown option or argument


def _documented_keys() -> list[str]:
    rows = re.findall(r"^\| `([a-z_]+)` \|", _section("Configuration"), re.M)
    assert rows, "no configuration table"
    return rows


def test_every_documented_key_is_accepted() -> None:
    documented = _documented_keys()
    assert len(documented) == len(set(documented)), "a key is listed twice"
    assert set(documented) <= set(settings._PARSERS)


def test_every_accepted_key_is_documented() -> None:
    assert set(settings._PARSERS) <= set(_documented_keys())


# tox.ini and pyproject.toml: the versions CI tests are the versions declared ------------


CONTRACT_DEP = "{toxinidir}/contract"
"""How tox installs the contract: from the repository, since it is not on PyPI."""
CONTRACT_NAME = "maestrohub-hookspecs"


def _tox_lines(env: str | None) -> list[str]:
    section = TOX[f"testenv:{env}"] if env else TOX["testenv"]
    return [line.strip() for line in section["deps"].splitlines() if line.strip()]


def _tox_deps(env: str) -> list[Requirement]:
    """An env's deps from PyPI, as requirements (the contract's folder left out)."""
    return [Requirement(line) for line in _tox_lines(env) if line != CONTRACT_DEP]


def test_both_quick_start_commands_install_the_contract_from_the_clone() -> None:
    for command in _quick_start():
        install = shlex.split(command.split("&&")[0])
        assert install[:4] == ["python3", "-m", "pip", "install"]
        assert install[4:] == ["-e", "./contract", "-e", ".[test]"]
    assert (ROOT / "contract" / "pyproject.toml").is_file()


def test_every_tox_env_that_installs_the_package_installs_the_contract_first() -> None:
    assert _tox_lines(None) == [CONTRACT_DEP]
    assert _tox_lines("min")[0] == CONTRACT_DEP
    for env in ("type", "bench"):  # they inherit [testenv]'s
        assert "deps" not in TOX[f"testenv:{env}"]
    assert TOX["testenv:lint"]["skip_install"] == "true"


def _lower_bound(requirement: Requirement) -> Version:
    [bound] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return bound


def test_the_min_env_pins_every_runtime_dependency_at_its_declared_lower_bound() -> None:
    declared = {r.name.lower(): _lower_bound(r) for r in map(Requirement, PROJECT["dependencies"])}
    # The contract comes from the repository (CONTRACT_DEP): its version there is the
    # lower bound declared for it, so the min env runs with that bound too.
    written = (ROOT / "contract" / "hookspecs" / "__init__.py").read_text("utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', written, re.M)
    assert found, "the contract's version is written in its __init__"
    contract = Version(found[1])
    assert declared.pop(CONTRACT_NAME) == Version(f"{contract.major}.{contract.minor}")
    assert contract == Version(f"{contract.major}.{contract.minor}")
    assert CONTRACT_DEP in _tox_lines("min")
    pinned: dict[str, Version] = {}
    for requirement in _tox_deps("min"):
        [pin] = requirement.specifier
        assert pin.operator == "==", f"{requirement} is not a pin"
        pinned[requirement.name.lower()] = Version(pin.version)
    assert {name: pinned.get(name) for name in declared} == declared
    # Beyond those, only pytest, held to the newest release that runs on that pluggy.
    assert set(pinned) - set(declared) == {"pytest"}
    assert TOX["testenv:min"]["base_python"] == f"python{PROJECT['requires-python'][2:]}"


def test_the_lint_env_runs_the_ruff_of_the_dev_extra() -> None:
    [ruff] = [
        r for r in map(Requirement, PROJECT["optional-dependencies"]["dev"]) if r.name == "ruff"
    ]
    assert [str(r) for r in _tox_deps("lint")] == [str(ruff)]


def test_ci_runs_every_supported_python_the_lowest_versions_lint_and_types() -> None:
    [label] = TOX["tox"]["labels"].strip().splitlines()
    name, _, envs = label.partition("=")
    assert name.strip() == "pythons"
    assert [env.strip() for env in envs.split(",")] == ["py311", "py312", "py313", "min"]
    assert "for version in 3.11 3.12 3.13; do" in CI_SCRIPT
    assert "tox_envs+=(min)" in CI_SCRIPT
    assert 'for env in "${tox_envs[@]}" lint type; do' in CI_SCRIPT
    lint = TOX["testenv:lint"]["commands"]
    assert "ruff check" in lint and "ruff format --check" in lint
    assert TOX["testenv:type"]["commands"].strip() == "mypy"
