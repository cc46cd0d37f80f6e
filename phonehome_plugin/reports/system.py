"""Facts about the machine and the host: the report's ``system`` section.

Gathered on the plugin's own thread (psutil is imported here, never on the
host's thread), once per process: none of them changes while it runs.

Two of them tell the receiving team which reports to keep out of fleet figures:

- ``prerelease``: the MaestroHub version is a pre-release (:func:`is_prerelease`:
  PEP 440's ``a``, ``b``, ``rc`` and ``.dev`` forms and semver's ``-anything``, such
  as ``2.3-dev``, ``2.3.0-rc1``, ``2.3.0a1``, ``2.3.0.dev4``);
- ``ci``: the process runs in a CI job (:func:`in_ci`: one of the variables the common
  CI services set, :data:`CI_VARIABLES`).

``DETAILS`` are the facts beyond the public page's examples (version, OS, CPU
architecture, hostname, public IP), which ``categories.system_details: false``
leaves out.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Mapping
from typing import TypedDict

from phonehome_plugin import __version__
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports.shape import DETAILS, EDITIONS, Edition

__all__ = [
    "CI_VARIABLES",
    "DETAILS",
    "HostFacts",
    "MachineFacts",
    "host_facts",
    "in_ci",
    "is_prerelease",
    "machine_facts",
]


class MachineFacts(TypedDict):
    """The machine's part of the report's ``system`` section."""

    os: str | None
    os_release: str | None
    arch: str | None
    hostname: str | None
    python: str | None
    cpu_count: int
    memory_mb: int
    plugin_version: str | None


CI_VARIABLES = (
    "CI",
    "CONTINUOUS_INTEGRATION",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "JENKINS_URL",
    "HUDSON_URL",
    "BUILDKITE",
    "CIRCLECI",
    "TRAVIS",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
    "DRONE",
    "SEMAPHORE",
    "CODEBUILD_BUILD_ID",
    "bamboo_buildKey",
    "GO_PIPELINE_NAME",
    "CIRRUS_CI",
    "WOODPECKER",
    "HARNESS_BUILD_ID",
)
"""Environment variables by which CI services mark their jobs (GitHub Actions, GitLab,
Jenkins, Buildkite, CircleCI, Travis, Azure Pipelines, TeamCity, AppVeyor, Bitbucket,
Drone, Semaphore, AWS CodeBuild, Bamboo, GoCD, Cirrus, Woodpecker, Harness; ``CI`` for
the rest). Any of them set to a value other than empty, ``0``, ``false`` or ``no`` marks
the report. Not ``BUILD_NUMBER`` or ``BUILD_ID``: images bake those into production
containers too."""

_RELEASE = re.compile(r"[vV]?\d+(?:\.\d+)*")
_POST = re.compile(r"(?i)[-_.]?(?:post|rev|r)[-_.]?\d*")
_PRE_WORD = re.compile(r"(?i)(?:dev|alpha|beta|rc|pre|preview|snapshot|nightly|canary|edge)")


def is_prerelease(version: str) -> bool:
    """Whether MaestroHub ``version`` is a pre-release.

    A release is digits and dots (``2.3``, ``2.3.0``, ``v2.3.0``), with at most PEP 440
    post-release (``2.3.0.post1``) and build or local metadata after ``+``
    (``2.3.0+build.7``). Anything else after the release digits is a pre-release
    marker, in PEP 440 (``a1``, ``b2``, ``rc1``, ``.dev4``) and semver (``-rc.1``,
    ``-dev``, any ``-`` suffix) forms alike; a version that does not start with digits
    is a pre-release when it says so (``dev``, ``nightly``).
    """
    core = version.strip().partition("+")[0]
    release = _RELEASE.match(core)
    if release is None:
        return bool(_PRE_WORD.search(core))
    rest = core[release.end() :]
    return bool(rest) and not _POST.fullmatch(rest)


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (``os.environ`` by default) is a CI job's (see
    :data:`CI_VARIABLES`)."""
    env = os.environ if environ is None else environ
    return any(
        env.get(name, "").strip().lower() not in ("", "0", "false", "no") for name in CI_VARIABLES
    )


class HostFacts(TypedDict):
    """The host's part of the report's ``system`` section."""

    version: str | None
    edition: Edition | None
    prerelease: bool
    ci: bool


def machine_facts() -> MachineFacts:
    """OS, architecture, hostname and sizes of this machine."""
    import psutil  # deferred: it costs milliseconds to import

    return {
        "os": privacy.bucket(platform.system()),
        "os_release": privacy.identifier(platform.release()),
        "arch": privacy.bucket(platform.machine()),
        "hostname": socket.gethostname()[:253] or None,
        "python": platform.python_version(),
        "cpu_count": psutil.cpu_count() or 0,
        "memory_mb": psutil.virtual_memory().total // 2**20,
        "plugin_version": __version__,
    }


def host_facts(
    version: object, edition: object, environ: Mapping[str, str] | None = None
) -> HostFacts:
    """MaestroHub's version and edition, as far as they are well formed, whether the
    version is a pre-release, and whether ``environ`` (``os.environ`` by default) is a
    CI job's.

    Typed ``object``: the host's ``app`` promises ``str`` for both, but a value the
    plugin did not make is checked, not trusted.
    """
    # A plain copy of a str subclass's text: its own methods are not the plugin's.
    plain = str.__str__(version)[:256] if isinstance(version, str) else ""
    return {
        "version": privacy.identifier(plain) if plain else None,
        "edition": next((known for known in EDITIONS if known == edition), None),
        # From the version as the host gave it: one the guard refuses to show may
        # still say it is a pre-release.
        "prerelease": is_prerelease(plain) if plain else False,
        "ci": in_ci(environ),
    }
