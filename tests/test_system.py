"""System facts: sanitised, complete, gathered off the host's thread."""

from __future__ import annotations

import platform

from phonehome_plugin import __version__
from phonehome_plugin.reports import system


def test_machine_facts_describe_this_machine() -> None:
    facts = system.machine_facts()
    assert facts["os"] == platform.system()
    assert facts["arch"] == platform.machine()
    assert facts["cpu_count"] >= 1
    assert facts["memory_mb"] > 0
    assert facts["plugin_version"] == __version__
    assert facts["python"] == platform.python_version()


def test_host_facts_accept_only_well_formed_values() -> None:
    assert system.host_facts("2.3.0", "enterprise") == {
        "version": "2.3.0",
        "edition": "enterprise",
    }
    assert system.host_facts("2.3.0 (build /home/ci)", "platinum") == {
        "version": None,
        "edition": None,
    }
