"""Keep the benchmark on this machine: no proxies, no telemetry switches, loopback only.

Called first by :mod:`bench.run` and by every child process it starts, so that a
developer's ``HTTPS_PROXY`` or ``DO_NOT_TRACK`` neither reroutes the loopback
endpoints nor turns the plugin off, and any connection to a non-loopback address
fails instead of leaving the machine.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

CLEARED = (
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
    "REQUESTS_CA_BUNDLE",
)

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


def _connect(self: socket.socket, address: Any) -> None:
    if not _local(address):
        raise OSError(f"benchmark tried to reach {address!r}: it must stay on loopback")
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if not _local(address):
        raise OSError(f"benchmark tried to reach {address!r}: it must stay on loopback")
    return _real_connect_ex(self, address)


def install() -> None:
    """Clear the switches and proxies from the environment and refuse non-loopback connects."""
    for name in CLEARED:
        os.environ.pop(name, None)
    socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
