"""Loopback servers that misbehave on purpose: the fault-injecting sibling of
:mod:`.endpoint`, for tests and benchmarks.

:class:`~.endpoint.Receiver` is the well-behaved receiver (the demo's, and what a
test wants when it checks what arrived); the servers here do what no well-behaved
server library does: hang, reset, trickle, hang up half way. They listen on
``127.0.0.1`` on a port the OS picks, speak HTTP/1.1 over raw sockets, serve the
same path (:data:`.endpoint.REPORTS_PATH`) and run on daemon threads that ``close()``
ends.

- :class:`FaultServer`: a telemetry endpoint that follows a script, one
  behaviour per request in arrival order (:class:`Reply`, :class:`Silent`,
  :class:`Reset`, :class:`Trickle`, :class:`CloseAfterHeaders`, :class:`Hang`,
  :class:`Linger`, :class:`Endless`), then a default.
  Like the real receiver it deduplicates by ``Idempotency-Key``: the first 2xx
  for a key accepts the report, a later one counts as a duplicate.
- :class:`Proxy`: an HTTP proxy (``CONNECT`` tunnels and absolute-form
  forwarding) that counts what it carried and refuses any non-loopback target.

Both count the connections they accept (``connections``, ``wait_connections()``),
whether or not a request follows on one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from phonehome_plugin.testing.endpoint import GEOIP_PATH, REPORTS_PATH

__all__ = [
    "Behaviour",
    "CloseAfterHeaders",
    "Endless",
    "FaultServer",
    "Hang",
    "Linger",
    "Proxy",
    "Reply",
    "Reset",
    "Seen",
    "Silent",
    "Trickle",
    "read_body",
    "read_head",
]

HEAD_LIMIT = 64 * 1024
IO_TIMEOUT = 5.0


# Behaviours -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Read the request, answer ``status`` with ``headers``, close."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Silent:
    """Read the request, never answer (hold the connection until the server closes)."""


@dataclass(frozen=True)
class Reset:
    """Read the request (unless ``at_once``), then reset the connection (RST)."""

    at_once: bool = False


@dataclass(frozen=True)
class Trickle:
    """Read the request, accept it, then send a ``status`` answer one byte per ``every`` s."""

    status: int = 200
    every: float = 1.0


@dataclass(frozen=True)
class CloseAfterHeaders:
    """Read the request's head, then hang up without reading the body or answering."""


@dataclass(frozen=True)
class Hang:
    """Read the request, accept it, send a head promising ``length`` body bytes, send none."""

    status: int = 200
    length: int = 10**9


@dataclass(frozen=True)
class Linger:
    """Read the request, accept it, answer ``status`` with ``body`` (``Content-Length``,
    or one chunk when ``chunked``), then read until the client ends the connection,
    recording in :attr:`FaultServer.endings` whether it closed (``"eof"``) or reset
    (``"reset"``) it: a client that closes with unread bytes makes its kernel reset.
    ``headers`` go out before the framing (``Content-Type: application/json`` unless
    they say otherwise)."""

    status: int = 202
    body: bytes = b'{"status": "accepted"}'
    chunked: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endless:
    """Read the request, accept it, answer ``status`` with a body that never ends
    (chunks when ``chunked``, else a ``Content-Length`` of a terabyte), sent as fast as
    the client reads, until the client hangs up; :attr:`FaultServer.endings` records
    how it did (``"reset"`` when it closed with bytes unread)."""

    status: int = 202
    chunked: bool = False


Behaviour = Reply | Silent | Reset | Trickle | CloseAfterHeaders | Hang | Linger | Endless


@dataclass(frozen=True)
class Seen:
    """One request the server read in full."""

    method: str
    target: str
    headers: Mapping[str, str]  # lower-case names
    raw: bytes  # the body as sent
    body: bytes  # after gzip, if any

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} Scripted\r\n".encode()


# The endpoint --------------------------------------------------------------------------


class _Listener:
    """Accept loop and connection bookkeeping shared by the server and the proxy."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.closing = threading.Event()
        self._waker = socket.socketpair()  # readable once the server closes
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepted = threading.Condition(self._lock)
        self.connections = 0
        """Connections accepted so far, whether or not a request followed on them."""
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="fault-accept")
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self.closing.is_set():
                    conn.close()
                    return
                self.connections += 1
                index = self.connections - 1
                self._open.add(conn)
                self._accepted.notify_all()
            thread = threading.Thread(
                target=self._serve, args=(conn, index), daemon=True, name="fault-conn"
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            conn.settimeout(IO_TIMEOUT)
            self.handle(conn, index)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Wait (real time) until ``count`` connections in all were accepted."""
        with self._accepted:
            return self._accepted.wait_for(lambda: self.connections >= count, timeout)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.closing.set()
        self._waker[1].send(b"x")
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            sockets = list(self._open)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(2)
        for thread in threads:
            thread.join(2)
        for end in self._waker:
            end.close()


def read_head(conn: socket.socket, buffer: bytearray) -> tuple[str, str, dict[str, str]] | None:
    """Read up to the blank line; the bytes after it stay in ``buffer``. None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > HEAD_LIMIT:
            raise ValueError("head too large")
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def read_body(conn: socket.socket, buffer: bytearray, length: int) -> bytes:
    while len(buffer) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("body cut short")
        buffer += chunk
    body, buffer[:] = bytes(buffer[:length]), buffer[length:]
    return body


class FaultServer(_Listener):
    """A telemetry endpoint that misbehaves by script; see the module docs.

    :param script: behaviours for the first requests, in arrival order.
    :param then: the behaviour of every later request, or a function called for each
        one that returns it (for a test that changes the answer as it goes).
    :param tls: a server-side TLS context: the endpoint is then ``https://``.
    :param geoip: when given, the server plays the GeoIP service too (as
        :class:`~.endpoint.Receiver` does, at ``geoip_url``): every ``GET`` is answered
        200 with this JSON object (or what this function returns at the time), outside
        the script, and counted in ``geoip_requests``.
    :param on_request: called with every request the server read in full, on the
        connection's thread, before it is answered.
    :param admit: called likewise; a behaviour it returns replaces the script's for that
        request (a relay that answers 401 to a request without its header), None
        leaves the script's.
    """

    def __init__(
        self,
        script: Sequence[Behaviour] = (),
        then: Behaviour | Callable[[], Behaviour] = Reply(200),
        tls: ssl.SSLContext | None = None,
        *,
        geoip: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        on_request: Callable[[Seen], None] | None = None,
        admit: Callable[[Seen], Behaviour | None] | None = None,
    ) -> None:
        self.tls = tls
        self.admit = admit
        self._script: list[Behaviour] = list(script)
        self._then: Behaviour | Callable[[], Behaviour] = then
        self.geoip = geoip
        self.on_request = on_request
        self.geoip_requests = 0
        self.requests: list[Seen] = []
        self.reports: dict[str, dict[str, Any]] = {}
        self.accepted: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.tls_failures = 0
        self.hangups: list[float] = []
        """When (monotonic) a client hung up on a request the server was holding."""
        self.endings: list[str] = []
        """How clients ended :class:`Linger` and :class:`Endless` connections, in order:
        ``"eof"`` (a clean close), ``"reset"``, ``"open"`` (still open after
        ``IO_TIMEOUT``) or ``"server closed"``."""
        self._cond = threading.Condition()
        super().__init__()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{REPORTS_PATH}"

    @property
    def geoip_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{GEOIP_PATH}"

    def behave(
        self,
        script: Sequence[Behaviour] = (),
        then: Behaviour | Callable[[], Behaviour] = Reply(200),
    ) -> None:
        """Replace the script from the next request on."""
        with self._cond:
            self._script = list(script)
            self._then = then

    def _next(self) -> Behaviour:
        with self._cond:
            if self._script:
                return self._script.pop(0)
            then = self._then
        return then() if callable(then) else then

    def handle(self, conn: socket.socket, index: int) -> None:
        if self.tls is None:
            self._exchange(conn)
            return
        try:
            wrapped = self.tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            with self._cond:
                self.tls_failures += 1
                self._cond.notify_all()
            return
        self.track(wrapped)
        try:
            self._exchange(wrapped)
        finally:
            self.untrack(wrapped)
            wrapped.close()

    def _exchange(self, conn: socket.socket) -> None:
        buffer = bytearray()
        parsed = read_head(conn, buffer)
        if parsed is None:
            return
        if self.geoip is not None and parsed[0] == "GET":
            self._answer_geoip(conn, parsed)
            return
        behaviour = self._next()
        if isinstance(behaviour, Reset) and behaviour.at_once:
            _reset(conn)
            return
        if isinstance(behaviour, CloseAfterHeaders):
            return
        method, target, headers = parsed
        raw = read_body(conn, buffer, int(headers.get("content-length", "0")))
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        seen = self._seen(Seen(method, target, headers, raw, body))
        if self.admit is not None:
            behaviour = self.admit(seen) or behaviour
        self._act(conn, behaviour, seen)

    def _act(self, conn: socket.socket, behaviour: Behaviour, seen: Seen) -> None:
        """Do what ``behaviour`` says with a request read in full."""
        if isinstance(behaviour, Reset):
            _reset(conn)
        elif isinstance(behaviour, Silent):
            self._hold(conn)
        elif isinstance(behaviour, Hang):
            self._accept_report(seen, behaviour.status)
            conn.sendall(
                _status_line(behaviour.status)
                + f"Content-Length: {behaviour.length}\r\n\r\n".encode()
            )
            self._hold(conn)
        elif isinstance(behaviour, Linger | Endless):
            self._accept_report(seen, behaviour.status)
            ending = (
                self._linger(conn, behaviour)
                if isinstance(behaviour, Linger)
                else self._endless(conn, behaviour)
            )
            with self._cond:
                self.endings.append(ending)
                self._cond.notify_all()
        elif isinstance(behaviour, Trickle):
            self._accept_report(seen, behaviour.status)
            answer = _status_line(behaviour.status) + b"Content-Length: 0\r\n\r\n"
            for byte in answer:
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    self._hung_up()
                    return
                if self._hold(conn, behaviour.every):
                    return
        elif isinstance(behaviour, Reply):
            self._accept_report(seen, behaviour.status)
            extra = "".join(f"{k}: {v}\r\n" for k, v in behaviour.headers.items())
            conn.sendall(
                _status_line(behaviour.status)
                + f"{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )

    def _seen(self, seen: Seen) -> Seen:
        with self._cond:
            self.requests.append(seen)
            self._cond.notify_all()
        if self.on_request is not None:
            self.on_request(seen)
        return seen

    def _answer_geoip(self, conn: socket.socket, parsed: tuple[str, str, dict[str, str]]) -> None:
        method, target, headers = parsed
        self._seen(Seen(method, target, headers, b"", b""))
        answer = self.geoip() if callable(self.geoip) else self.geoip
        body = json.dumps(dict(answer or {})).encode()
        with self._cond:
            self.geoip_requests += 1
            self._cond.notify_all()
        conn.sendall(
            _status_line(200)
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def _hold(self, conn: socket.socket, seconds: float | None = None) -> bool:
        """Wait until the client hangs up (True), the server closes, or ``seconds`` pass.

        Blocks without polling, so that a held connection costs the process no wake-ups.
        """
        waker, _ = self._waker
        ready, _, _ = select.select([conn, waker], [], [], seconds)
        if conn in ready:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._hung_up()
                return True
        return bool(ready)

    def _linger(self, conn: socket.socket, behaviour: Linger) -> str:
        """Answer with the whole body at once, then how the client ended the connection."""
        body = behaviour.body
        if behaviour.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
            chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""
            body = chunk + b"0\r\n\r\n"
        else:
            framing = f"Content-Length: {len(body)}\r\n".encode()
        headers = {"Content-Type": "application/json", **behaviour.headers}
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        # One send: the whole answer is in the client's receive buffer at once.
        conn.sendall(_status_line(behaviour.status) + extra + framing + b"\r\n" + body)
        return self._await_end(conn)

    def _await_end(self, conn: socket.socket) -> str:
        """Read (and drop) whatever the client sends until it ends the connection."""
        waker, _ = self._waker
        while True:
            ready, _, _ = select.select([conn, waker], [], [], IO_TIMEOUT)
            if waker in ready:
                return "server closed"
            if not ready:
                return "open"
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                return "reset"
            if not data:
                return "eof"

    def _endless(self, conn: socket.socket, behaviour: Endless) -> str:
        """Send the head, then body until the client hangs up; how it did."""
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if behaviour.chunked
            else f"Content-Length: {10**12}\r\n".encode()
        )
        piece = b"x" * 65536
        if behaviour.chunked:
            piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        try:
            conn.sendall(_status_line(behaviour.status) + framing + b"\r\n")
            while not self.closing.is_set():
                conn.sendall(piece)  # blocks while the client is not reading
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "open"
        return "server closed"

    def _hung_up(self) -> None:
        with self._cond:
            self.hangups.append(time.monotonic())
            self._cond.notify_all()

    def _accept_report(self, seen: Seen, status: int) -> None:
        if not 200 <= status < 300 or seen.key is None:
            return
        with self._cond:
            if seen.key in self.reports:
                self.duplicates[seen.key] += 1
            else:
                self.accepted[seen.key] += 1
                try:
                    self.reports[seen.key] = seen.json()
                except ValueError:
                    self.reports[seen.key] = {}
            self._cond.notify_all()

    def wait_for(self, test: Callable[[FaultServer], bool], timeout: float = 5.0) -> bool:
        """Wait (real time) until ``test(self)`` holds; for a server-side event only."""
        with self._cond:
            return self._cond.wait_for(lambda: test(self), timeout)


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# The proxy --------------------------------------------------------------------------


class Proxy(_Listener):
    """A forwarding HTTP proxy on loopback: ``CONNECT`` tunnels and absolute-form requests.

    ``tunnels`` lists the ``host:port`` of every CONNECT, ``forwarded`` the URL of
    every absolute-form request, ``heads`` the method, target and headers (lower-case
    names) of every request the proxy was asked, in arrival order. Targets off loopback
    are refused with 403.
    """

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.forwarded: list[str] = []
        self.refused: list[str] = []
        self.heads: list[tuple[str, str, dict[str, str]]] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, conn: socket.socket, index: int) -> None:
        buffer = bytearray()
        parsed = read_head(conn, buffer)
        if parsed is None:
            return
        method, target, headers = parsed
        self.heads.append(parsed)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            if not _loopback(host):
                self.refused.append(target)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            upstream = socket.create_connection((host.strip("[]"), int(port)), IO_TIMEOUT)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(conn, upstream, bytes(buffer))
            return
        scheme, _, rest = target.partition("://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        if scheme != "http" or not _loopback(host):
            self.refused.append(target)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.forwarded.append(target)
        upstream = socket.create_connection((host, int(port or 80)), IO_TIMEOUT)
        kept = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if not name.startswith("proxy-")
        )
        upstream.sendall(f"{method} /{path} HTTP/1.1\r\n{kept}\r\n".encode("latin-1"))
        self._pipe(conn, upstream, bytes(buffer))

    def _pipe(self, client: socket.socket, upstream: socket.socket, pending: bytes) -> None:
        self.track(upstream)
        try:
            if pending:
                upstream.sendall(pending)
            ends = {client: upstream, upstream: client}
            waker, _ = self._waker
            while True:
                ready, _, _ = select.select([*ends, waker], [], [])
                if waker in ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    ends[sock].sendall(data)
        finally:
            self.untrack(upstream)
            upstream.close()


def _loopback(host: str) -> bool:
    return host.strip("[]") in ("127.0.0.1", "localhost", "::1")
