"""One HTTP POST of one report, with a hard deadline: the only code that opens sockets.

``requests`` and urllib3 timeouts bound each wait for a byte, not the whole
exchange, so a server that trickles one byte a second could hold a send for
hours, and a slow resolver is not bounded at all. Each POST therefore runs on a
short-lived daemon thread, and the caller waits at most the deadline. When it
gives up it shuts down the exchange's sockets (:mod:`.cutoff`), so the abandoned
thread ends at once instead of trickling on. Only a thread still resolving,
connecting or in its TLS handshake outlives its deadline, until that step ends (each
wait of a connect or handshake is bounded by :data:`CONNECT_TIMEOUT`, the resolver by
nothing), and never sends its request; at most :data:`MAX_ABANDONED` of those. The report
stays in the outbox: a late success that is sent again is dropped by the
receiver through its ``Idempotency-Key``.

Each exchange has its own session (reports go out once an hour; a shared
connection pool would buy nothing and would tie an abandoned thread to the next
one). TLS verification is always on (``ca_bundle`` replaces the trust store),
redirects are never followed, and plain ``http://`` is refused except to
loopback. Proxies: the config's ``proxy`` for every request if set, otherwise
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the environment.

The status line and headers are the answer. The body is read too, up to
:data:`ANSWER_LIMIT` bytes and then thrown away, before the connection is closed:
a socket closed with unread bytes in its receive buffer makes the kernel send a
reset instead of a clean close, which the receiving service (or its load
balancer) logs as an error on every report. A larger or endless body is cut at
the limit (that one reset is the server's doing), and a body that is slow to
come costs at most the deadline: when the deadline or a cancel falls while only
the body is still coming, :meth:`Transport.post` returns the answer it already
has and cuts the exchange off.

Retries belong to :mod:`.retry` alone (the answer's ``Retry-After`` is read into the
:class:`~.answer.Answer`, for it), so urllib3's own are switched off in
:func:`.cutoff.adapter`.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from phonehome_plugin import __version__
from phonehome_plugin.config.settings import Settings, is_loopback_host
from phonehome_plugin.delivery.answer import Answer, retry_after
from phonehome_plugin.delivery.cutoff import Exchange, adapter

if TYPE_CHECKING:
    import requests

GZIP_ABOVE = 1024
MAX_ABANDONED = 4
USER_AGENT = f"maestrohub-phonehome/{__version__}"
CONNECT_TIMEOUT = 5.0
CANCEL_POLL = 0.2
"""Seconds between checks of the cancel flag while a POST is in flight (shutdown latency)."""
ANSWER_LIMIT = 64 * 1024
"""Most bytes of an answer's body read (and dropped) before closing the connection."""


class Transport:
    """POSTs report bodies to ``settings.endpoint``; safe to call from one thread at a time."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) measures each POST's deadline; tests pass one
        they move themselves, so that a deadline falls exactly where they put it."""
        self.settings = settings
        self._clock = clock
        self._hanging: list[tuple[threading.Thread, Exchange]] = []
        self.abandoned = 0
        """Exchanges cut off at their deadline or on cancel so far (the rest ended by
        themselves); for diagnostics and tests."""
        parts = urlsplit(settings.endpoint)
        self.refused: str | None = None
        if parts.scheme != "https" and not (
            parts.scheme == "http" and is_loopback_host(parts.hostname)
        ):
            self.refused = "refused: only https:// (or http:// to loopback) is allowed"

    def post(
        self, body: bytes, report_id: str, deadline: float, cancel: threading.Event
    ) -> Answer:
        """POST ``body``; returns within ``deadline`` seconds (sooner when ``cancel`` is set).

        The answer is the server's status once its head arrived, even when the
        deadline or the cancel falls while its body is still being read; without a
        head it is an error kind (``"deadline"``, ``"cancelled"``, ``"connection"``...).
        """
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
        end = self._clock() + deadline
        thread.start()
        # Poll for cancel rarely: each wake-up takes the GIL from the host's threads.
        while not done.wait(min(CANCEL_POLL, max(0.0, end - self._clock()))):
            if cancel.is_set() or self._clock() >= end:
                # Looked at before the cut-off, which makes the exchange fail at once:
                # an answer in the box now is the server's, and only its body was
                # still coming.
                answered = list(box)
                exchange.abandon()
                self._hanging.append((thread, exchange))
                self.abandoned += 1
                if answered:
                    return answered[0]
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
                    self._request(body, report_id, deadline, box.append)
                # Anything from the HTTP stack is an unsent report, no more.
                except Exception as error:
                    if not box:
                        box.append(Answer(None, _kind(error)))
        finally:
            done.set()

    def _request(
        self, body: bytes, report_id: str, deadline: float, answered: Callable[[Answer], None]
    ) -> None:
        """POST, give the answer to ``answered`` as soon as the head is in, then read
        (a bounded part of) the body, so that the connection closes cleanly."""
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
                stream=True,  # the status line and headers are the answer; see _drain
                # Given per request so that they win over REQUESTS_CA_BUNDLE and
                # HTTPS_PROXY (requests lets the environment override the session).
                verify=str(settings.ca_bundle) if settings.ca_bundle else True,
                proxies=_proxies(settings),
            )
            with response:
                answered(Answer(response.status_code, None, retry_after(response.headers)))
                _drain(response)

    def close(self) -> None:
        """Cut off every POST still hanging (at shutdown)."""
        for _, exchange in self._hanging:
            exchange.abandon()
        self._hanging = []


def _drain(response: requests.Response) -> None:
    """Read and drop up to :data:`ANSWER_LIMIT` bytes of the body; never raises.

    Raw bytes, not decoded: nothing here looks at them, so a compressed body is
    never inflated. A body that does not come blocks until the exchange is cut
    off at the deadline (or by the read timeout); the answer stands either way.
    """
    # The answer is in hand: a body cut short, reset or timed out changes nothing.
    with contextlib.suppress(Exception):
        response.raw.read(ANSWER_LIMIT, decode_content=False)


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
