"""The plugin's one way out: every request it makes, a report's POST or the location
lookup's GET, with a hard deadline; the only code that opens sockets.

``requests`` and urllib3 timeouts bound each wait for a byte, not the whole
exchange, so a server that trickles one byte a second could hold a request for
hours, and a slow resolver is not bounded at all. Each request therefore runs on a
short-lived daemon thread, and the caller waits at most the deadline. When it
gives up it shuts down the exchange's sockets (:mod:`.cutoff`), so the abandoned
thread ends at once instead of trickling on. Only a thread still resolving,
connecting or in its TLS handshake outlives its deadline, until that step ends (each
wait of a connect or handshake is bounded by :data:`CONNECT_TIMEOUT`, the resolver by
nothing), and never sends its request; at most :data:`MAX_ABANDONED` of those. A
report stays in the outbox: a late success that is sent again is dropped by the
receiver through its ``Idempotency-Key``.

The same way for both requests, so that a site that allows one proxy, one CA and
one client sees all of the plugin's traffic there: the config's ``proxy`` for every
request if set, otherwise ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the
environment; TLS verification always on (``ca_bundle`` replaces the trust store);
redirects never followed; the User-Agent :data:`USER_AGENT`, on the request and on
what the proxy is asked (a ``CONNECT``). What only the reports carry, because only
the report endpoint (or the relay in front of it) may see it: the operator's extra
``headers`` and the client certificate for mutual TLS. The location lookup's
transport (:meth:`Transport.for_lookup`) is made from settings without them, so no
code path could hand them to the location service. Plain ``http://`` is refused for
reports except to loopback.

Reports of a pre-release MaestroHub go to ``prerelease_endpoint`` when one is set:
the report itself says what it is (``system.prerelease``), so a report stored before
an upgrade goes where its content belongs.

The client certificate and key are checked when the transport is made (the worker's
first job): a file that cannot be read, or a pair that does not load (an encrypted key
among them: it would make OpenSSL ask for a password on the terminal), is said in one
log line naming the key, and reports then stay in the outbox instead of going out
without the certificate the relay wants. Every secret of the settings (query strings,
user info, header values) is handed to :func:`.secrets.protect`, which masks it in
every log record of the plugin and of the HTTP libraries, urllib3's request lines at
DEBUG included.

The status line and headers are a POST's answer. The body is read too, up to
:data:`ANSWER_LIMIT` bytes and then thrown away, before the connection is closed:
a socket closed with unread bytes in its receive buffer makes the kernel send a
reset instead of a clean close, which the receiving service (or its load
balancer) logs as an error on every report. A larger or endless body is cut at
the limit (that one reset is the server's doing), and a body that is slow to
come costs at most the deadline: when the deadline or a cancel falls while only
the body is still coming, :meth:`Transport.post` returns the answer it already
has and cuts the exchange off. A GET's answer is its whole body (up to a limit the
caller sets): one that is not complete by the deadline is a failure.

Retries belong to :mod:`.retry` alone (the answer's ``Retry-After`` is read into the
:class:`~.answer.Answer`, for it), so urllib3's own are switched off in
:func:`.cutoff.adapter`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from phonehome_plugin import __version__
from phonehome_plugin.config.settings import Settings, is_loopback_host, secret_values
from phonehome_plugin.delivery.answer import Answer, Fetched, retry_after
from phonehome_plugin.delivery.cutoff import Exchange, adapter
from phonehome_plugin.guard import secrets

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

GZIP_ABOVE = 1024
MAX_ABANDONED = 4
USER_AGENT = f"maestrohub-phonehome/{__version__}"
CONNECT_TIMEOUT = 5.0
CANCEL_POLL = 0.2
"""Seconds between checks of the cancel flag while a request is in flight (shutdown latency)."""
ANSWER_LIMIT = 64 * 1024
"""Most bytes of an answer's body read (and dropped) before closing the connection."""

T = TypeVar("T")


class Transport:
    """Makes the plugin's requests (see the module docs); safe to call from one thread at a
    time."""

    _waking: threading.Event | None = None

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) measures each request's deadline; tests pass one
        they move themselves, so that a deadline falls exactly where they put it.

        Checks the client certificate and key, if any (one log line when they cannot be
        used), and has the settings' secrets masked in log records from now on."""
        self.settings = settings
        self._clock = clock
        self._hanging: list[tuple[threading.Thread, Exchange]] = []
        self.abandoned = 0
        """Exchanges cut off at their deadline or on cancel so far (the rest ended by
        themselves); for diagnostics and tests."""
        secrets.protect(secret_values(settings))
        self.refused: str | None = _refusal(settings.endpoint)
        """Why no report can be sent at all (a bad endpoint or client certificate), or None."""
        self.relay_problem = client_cert_problem(settings)
        if self.relay_problem is not None:
            log.error(
                "phonehome: %s; reports are kept, not sent, until it is fixed", self.relay_problem
            )
            self.refused = f"refused: {self.relay_problem}"

    @classmethod
    def for_lookup(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> Transport:
        """A transport for the location lookup: the same proxy, CA bundle, User-Agent and
        deadlines, without what belongs to the report endpoint alone (``headers``, the
        client certificate and key)."""
        bare = dataclasses.replace(settings, headers={}, client_cert=None, client_key=None)
        return cls(bare, clock)

    def endpoint_for(self, body: bytes) -> str:
        """Where the report ``body`` goes: ``prerelease_endpoint`` when one is set and
        the report says it comes from a pre-release (``system.prerelease``), else
        ``endpoint``."""
        settings = self.settings
        if settings.prerelease_endpoint and _marked_prerelease(body):
            return settings.prerelease_endpoint
        return settings.endpoint

    def post(
        self, body: bytes, report_id: str, deadline: float, cancel: threading.Event
    ) -> Answer:
        """POST ``body`` (to :meth:`endpoint_for` it); returns within ``deadline`` seconds
        (sooner when ``cancel`` is set).

        The answer is the server's status once its head arrived, even when the
        deadline or the cancel falls while its body is still being read; without a
        head it is an error kind (``"deadline"``, ``"cancelled"``, ``"connection"``...).
        """
        url = self.endpoint_for(body)
        refused = self.refused or _refusal(url)
        if refused:
            return Answer(None, refused)

        def work(answered: Callable[[Answer], None]) -> None:
            self._post(url, body, report_id, deadline, answered)

        return self._within(work, lambda kind: Answer(None, kind), deadline, cancel, "post")

    def get(self, url: str, deadline: float, cancel: threading.Event, limit: int) -> Fetched:
        """GET ``url``, asking for an uncompressed answer; returns within ``deadline``
        seconds (sooner on ``cancel``) with the status and at most ``limit + 1`` bytes of
        the body (more than ``limit`` says it was longer), or an error kind when the
        whole answer did not come in time."""

        def work(answered: Callable[[Fetched], None]) -> None:
            self._get(url, deadline, limit, answered)

        return self._within(
            work, lambda kind: Fetched(None, error=kind), deadline, cancel, "lookup"
        )

    def _within(
        self,
        work: Callable[[Callable[[T], None]], None],
        failed: Callable[[str], T],
        deadline: float,
        cancel: threading.Event,
        what: str,
    ) -> T:
        """Run ``work(answered)`` on a thread of its own inside an exchange, and wait for
        its first ``answered(...)`` at most ``deadline`` seconds; an exception of it, the
        deadline or ``cancel`` make ``failed(kind)`` the result instead."""
        self._hanging = [(t, x) for t, x in self._hanging if t.is_alive()]
        if len(self._hanging) >= MAX_ABANDONED:
            return failed("too many requests still hanging")
        box: list[T] = []
        done = threading.Event()
        exchange = Exchange()

        def run() -> None:
            try:
                with exchange:
                    try:
                        work(box.append)
                    # Anything from the HTTP stack is an unmade request, no more.
                    except Exception as error:
                        if not box:
                            box.append(failed(_kind(error)))
            finally:
                done.set()

        thread = threading.Thread(target=run, name=f"phonehome-{what}", daemon=True)
        end = self._clock() + deadline
        self._waking = done  # wake() ends the wait at once (shutdown, see wake)
        thread.start()
        # Poll for cancel rarely: each wake-up takes the GIL from the host's threads.
        while not done.wait(min(CANCEL_POLL, max(0.0, end - self._clock()))) or (
            cancel.is_set() and thread.is_alive()
        ):
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
                return failed("cancelled" if cancel.is_set() else "deadline")
        self._waking = None
        return box[0] if box else failed("no answer")

    def wake(self) -> None:
        """End the wait of the request in flight now (any thread; O(1)): with the cancel
        flag set first, the request is given up at once instead of at the next poll."""
        waking = self._waking
        if waking is not None:
            waking.set()

    def _post(
        self,
        url: str,
        body: bytes,
        report_id: str,
        deadline: float,
        answered: Callable[[Answer], None],
    ) -> None:
        """POST, give the answer to ``answered`` as soon as the head is in, then read
        (a bounded part of) the body, so that the connection closes cleanly."""
        settings = self.settings
        # The operator's headers first: the plugin's own win (settings refuses those
        # names anyway).
        headers = {
            **settings.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": report_id,
            "User-Agent": USER_AGENT,
        }
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        with make_session(settings) as session:
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(min(CONNECT_TIMEOUT, deadline), deadline),
                allow_redirects=False,
                stream=True,  # the status line and headers are the answer; see _drain
                # Given per request so that they win over REQUESTS_CA_BUNDLE and
                # HTTPS_PROXY (requests lets the environment override the session).
                verify=_verify(settings),
                proxies=_proxies(settings),
                cert=_cert(settings),
            )
            with response:
                answered(Answer(response.status_code, None, retry_after(response.headers)))
                _drain(response)

    def _get(
        self, url: str, deadline: float, limit: int, answered: Callable[[Fetched], None]
    ) -> None:
        settings = self.settings
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # so that the limit bounds memory too
            "User-Agent": USER_AGENT,
        }
        with make_session(settings) as session:
            response = session.get(
                url,
                headers=headers,
                timeout=(min(CONNECT_TIMEOUT, deadline), deadline),
                allow_redirects=False,
                stream=True,
                verify=_verify(settings),
                proxies=_proxies(settings),
                cert=_cert(settings),
            )
            # Closed after reading, so that the service sees a clean close, not a reset
            # (a body longer than the limit is cut off unread: the server's doing).
            with response:
                raw = response.raw.read(limit + 1, decode_content=False)
                encoding = response.headers.get("Content-Encoding", "identity")
                answered(Fetched(response.status_code, raw, encoding.strip().lower()))

    def close(self) -> None:
        """Cut off every request still hanging (at shutdown)."""
        for _, exchange in self._hanging:
            exchange.abandon()
        self._hanging = []


def _refusal(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        return None
    return "refused: only https:// (or http:// to loopback) is allowed"


def _marked_prerelease(body: bytes) -> bool:
    try:
        report = json.loads(body)
        return report["system"]["prerelease"] is True
    except (ValueError, KeyError, TypeError):
        return False


def client_cert_problem(settings: Settings) -> str | None:
    """Why ``client_cert`` and ``client_key`` cannot be used, naming the key, or None.

    Loaded here once, as the TLS stack will load them for each connection, but with a
    password callback that gives none: an encrypted key fails here, instead of making
    OpenSSL prompt on the host's terminal later.
    """
    cert, key = settings.client_cert, settings.client_key
    if cert is None:
        return None
    for name, path in (("client_cert", cert), ("client_key", key)):
        if path is None:
            continue
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as error:
            return f"modules.phonehome.{name}: cannot read {path} ({error.strerror or 'error'})"
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, ValueError):
        return f"modules.phonehome.client_cert: {cert} holds no PEM certificate"
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(
            str(cert), None if key is None else str(key), password=_no_password
        )
    except (ssl.SSLError, OSError, ValueError, TypeError):
        if key is None:
            return (
                f"modules.phonehome.client_cert: {cert} holds no unencrypted private key "
                "of its certificate (set client_key)"
            )
        return (
            f"modules.phonehome.client_key: {key} is not the unencrypted PEM private key "
            "of client_cert"
        )
    return None


def _no_password() -> bytes:
    # An empty password: an encrypted key then fails to load, and nothing prompts.
    return b""


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


def _verify(settings: Settings) -> str | bool:
    return str(settings.ca_bundle) if settings.ca_bundle else True


def _cert(settings: Settings) -> str | tuple[str, str] | None:
    if settings.client_cert is None:
        return None
    if settings.client_key is None:
        return str(settings.client_cert)
    return (str(settings.client_cert), str(settings.client_key))


def make_session(settings: Settings) -> requests.Session:
    """A session with TLS verification on, proxies from config or environment, no retries,
    and the plugin's User-Agent on what it asks a proxy."""
    import requests

    session = requests.Session()
    session.trust_env = True  # HTTPS_PROXY, NO_PROXY; REQUESTS_CA_BUNDLE unless ca_bundle
    session.verify = _verify(settings)
    session.proxies = _proxies(settings)
    mounted = adapter({"User-Agent": USER_AGENT})
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
