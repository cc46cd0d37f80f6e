"""One HTTP POST of one report, with a hard deadline: the only code that opens sockets.

``requests`` and urllib3 read timeouts bound each wait for a byte, not the
whole exchange, so a server that trickles one byte a second could hold a send
for hours. Each POST therefore runs on a short-lived daemon thread, and the
caller waits at most the deadline; an abandoned request cannot keep the process
alive, and its report stays in the outbox (a late success that is sent again is
dropped by the receiver through its ``Idempotency-Key``).

Retries belong to :mod:`.retry` alone, so urllib3's own are switched off.
"""

from __future__ import annotations

import email.utils
import gzip
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from phonehome_plugin import __version__
from phonehome_plugin.config import Settings

if TYPE_CHECKING:
    import requests

GZIP_ABOVE = 1024
MAX_ABANDONED = 4
USER_AGENT = f"maestrohub-phonehome/{__version__}"


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
        self._session: requests.Session | None = None
        self._abandoned: list[threading.Thread] = []

    def post(self, body: bytes, report_id: str, deadline: float, cancel: threading.Event) -> Answer:
        """POST ``body``; returns within ``deadline`` seconds (sooner when ``cancel`` is set)."""
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        if len(self._abandoned) >= MAX_ABANDONED:
            return Answer(None, "too many requests still hanging")
        box: list[Answer] = []
        done = threading.Event()
        thread = threading.Thread(
            target=self._exchange, args=(body, report_id, deadline, box, done),
            name="phonehome-post", daemon=True,
        )
        thread.start()
        end = time.monotonic() + deadline
        while not done.wait(min(0.05, max(0.0, end - time.monotonic()))):
            if cancel.is_set() or time.monotonic() >= end:
                self._abandoned.append(thread)
                return Answer(None, "cancelled" if cancel.is_set() else "deadline")
        return box[0]

    def _exchange(
        self, body: bytes, report_id: str, deadline: float, box: list[Answer], done: threading.Event
    ) -> None:
        try:
            box.append(self._request(body, report_id, deadline))
        except Exception as error:  # anything from the HTTP stack is an unsent report, no more
            box.append(Answer(None, _kind(error)))
        finally:
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
        response = self.session().post(
            self.settings.endpoint,
            data=body,
            headers=headers,
            timeout=(min(5.0, deadline), deadline),
            allow_redirects=False,
        )
        with response:
            return Answer(response.status_code, None, retry_after(response.headers))

    def session(self) -> requests.Session:
        if self._session is None:
            self._session = make_session(self.settings)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def make_session(settings: Settings) -> requests.Session:
    """A session with TLS verification on, proxies from config or environment, no retries."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.trust_env = True  # HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
    session.verify = str(settings.ca_bundle) if settings.ca_bundle else True
    if settings.proxy:
        session.proxies = {"http": settings.proxy, "https": settings.proxy}
    no_retries = HTTPAdapter(max_retries=Retry(total=0, redirect=0, raise_on_status=False))
    session.mount("http://", no_retries)
    session.mount("https://", no_retries)
    return session


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta seconds or an HTTP date), or None.

    A date is measured against the answer's own ``Date`` header when there is
    one, so the two clocks that matter are the server's, not ours.
    """
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        until = email.utils.parsedate_to_datetime(value).timestamp()
        sent = headers.get("Date")
        base = email.utils.parsedate_to_datetime(sent).timestamp() if sent else time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, until - base)


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

