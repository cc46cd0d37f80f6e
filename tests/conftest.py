"""Fixtures shared by every test module, and a guard that keeps tests on this machine."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["e2e_support", "pg_support"]

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _local(address):
        raise OSError(f"test tried to reach {address!r}: tests must stay on loopback")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _local(address):
        raise OSError(f"test tried to reach {address!r}: tests must stay on loopback")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _stay_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every outgoing connection of the test process must go to a loopback address."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    yield


@pytest.fixture(autouse=True)
def _no_telemetry_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide the switches themselves; the developer's environment must not."""
    for name in (
        "DO_NOT_TRACK",
        "MAESTROHUB_PHONEHOME_ENABLED",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
