"""One HTTP POST of one report, with a hard deadline: the only code that opens sockets.

``requests`` and urllib3 timeouts bound each wait for a byte, not the whole
exchange, so a server that trickles one byte a second could hold a send for
hours, and a slow resolver is not bounded at all. Each POST therefore runs on a
short-lived daemon thread, and the caller waits at most the deadline. When it
gives up it shuts down the exchange's sockets (:mod:`.cutoff`), so the abandoned
thread ends at once instead of trickling on (only a thread stuck in the resolver
outlives its deadline, and at most :data:`MAX_ABANDONED` of those). The report
stays in the outbox: a late success that is sent again is dropped by the
receiver through its ``Idempotency-Key``.

Each exchange has its own session (reports go out once an hour; a shared
connection pool would buy nothing and would tie an abandoned thread to the next
one). TLS verification is always on (``ca_bundle`` replaces the trust store),
redirects are never followed, plain ``http://`` is refused except to loopback,
and only the status line and headers are read: the answer's body is never
downloaded. Proxies: the config's ``proxy`` for every request if set, otherwise
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment.

Retries belong to :mod:`.retry` alone (it also reads the answer's
``Retry-After``), so urllib3's own are switched off in :func:`.cutoff.adapter`.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from phonehome_plugin import __version__
from phonehome_plugin.config import Settings, is_loopback_host
from phonehome_plugin.cutoff import Exchange, adapter

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


class Transport:
    """POSTs report bodies to ``settings.endpoint``; safe to call from one thread at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._hanging: list[tuple[threading.Thread, Exchange]] = []
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
        exchange = Exchange()
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
        exchange: Exchange,
        box: list[Answer],
        done: threading.Event,
    ) -> None:
        try:
            with exchange:
                try:
                    box.append(self._request(body, report_id, deadline))
                # Anything from the HTTP stack is an unsent report, no more.
                except Exception as error:
                    box.append(Answer(None, _kind(error)))
        finally:
            done.set()

    def _request(self, body: bytes, report_id: str, deadline: float) -> Answer:
        # Not at module level: retry imports Answer from here.
        from phonehome_plugin.retry import retry_after

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
    mounted = adapter()
    session.mount("http://", mounted)
    session.mount("https://", mounted)
    return session


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
