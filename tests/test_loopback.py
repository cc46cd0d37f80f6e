"""The loopback guard every test (and the benchmark) runs under."""

from __future__ import annotations

import socket

import pytest

from phonehome_plugin.testing import loopback


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (("127.0.0.1", 80), True),
        (("127.8.9.10", 80), True),
        (("::1", 80, 0, 0), True),
        (("localhost", 80), True),
        ("/run/postgresql/.s.PGSQL.5432", True),
        (("10.0.0.1", 80), False),
        (("192.168.1.1", 443), False),
        (("203.0.113.7", 443), False),
        (("telemetry.maestrohub.com", 443), False),
    ],
)
def test_is_local(address: object, local: bool) -> None:
    assert loopback.is_local(address) is local


def test_the_guard_is_on_in_every_test() -> None:
    with socket.socket() as sock, pytest.raises(OSError, match="must stay on loopback"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: refused before any packet leaves


def test_loopback_still_connects() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
            assert client.getpeername() == server.getsockname()
