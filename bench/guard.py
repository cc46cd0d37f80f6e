"""Keep the benchmark on this machine: no proxies, no telemetry switches, loopback only.

Called first by :mod:`bench.run` and by every child process it starts, so that a
developer's ``HTTPS_PROXY`` or ``DO_NOT_TRACK`` neither reroutes the loopback
endpoints nor turns the plugin off, and any connection to a non-loopback address
fails instead of leaving the machine.
"""

from __future__ import annotations

import os
import socket

from phonehome_plugin.testing import loopback

CLEARED = (*loopback.SWITCHES_AND_PROXIES, "REQUESTS_CA_BUNDLE")


def install() -> None:
    """Clear the switches and proxies from the environment and refuse non-loopback connects."""
    for name in CLEARED:
        os.environ.pop(name, None)
    socket.socket.connect = loopback.connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = loopback.connect_ex  # type: ignore[method-assign,assignment]
