"""Facts about the machine and the host: the report's ``system`` section.

Gathered on the plugin's own thread (psutil is imported here, never on the
host's thread), once per process: none of them changes while it runs.
"""

from __future__ import annotations

import platform
import socket
from typing import TypedDict

from phonehome_plugin import __version__
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports.shape import EDITIONS, Edition


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


class HostFacts(TypedDict):
    """The host's part of the report's ``system`` section."""

    version: str | None
    edition: Edition | None


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


def host_facts(version: object, edition: object) -> HostFacts:
    """MaestroHub's version and edition, as far as they are well formed.

    Typed ``object``: the host's ``app`` promises ``str`` for both, but a value the
    plugin did not make is checked, not trusted.
    """
    return {
        "version": privacy.identifier(str(version)) if version else None,
        "edition": next((known for known in EDITIONS if known == edition), None),
    }
