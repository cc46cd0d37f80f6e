"""Keeping a process on this machine: connections and name lookups off it are refused.

For the simulated host's users (module authors' tests, through the testing kit's
pytest plugin), this project's tests and its benchmarks, which must never reach an
address off the machine whatever a bug or the environment (a proxy variable, say)
would make them do. A name lookup reaches off the machine as surely as a connection
(the resolver asks the network's DNS server), so both are guarded:

- ``socket.socket.connect``, ``connect_ex`` and ``sendto`` accept a Unix socket path,
  ``localhost`` and loopback IP addresses only, and raise ``OSError`` otherwise,
  before any packet leaves;
- ``socket.getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``
  and ``getnameinfo`` answer for ``localhost``, an empty host (the wildcard address)
  and loopback IP addresses only, and raise ``socket.gaierror`` (``herror`` for the
  reverse lookups) for any other name or address, before the resolver is asked.
  ``socket.create_connection``, ``http.client``, urllib3 and requests resolve through
  ``getaddrinfo``, so they are guarded too.

:data:`PATCHES` lists them all; :func:`guard` applies them for a ``with`` block, and a
pytest fixture applies them with ``monkeypatch.setattr`` (``tests/conftest.py``, the
kit's :mod:`.pytest_plugin`). What resolves names in C without Python's socket module
(libpq, for one) is not seen here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
_real_sendto = socket.socket.sendto
_real_getaddrinfo = socket.getaddrinfo
_real_gethostbyname = socket.gethostbyname
_real_gethostbyname_ex = socket.gethostbyname_ex
_real_gethostbyaddr = socket.gethostbyaddr
_real_getnameinfo = socket.getnameinfo


def is_local(address: Any) -> bool:
    """True for a Unix socket path, ``localhost`` and loopback IP addresses."""
    if isinstance(address, str | bytes):
        return True
    return is_local_host(address[0])


def is_local_host(host: Any) -> bool:
    """True for ``localhost``, an empty host (the wildcard) and loopback IP addresses:
    the names and addresses whose lookup or use never leaves the machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(address: Any) -> None:
    if not is_local(address):
        raise OSError(f"tried to reach {address!r}: this process must stay on loopback")


def _refuse_lookup(host: Any, error: type[OSError] = socket.gaierror) -> None:
    if not is_local_host(host):
        raise error(
            socket.EAI_NONAME,
            f"tried to look up {host!r}: this process must stay on loopback",
        )


def connect(self: socket.socket, address: Any) -> None:
    """``socket.connect`` for loopback only."""
    _refuse(address)
    _real_connect(self, address)


def connect_ex(self: socket.socket, address: Any) -> int:
    """``socket.connect_ex`` for loopback only."""
    _refuse(address)
    return _real_connect_ex(self, address)


def sendto(self: socket.socket, data: Any, *flags_and_address: Any) -> int:
    """``socket.sendto`` (``sendto(data, address)`` or ``sendto(data, flags, address)``)
    for loopback only."""
    _refuse(flags_and_address[-1])
    return _real_sendto(self, data, *flags_and_address)


def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    """``socket.getaddrinfo`` for local names and addresses only."""
    _refuse_lookup(host)
    return _real_getaddrinfo(host, *args, **kwargs)


def gethostbyname(host: str) -> str:
    """``socket.gethostbyname`` for local names and addresses only."""
    _refuse_lookup(host)
    return _real_gethostbyname(host)


def gethostbyname_ex(host: str) -> tuple[str, list[str], list[str]]:
    """``socket.gethostbyname_ex`` for local names and addresses only."""
    _refuse_lookup(host)
    return _real_gethostbyname_ex(host)


def gethostbyaddr(host: str) -> tuple[str, list[str], list[str]]:
    """``socket.gethostbyaddr`` (a reverse lookup) for local names and addresses only;
    ``socket.getfqdn`` goes through it and answers the name it was given when refused."""
    _refuse_lookup(host, socket.herror)
    return _real_gethostbyaddr(host)


def getnameinfo(address: Any, flags: int) -> tuple[str, str]:
    """``socket.getnameinfo`` for loopback addresses only."""
    _refuse_lookup(address[0])
    return _real_getnameinfo(address, flags)


PATCHES: tuple[tuple[object, str, Callable[..., Any]], ...] = (
    (socket.socket, "connect", connect),
    (socket.socket, "connect_ex", connect_ex),
    (socket.socket, "sendto", sendto),
    (socket, "getaddrinfo", getaddrinfo),
    (socket, "gethostbyname", gethostbyname),
    (socket, "gethostbyname_ex", gethostbyname_ex),
    (socket, "gethostbyaddr", gethostbyaddr),
    (socket, "getnameinfo", getnameinfo),
)
"""``(owner, attribute, guarded replacement)`` for everything the guard replaces."""


def install(setattr_: Callable[[object, str, Any], None]) -> None:
    """Apply every patch through ``setattr_`` (``monkeypatch.setattr``, which undoes
    them after the test)."""
    for owner, name, replacement in PATCHES:
        setattr_(owner, name, replacement)


@contextmanager
def guard() -> Iterator[None]:
    """The guard for the ``with`` block, for code that runs outside pytest."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PATCHES]
    install(setattr)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
