"""Facts about the machine and the host: the report's ``system`` section.

Gathered on the plugin's own thread (psutil is imported here, never on the
host's thread), once per process: none of them changes while it runs.
"""

from __future__ import annotations

import platform
import socket
from typing import Any

from phonehome_plugin import __version__
from phonehome_plugin.guard import privacy


def machine_facts() -> dict[str, Any]:
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


def host_facts(version: Any, edition: Any) -> dict[str, Any]:
    """MaestroHub's version and edition, as far as they are well formed."""
    return {
        "version": privacy.identifier(str(version)) if version else None,
        "edition": edition if edition in ("core", "foundation", "enterprise") else None,
    }
