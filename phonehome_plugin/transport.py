"""One HTTP POST of one report, with a hard deadline: the only code that opens sockets.

``requests`` and urllib3 timeouts bound each wait for a byte, not the whole
exchange, so a server that trickles one byte a second could hold a send for
hours, and a slow resolver is not bounded at all. Each POST therefore runs on a
short-lived daemon thread, and the caller waits at most the deadline. When it
gives up it shuts down the exchange's sockets, so the abandoned thread ends at
once instead of trickling on (only a thread stuck in the resolver outlives its
deadline, and at most :data:`MAX_ABANDONED` of those). The report stays in the
outbox: a late success that is sent again is dropped by the receiver through
its ``Idempotency-Key``.

Each exchange has its own session (reports go out once an hour; a shared
connection pool would buy nothing and would tie an abandoned thread to the next
one). TLS verification is always on (``ca_bundle`` replaces the trust store),
redirects are never followed, plain ``http://`` is refused except to loopback,
and only the status line and headers are read: the answer's body is never
downloaded. Proxies: the config's ``proxy`` for every request if set, otherwise
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment.

Retries belong to :mod:`.retry` alone, so urllib3's own are switched off.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import gzip
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from phonehome_plugin import __version__
from phonehome_plugin.config import Settings, is_loopback_host

if TYPE_CHECKING:
    import requests

GZIP_ABOVE = 1024
MAX_ABANDONED = 4
USER_AGENT = f"maestrohub-phonehome/{__version__}"
CONNECT_TIMEOUT = 5.0
CANCEL_POLL = 0.2
"""Seconds between checks of the cancel flag while a POST is in flight (shutdown latency)."""


@dataclass(frozen=True)
class Answer:
    """What one POST came to: an HTTP status, or an error kind when there was none."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


class _Exchange:
    """The sockets of one POST, so that an abandoned POST can be cut off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self._finished = False

    def track(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same socket: shutdown acts on the socket, and
        # the duplicate stays valid when TLS takes over (and detaches) the original.
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if self._finished:
                dup.close()
                return
            self._sockets.append(dup)
            cut = self._abandoned
        if cut:
            _shut(dup)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            sockets = [] if self._finished else list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


_current = threading.local()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Transport:
    """POSTs report bodies to ``settings.endpoint``; safe to call from one thread at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._hanging: list[tuple[threading.Thread, _Exchange]] = []
        parts = urlsplit(settings.endpoint)
        self.refused: str | None = None
        if parts.scheme != "https" and not (
            parts.scheme == "http" and is_loopback_host(parts.hostname)
        ):
            self.refused = "refused: only https:// (or http:// to loopback) is allowed"

    def post(
        self, body: bytes, report_id: str, deadline: float, cancel: threading.Event
    ) -> Answer:
        """POST ``body``; returns within ``deadline`` seconds (sooner when ``cancel`` is set)."""
        if self.refused:
            return Answer(None, self.refused)
        self._hanging = [(t, x) for t, x in self._hanging if t.is_alive()]
        if len(self._hanging) >= MAX_ABANDONED:
            return Answer(None, "too many requests still hanging")
        box: list[Answer] = []
        done = threading.Event()
        exchange = _Exchange()
        thread = threading.Thread(
            target=self._exchange,
            args=(body, report_id, deadline, exchange, box, done),
            name="phonehome-post",
            daemon=True,
        )
        end = time.monotonic() + deadline
        thread.start()
        # Poll for cancel rarely: each wake-up takes the GIL from the host's threads.
        while not done.wait(min(CANCEL_POLL, max(0.0, end - time.monotonic()))):
            if cancel.is_set() or time.monotonic() >= end:
                exchange.abandon()
                self._hanging.append((thread, exchange))
                return Answer(None, "cancelled" if cancel.is_set() else "deadline")
        return box[0]

    def _exchange(
        self,
        body: bytes,
        report_id: str,
        deadline: float,
        exchange: _Exchange,
        box: list[Answer],
        done: threading.Event,
    ) -> None:
        _current.exchange = exchange
        try:
            box.append(self._request(body, report_id, deadline))
        except Exception as error:  # anything from the HTTP stack is an unsent report, no more
            box.append(Answer(None, _kind(error)))
        finally:
            _current.exchange = None
            exchange.finish()
            done.set()

    def _request(self, body: bytes, report_id: str, deadline: float) -> Answer:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": report_id,
            "User-Agent": USER_AGENT,
        }
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        settings = self.settings
        with make_session(settings) as session:
            response = session.post(
                settings.endpoint,
                data=body,
                headers=headers,
                timeout=(min(CONNECT_TIMEOUT, deadline), deadline),
                allow_redirects=False,
                stream=True,  # the status line and headers are the answer
                # Given per request so that they win over REQUESTS_CA_BUNDLE and
                # HTTPS_PROXY (requests lets the environment override the session).
                verify=str(settings.ca_bundle) if settings.ca_bundle else True,
                proxies=_proxies(settings),
            )
            with response:
                return Answer(response.status_code, None, retry_after(response.headers))

    def close(self) -> None:
        """Cut off every POST still hanging (at shutdown)."""
        for _, exchange in self._hanging:
            exchange.abandon()
        self._hanging = []


def _proxies(settings: Settings) -> dict[str, str]:
    if settings.proxy:
        return {"http": settings.proxy, "https": settings.proxy}
    return {}


def make_session(settings: Settings) -> requests.Session:
    """A session with TLS verification on, proxies from config or environment, no retries."""
    import requests

    session = requests.Session()
    session.trust_env = True  # HTTPS_PROXY, NO_PROXY; REQUESTS_CA_BUNDLE unless ca_bundle
    session.verify = str(settings.ca_bundle) if settings.ca_bundle else True
    session.proxies = _proxies(settings)
    adapter = _adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _adapter() -> Any:
    return _adapter_class()()


@functools.cache
def _adapter_class() -> Any:
    """The adapter class, built on first use (``requests`` is imported on the worker)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.util.retry import Retry

    class Tracking:
        def _new_conn(self) -> socket.socket:
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            exchange = getattr(_current, "exchange", None)
            if exchange is not None:
                exchange.track(sock)
            return sock

    class TrackedHTTP(Tracking, HTTPConnection):
        pass

    class TrackedHTTPS(Tracking, HTTPSConnection):
        pass

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPS

    pools = {"http": HTTPPool, "https": HTTPSPool}

    class Adapter(HTTPAdapter):
        """No retries, and sockets an abandoned exchange can shut down."""

        def __init__(self) -> None:
            super().__init__(max_retries=Retry(total=0, redirect=0, raise_on_status=False))

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta seconds or an HTTP date), or None.

    A date is measured against the answer's own ``Date`` header when it has a
    valid one, so the two clocks that matter are the server's, not ours; else
    against ``now`` (default: this machine's clock).
    """
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    until = _http_date(value)
    if until is None:
        return None
    base = _http_date(headers.get("Date") or "")
    if base is None:
        base = time.time() if now is None else now
    return max(0.0, until - base)


def _http_date(value: str) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC, says RFC 5322
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _kind(error: Exception) -> str:
    import requests

    if isinstance(error, requests.exceptions.SSLError):
        return "tls"
    if isinstance(error, requests.exceptions.ProxyError):
        return "proxy"
    if isinstance(error, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "connection"
    return type(error).__name__
