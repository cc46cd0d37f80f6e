"""An embedded telemetry receiver on 127.0.0.1, for the demo and for tests.

It plays both services the plugin talks to, on one loopback port chosen by the OS:

- ``url`` (``POST /v1/reports``): the telemetry service of contract section 6a. It
  wants ``Content-Type: application/json`` (``Content-Encoding: gzip`` optional) and
  an ``Idempotency-Key`` equal to the body's ``report_id``; it answers 202 for a new
  report and 200 for a key it already has (counted in ``duplicates``, not stored
  again), 400/404/411/413/415 for requests out of contract.
- ``geoip_url`` (``GET /json``): an IP geolocation service answering in ip-api.com's
  format, with a documentation-range address (RFC 5737), never a real one.

Usage::

    with Receiver() as receiver:
        ...  # point the plugin at receiver.url and receiver.geoip_url
        assert receiver.wait_for(2, timeout=5)
        receiver.reports  # snapshot, in arrival order

All state is guarded by one lock; handlers run on the server's daemon threads.

It never prints a traceback: a client that hangs up or resets its connection is
routine for a server and only counted (``disconnects``); any other failure of a
connection's handler is recorded in one line (``errors``) for the demo and tests
to show.
"""

from __future__ import annotations

import json
import sys
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

REPORTS_PATH = "/v1/reports"
_OUTCOME = {202: "accepted", 200: "duplicate"}
GEOIP_PATH = "/json"
MAX_BODY = 4 * 1024 * 1024
"""Largest body accepted, before and after gzip: bounds memory whatever a client sends."""
MAX_ERRORS = 100
"""Handler failures kept in ``errors`` (the first ones); later ones are only counted."""

GEOIP_ANSWER: Mapping[str, Any] = {
    "status": "success",
    "query": "203.0.113.7",
    "country": "Germany",
    "countryCode": "DE",
    "regionName": "Berlin",
    "city": "Berlin",
    "isp": "Example ISP",
}


@dataclass(frozen=True)
class Request:
    """One request the receiver answered, for tests that check headers and statuses."""

    method: str
    path: str
    status: int
    idempotency_key: str | None
    content_encoding: str | None
    user_agent: str | None


class Receiver:
    """A telemetry endpoint and GeoIP service on ``127.0.0.1``; see the module docs.

    :param geoip: the JSON object ``GET /json`` answers (``GEOIP_ANSWER`` by default;
        pass ``{"status": "fail", "message": "private range"}`` for a failed lookup).

    The server starts in the constructor and stops on ``close()`` (or leaving the
    ``with`` block); ``close()`` is idempotent and returns once the port is released.
    """

    def __init__(self, *, geoip: Mapping[str, Any] | None = None) -> None:
        self.geoip = dict(GEOIP_ANSWER if geoip is None else geoip)
        self._cond = threading.Condition()
        self._reports: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._requests: list[Request] = []
        self._fail: list[int] = []
        self._duplicates = 0
        self._geoip_requests = 0
        self._disconnects = 0
        self._errors: list[str] = []
        self._error_count = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}{REPORTS_PATH}"
        self.geoip_url = f"http://127.0.0.1:{port}{GEOIP_PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="phonehome-receiver",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and release the port; waits for the serving thread."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """The distinct reports received, in arrival order (a snapshot copy)."""
        with self._cond:
            return list(self._reports)

    @property
    def duplicates(self) -> int:
        """Valid POSTs whose ``Idempotency-Key`` had already been stored."""
        with self._cond:
            return self._duplicates

    @property
    def geoip_requests(self) -> int:
        """How many GeoIP lookups were answered."""
        with self._cond:
            return self._geoip_requests

    @property
    def requests(self) -> list[Request]:
        """Every request answered, in order (a snapshot copy)."""
        with self._cond:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """Connections a client reset or hung up on while the receiver read or answered."""
        with self._cond:
            return self._disconnects

    @property
    def errors(self) -> list[str]:
        """Other failures of a connection's handler, ``"Type: message"`` each, first
        :data:`MAX_ERRORS` of them (a snapshot copy); ``error_count`` counts them all."""
        with self._cond:
            return list(self._errors)

    @property
    def error_count(self) -> int:
        """How many connections' handlers failed other than by a disconnect."""
        with self._cond:
            return self._error_count

    def wait_for_disconnects(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` disconnects were counted or ``timeout`` seconds
        passed; True when they were."""
        with self._cond:
            return self._cond.wait_for(lambda: self._disconnects >= count, timeout)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` report POSTs with ``status`` without storing them,
        so tests can exercise the plugin's retries."""
        with self._cond:
            self._fail.extend([status] * count)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` distinct reports arrived or ``timeout`` seconds
        passed; True when they did."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._reports) >= count, timeout)

    # Called by the handler threads.

    def _accept(self, key: str, report: dict[str, Any]) -> int:
        with self._cond:
            if self._fail:
                return self._fail.pop(0)
            if key in self._keys:
                self._duplicates += 1
                return 200
            self._keys.add(key)
            self._reports.append(report)
            self._cond.notify_all()
            return 202

    def _answer_geoip(self) -> dict[str, Any]:
        with self._cond:
            self._geoip_requests += 1
            return dict(self.geoip)

    def _record(self, request: Request) -> None:
        with self._cond:
            self._requests.append(request)

    def _failed(self, error: BaseException | None) -> None:
        with self._cond:
            # TimeoutError: the handler's idle timeout ran out mid-request.
            if isinstance(error, ConnectionError | TimeoutError):
                self._disconnects += 1
            else:
                self._error_count += 1
                if len(self._errors) < MAX_ERRORS:
                    self._errors.append(_one_line(error))
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an unfinished request must not keep the process alive
    request_queue_size = 128  # the default 5 resets bursts from many senders (tests do that)
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Count the failure of one connection instead of printing its traceback.

        socketserver calls this from within the ``except`` that caught the failure,
        so the exception is the one being handled.
        """
        self.receiver._failed(sys.exc_info()[1])


class _RejectedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds; ends idle keep-alive connections instead of holding a thread

    def do_GET(self) -> None:
        if urlsplit(self.path).path.rstrip("/") != GEOIP_PATH:
            self._reply(404, {"error": "not found"})
            return
        self._reply(200, self.server.receiver._answer_geoip())

    def do_POST(self) -> None:
        key = self.headers.get("Idempotency-Key")
        try:
            report = self._read_report(key)
        except _RejectedError as rejected:
            # The body may be unread: close rather than misparse it as the next request.
            self.close_connection = True
            self._reply(rejected.status, {"error": str(rejected)}, key)
            return
        assert key is not None  # _read_report rejects a missing key
        status = self.server.receiver._accept(key, report)
        self._reply(status, {"status": _OUTCOME.get(status, "failed"), "id": key}, key)

    def _read_report(self, key: str | None) -> dict[str, Any]:
        if urlsplit(self.path).path != REPORTS_PATH:
            raise _RejectedError(404, "not found")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _RejectedError(415, "Content-Type must be application/json")
        if not key:
            raise _RejectedError(400, "Idempotency-Key header is required")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _RejectedError(411, "Content-Length is required")
        if int(length) > MAX_BODY:
            raise _RejectedError(413, "body too large")
        body = self.rfile.read(int(length))
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body)
        elif encoding != "identity":
            raise _RejectedError(415, f"unsupported Content-Encoding {encoding}")
        try:
            report = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _RejectedError(400, f"body is not JSON: {error}") from None
        if not isinstance(report, dict):
            raise _RejectedError(400, "body must be one JSON object")
        if report.get("report_id") != key:
            raise _RejectedError(400, "Idempotency-Key must equal the report's report_id")
        return report

    def _reply(self, status: int, body: Mapping[str, Any], key: str | None = None) -> None:
        # Recorded before answering, so a client that has its answer finds it in
        # ``requests`` (recording after the write raced with the client's next look).
        headers = self.headers
        self.server.receiver._record(
            Request(
                self.command,
                self.path,
                status,
                key,
                headers.get("Content-Encoding"),
                headers.get("User-Agent"),
            )
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the demo prints its own view, and tests read ``requests``."""


def _one_line(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _gunzip(body: bytes) -> bytes:
    # Decompress in bounded steps so that a small gzip bomb cannot exhaust memory.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_BODY + 1)
    except zlib.error as error:
        raise _RejectedError(400, f"body is not valid gzip: {error}") from None
    if len(data) > MAX_BODY:
        raise _RejectedError(413, "body too large once decompressed")
    if not inflater.eof:
        raise _RejectedError(400, "body is truncated gzip")
    return data
