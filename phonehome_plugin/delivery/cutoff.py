"""Cutting off an abandoned POST: the sockets of one exchange, shut down from another thread.

A POST runs on its own thread inside ``with exchange:``; every connection that
:func:`adapter` makes on that thread meanwhile (to the endpoint, or to an HTTP proxy)
is tracked by that :class:`Exchange` as soon as it is connected.
:meth:`Exchange.abandon`, called from any thread, shuts down every such socket,
including one connected after the call, so a blocked TLS handshake, send or read
fails at once and the thread ends instead of trickling on. A thread still
resolving or connecting has no socket to shut yet: it meets the shutdown as soon
as it connects. Leaving the block finishes the exchange: its duplicate
descriptors are closed and a later ``abandon`` does nothing.

The adapter also switches off urllib3's own retries and redirects.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from types import TracebackType
from typing import Any

__all__ = ["Exchange", "adapter"]


class Exchange:
    """The sockets of one POST, so that an abandoned POST can be cut off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self._finished = False

    def __enter__(self) -> Exchange:
        """Track the sockets the adapter opens on this thread until the block ends."""
        _current.exchange = self
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _current.exchange = None
        self.finish()

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
        """Shut down the exchange's sockets, now and as they are opened, unless it is finished."""
        with self._lock:
            self._abandoned = True
            sockets = [] if self._finished else list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        """Close the duplicates (the sockets themselves stay open); ``abandon`` is then a no-op."""
        with self._lock:
            self._finished = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


_current = threading.local()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def adapter() -> Any:
    """A new ``requests`` adapter: no retries, and its sockets tracked by the current exchange."""
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
