"""Loopback endpoints for the plugin to send to: answering 200, answering 503, or never.

Every server binds 127.0.0.1 on a free port and serves on daemon threads, so
none of them can keep the benchmark process alive.
"""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = self.server.status
        with self.server.lock:
            self.server.requests += 1
        body = b"{}" if status < 300 else b'{"error": "unavailable"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    status = 200
    requests = 0
    lock: threading.Lock

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection (or giving up on a request) is
        # ordinary here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HTTPEndpoint:
    """A loopback HTTP endpoint answering every POST with ``status``; counts requests."""

    def __init__(self, status: int = 200) -> None:
        self._server = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._server.status = status
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"bench-http-{status}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/r"

    @property
    def requests(self) -> int:
        with self._server.lock:
            return self._server.requests

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


class BlackHole:
    """A loopback socket that accepts connections, reads nothing, and never replies."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._accepted = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-blackhole", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/r"

    @property
    def accepted(self) -> int:
        with self._accepted:
            return len(self._held)

    def wait_accepted(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections in all have been accepted (and left hanging)."""
        with self._accepted:
            return self._accepted.wait_for(lambda: len(self._held) >= count, timeout)

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._accepted:
                self._held.append(conn)
                self._accepted.notify_all()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._thread.join(1.0)
        for conn in self._held:
            conn.close()
        self._sock.close()
