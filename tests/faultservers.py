"""Loopback servers that misbehave on purpose, and a host that drives the real plugin.

Everything listens on ``127.0.0.1`` on a port the OS picks, speaks HTTP/1.1 over
raw sockets (so that it can do what no well-behaved server library does: hang,
reset, trickle, hang up half way), and runs on daemon threads that ``close()``
ends.

- :class:`FaultServer`: a telemetry endpoint that follows a script, one
  behaviour per request in arrival order (:class:`Reply`, :class:`Silent`,
  :class:`Reset`, :class:`Trickle`, :class:`CloseAfterHeaders`, :class:`Hang`,
  :class:`Linger`, :class:`Endless`), then a default.
  Like the real receiver it deduplicates by ``Idempotency-Key``: the first 2xx
  for a key accepts the report, a later one counts as a duplicate.
- :class:`Proxy`: an HTTP proxy (``CONNECT`` tunnels and absolute-form
  forwarding) that counts what it carried and refuses any non-loopback target.
- :func:`make_tls`: a trustme CA and a server certificate for 127.0.0.1/localhost.
- :class:`Host`: the simulated host (:class:`~phonehome_plugin.testing.simhost.SimHost`)
  loading the installed entry points, ticked at given times, timing every hook call.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import trustme

import hookspecs.phonehome
from hookspecs import hookimpl
from phonehome_plugin import plugin
from phonehome_plugin.config import switch
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimApp, SimHost, SimState

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
    (``"reset"``) it: a client that closes with unread bytes makes its kernel reset."""

    status: int = 202
    body: bytes = b'{"status": "accepted"}'
    chunked: bool = False


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
        self.connections = 0
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
    :param then: the behaviour of every later request.
    :param tls: a server-side TLS context: the endpoint is then ``https://``.
    """

    def __init__(
        self,
        script: Sequence[Behaviour] = (),
        then: Behaviour = Reply(200),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self._script: list[Behaviour] = list(script)
        self._then: Behaviour = then
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
        return f"{scheme}://127.0.0.1:{self.port}/v1/reports"

    def behave(self, script: Sequence[Behaviour] = (), then: Behaviour = Reply(200)) -> None:
        """Replace the script from the next request on."""
        with self._cond:
            self._script = list(script)
            self._then = then

    def _next(self) -> Behaviour:
        with self._cond:
            return self._script.pop(0) if self._script else self._then

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
        behaviour = self._next()
        if isinstance(behaviour, Reset) and behaviour.at_once:
            _reset(conn)
            return
        if isinstance(behaviour, CloseAfterHeaders):
            return
        method, target, headers = parsed
        raw = read_body(conn, buffer, int(headers.get("content-length", "0")))
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        seen = Seen(method, target, headers, raw, body)
        with self._cond:
            self.requests.append(seen)
            self._cond.notify_all()
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
        else:
            self._accept_report(seen, behaviour.status)
            extra = "".join(f"{k}: {v}\r\n" for k, v in behaviour.headers.items())
            conn.sendall(
                _status_line(behaviour.status)
                + f"{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
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
        # One send: the whole answer is in the client's receive buffer at once.
        conn.sendall(
            _status_line(behaviour.status)
            + b"Content-Type: application/json\r\n"
            + framing
            + b"\r\n"
            + body
        )
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
    every absolute-form request. Targets off loopback are refused with 403.
    """

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.forwarded: list[str] = []
        self.refused: list[str] = []
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


# TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """A server context whose certificate (127.0.0.1, localhost) is signed by ``ca_file``."""

    server: ssl.SSLContext
    ca_file: Path


def make_tls(directory: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server)
    ca_file = directory / "trustme-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(server, ca_file)


# A host -------------------------------------------------------------------------------

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@dataclass
class Timings:
    """CPU time of the host's thread in every hook call the host made, in seconds.

    CPU time, not wall time: on a shared machine wall-clock maxima measure the
    scheduler, not the hook. What a hook costs the host's thread is its CPU; a
    hook that blocks instead (on the network, on a lock held for long) shows in
    the tests of that fault by what does or does not happen, never by a clock.
    """

    startup: list[float] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    shutdown: list[float] = field(default_factory=list)

    def slow_ticks(self, budget: float) -> list[float]:
        """Ticks that used ``budget`` seconds of CPU or more."""
        return [t for t in self.ticks if t >= budget]

    def observe(self, hook: str, wall: float, cpu: float) -> None:
        """A :class:`SimHost` ``hook_observer``: keeps the CPU time of each call."""
        kept = {"on_startup": self.startup, "on_tick": self.ticks, "on_shutdown": self.shutdown}
        if hook in kept:
            kept[hook].append(cpu)


class _RuntimeWithPolicy:
    """Builds the runtime with ``policy`` and registers it, first in ``on_startup``,
    as :func:`phonehome_plugin.plugin._start` would build it (which then finds it)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    @hookimpl(tryfirst=True)
    def on_startup(self, app: Any) -> None:
        decision = switch.resolve(app.config)
        assert decision.on and decision.settings is not None, decision.reason
        pm = app.plugin_manager
        pm.add_hookspecs(hookspecs.phonehome)
        runtime = Runtime(app, decision.settings, policy=self.policy)
        pm.register(runtime, name=plugin.RUNTIME_NAME)
        runtime.start()


class Host:
    """A MaestroHub host start (:class:`SimHost`, plugins from the installed entry points)
    ticked at given times, timing every hook call in CPU seconds (:class:`Timings`).

    :param section: ``modules.phonehome`` of config.yaml.
    :param policy: when given, the runtime is built with it and registered before the
        plugin's ``on_startup`` runs, so that in-series waits stay short in tests.
    :param users: the users module's inventory, synced at start.
    """

    def __init__(
        self,
        data_dir: Path,
        section: Mapping[str, Any],
        started_at: datetime = START,
        policy: RetryPolicy | None = None,
        users: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        state = SimState()
        state.modules["users"] = {str(user["id"]): dict(user) for user in users}
        self.timings = Timings()
        self.sim = SimHost(
            {"modules": {"phonehome": dict(section)}},
            data_dir,
            clock=SimClock(started_at),
            started_at=started_at,
            extra_plugins=() if policy is None else (_RuntimeWithPolicy(policy),),
            state=state,
            hook_observer=self.timings.observe,
        )
        self.pm = self.sim.plugin_manager

    @property
    def app(self) -> SimApp:
        return self.sim.app

    @property
    def now(self) -> datetime:
        return self.sim.clock.now()

    @property
    def runtime(self) -> Runtime:
        runtime = self.pm.get_plugin(plugin.RUNTIME_NAME)
        assert isinstance(runtime, Runtime), "telemetry did not start"
        return runtime

    def start(self) -> None:
        self.sim.start()

    def tick(self, now: datetime, idle: float = 10.0) -> None:
        """One ``on_tick`` at ``now`` (timed), then wait until the worker handled it."""
        self.sim.tick_at(now)
        if idle:
            assert self.runtime.worker.wait_idle(idle), "worker still busy"

    def shutdown(self) -> None:
        self.sim.shutdown()


@contextlib.contextmanager
def running(host: Host) -> Iterator[Host]:
    host.start()
    try:
        yield host
    finally:
        host.shutdown()
