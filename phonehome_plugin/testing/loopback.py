"""Keeping a process on this machine: connections to anything but loopback are refused.

For the simulated host's users (module authors' tests), this project's tests and
its benchmarks, which must never reach an address off the machine whatever a
bug or the environment (a proxy variable, say) would make them do.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

SWITCHES_AND_PROXIES = (
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
)
"""Environment variables that would turn telemetry off or route requests elsewhere."""

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def is_local(address: Any) -> bool:
    """True for a Unix socket path, ``localhost`` and loopback IP addresses."""
    if isinstance(address, str | bytes):
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(address: Any) -> None:
    if not is_local(address):
        raise OSError(f"tried to reach {address!r}: this process must stay on loopback")


def connect(self: socket.socket, address: Any) -> None:
    """``socket.connect`` for loopback only."""
    _refuse(address)
    _real_connect(self, address)


def connect_ex(self: socket.socket, address: Any) -> int:
    """``socket.connect_ex`` for loopback only."""
    _refuse(address)
    return _real_connect_ex(self, address)
