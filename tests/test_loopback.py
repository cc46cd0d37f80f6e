"""The loopback guard every test (and the testing kit's pytest plugin) runs under:
connections and name lookups off the machine are refused before anything leaves."""

from __future__ import annotations

import http.client
import socket
from typing import Any

import pytest
import requests

from phonehome_plugin.testing import loopback
from phonehome_plugin.testing.endpoint import Receiver


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (("127.0.0.1", 80), True),
        (("127.8.9.10", 80), True),
        (("::1", 80, 0, 0), True),
        (("localhost", 80), True),
        (("LOCALHOST", 80), True),
        (("", 80), True),
        ("/run/postgresql/.s.PGSQL.5432", True),
        (("10.0.0.1", 80), False),
        (("192.168.1.1", 443), False),
        (("203.0.113.7", 443), False),
        (("telemetry.maestrohub.com", 443), False),
        (("localhost.example", 443), False),
        ((b"ip-api.com", 80), False),
        ((None, 80), True),
    ],
)
def test_is_local(address: object, local: bool) -> None:
    assert loopback.is_local(address) is local


def test_the_guard_is_on_in_every_test() -> None:
    with socket.socket() as sock, pytest.raises(OSError, match="must stay on loopback"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: refused before any packet leaves


def test_udp_datagrams_off_the_machine_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError, match="must stay on loopback"):
            sock.sendto(b"query", ("192.0.2.53", 53))
        with pytest.raises(OSError, match="must stay on loopback"):
            sock.sendto(b"query", 0, ("192.0.2.53", 53))


@pytest.fixture
def no_resolver(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The real lookups behind the guard, replaced by stand-ins that fail the test: a
    guard that let a lookup through would reach them, never the network's resolver."""
    reached: list[object] = []

    def stand_in(host: object, *args: object, **kwargs: object) -> Any:
        reached.append(host)
        raise AssertionError(f"the guard let a lookup of {host!r} through")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(loopback, f"_real_{name}", stand_in)
    monkeypatch.setattr(loopback, "_real_getnameinfo", lambda address, flags: stand_in(address))
    return reached


@pytest.mark.usefixtures("no_resolver")
@pytest.mark.parametrize("name", ["ip-api.com", "telemetry.maestrohub.com", "192.0.2.1"])
def test_name_lookups_off_the_machine_are_refused(name: str) -> None:
    """The default endpoint's and GeoIP service's names: a test with the default
    config must not even ask the DNS server about them."""
    with pytest.raises(socket.gaierror, match="must stay on loopback"):
        socket.getaddrinfo(name, 443)
    with pytest.raises(socket.gaierror, match="must stay on loopback"):
        socket.gethostbyname(name)
    with pytest.raises(socket.gaierror, match="must stay on loopback"):
        socket.gethostbyname_ex(name)
    with pytest.raises(socket.herror, match="must stay on loopback"):
        socket.gethostbyaddr(name)
    with pytest.raises(socket.gaierror, match="must stay on loopback"):
        socket.getnameinfo((name, 443), 0)
    with pytest.raises(socket.gaierror):
        socket.create_connection((name, 443), timeout=1)


@pytest.mark.usefixtures("no_resolver")
def test_the_libraries_that_resolve_through_python_are_refused_too() -> None:
    with pytest.raises(requests.ConnectionError, match="must stay on loopback"):
        requests.get("https://telemetry.maestrohub.com/v1/reports", timeout=1)
    connection = http.client.HTTPConnection("ip-api.com", timeout=1)
    with pytest.raises(socket.gaierror):
        connection.request("GET", "/json")
    connection.close()


def test_local_names_still_resolve() -> None:
    assert {info[4][0] for info in socket.getaddrinfo("127.0.0.1", 80)} == {"127.0.0.1"}
    assert socket.gethostbyname("localhost").startswith("127.")
    assert socket.getaddrinfo(None, 0, flags=socket.AI_PASSIVE)
    assert socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)[0] == "127.0.0.1"
    # getfqdn answers the name it was given when the reverse lookup is refused.
    assert socket.getfqdn("telemetry.maestrohub.com") == "telemetry.maestrohub.com"


def test_loopback_still_connects() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())
            assert client.getpeername() == server.getsockname()
    with Receiver() as receiver:
        answer = requests.get(receiver.geoip_url.replace("127.0.0.1", "localhost"), timeout=5)
        assert answer.json()["status"] == "success"


def test_guard_applies_every_patch_for_its_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # as outside pytest: nothing patched
    unguarded = socket.getaddrinfo
    assert unguarded is not loopback.getaddrinfo
    with loopback.guard():
        for owner, name, replacement in loopback.PATCHES:
            assert getattr(owner, name) is replacement
        with socket.socket() as sock, pytest.raises(OSError, match="must stay on loopback"):
            sock.connect(("192.0.2.1", 443))
    assert socket.getaddrinfo is unguarded
    assert {(owner, name) for owner, name, _ in loopback.PATCHES} >= {
        (socket.socket, "connect"),
        (socket, "getaddrinfo"),
    }
