"""Fixtures shared by every test module, and a guard that keeps tests on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from phonehome_plugin.testing import loopback, pytest_plugin

pytest_plugins = [
    "e2e_support",
    "pg_support",
    "simhost_support",
    "sqlite_support",
    "store_support",
]


@pytest.fixture(autouse=True)
def _stay_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every outgoing connection and every name lookup of the test process must stay on
    loopback (a lookup of another name asks the network's DNS server)."""
    loopback.install(monkeypatch.setattr)
    yield


@pytest.fixture(autouse=True)
def _no_telemetry_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide the switches (and whether the run is CI) themselves; the environment
    running the suite must not."""
    for name in pytest_plugin.CLEARED:
        monkeypatch.delenv(name, raising=False)
