"""System facts: sanitised, complete, gathered off the host's thread; pre-releases and CI
runs marked."""

from __future__ import annotations

import platform

import pytest

from phonehome_plugin import __version__
from phonehome_plugin.reports import shape, system

NO_CI: dict[str, str] = {}


def test_machine_facts_describe_this_machine() -> None:
    facts = system.machine_facts()
    assert facts["os"] == platform.system()
    assert facts["arch"] == platform.machine()
    assert facts["cpu_count"] >= 1
    assert facts["memory_mb"] > 0
    assert facts["plugin_version"] == __version__
    assert facts["python"] == platform.python_version()


def test_host_facts_accept_only_well_formed_values() -> None:
    assert system.host_facts("2.3.0", "enterprise", NO_CI) == {
        "version": "2.3.0",
        "edition": "enterprise",
        "prerelease": False,
        "ci": False,
    }
    assert system.host_facts("2.3.0 (build /home/ci)", "platinum", NO_CI) == {
        "version": None,
        "edition": None,
        "prerelease": True,
        "ci": False,
    }
    assert system.host_facts(None, None, NO_CI)["prerelease"] is False
    assert system.host_facts(230, "core", NO_CI)["version"] is None


@pytest.mark.parametrize(
    "version",
    [
        "2.3-dev",
        "2.7-dev",
        "2.3.0-rc1",
        "2.3.0-rc.1",
        "2.3.0a1",
        "2.3.0b2",
        "2.3.0rc1",
        "2.3.0c1",
        "2.3.0.dev4",
        "2.3.0-alpha",
        "2.3.0-beta.2",
        "v2.3.0-rc1",
        "2.3.0-SNAPSHOT",
        "2.3.0.post1.dev2",
        "2.3.0-1",
        "2.3.0-rc1+build.5",
        "nightly",
        "dev",
    ],
)
def test_pre_release_versions_are_marked(version: str) -> None:
    assert system.is_prerelease(version)
    assert system.host_facts(version, "core", NO_CI)["prerelease"] is True


@pytest.mark.parametrize(
    "version",
    ["2.3.0", "2.3", "2", "v2.3.0", "2.3.0.4", "2.3.0+build.7", "2.3.0.post1", "2.3.0-post2", ""],
)
def test_releases_are_not(version: str) -> None:
    assert not system.is_prerelease(version)


@pytest.mark.parametrize(
    "environ",
    [
        {"CI": "true"},
        {"CI": "1"},
        {"GITHUB_ACTIONS": "true"},
        {"GITLAB_CI": "true"},
        {"JENKINS_URL": "https://jenkins.example/"},
        {"BUILDKITE": "true"},
        {"CIRCLECI": "true"},
        {"TF_BUILD": "True"},
        {"TEAMCITY_VERSION": "2024.03"},
    ],
)
def test_ci_environments_are_marked(environ: dict[str, str]) -> None:
    assert system.in_ci(environ)
    assert system.host_facts("2.3.0", "core", environ)["ci"] is True


@pytest.mark.parametrize(
    "environ",
    [{}, {"CI": ""}, {"CI": "0"}, {"CI": "false"}, {"CI": "no"}, {"BUILD_NUMBER": "17"}],
)
def test_other_environments_are_not(environ: dict[str, str]) -> None:
    assert not system.in_ci(environ)


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in system.CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert system.host_facts("2.3.0", "core")["ci"] is False
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert system.host_facts("2.3.0", "core")["ci"] is True


def test_the_details_are_fields_of_the_machine_facts() -> None:
    assert set(system.DETAILS) <= set(system.machine_facts())
    assert system.DETAILS == shape.DETAILS
