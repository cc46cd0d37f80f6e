"""Cutting off an abandoned POST: the sockets of one exchange, shut down from another thread.

A POST runs on its own thread inside ``with exchange:``; every connection that
:func:`adapter` creates on that thread meanwhile (to the endpoint, or to an HTTP
proxy) belongs to that :class:`Exchange`. :meth:`Exchange.abandon`, called from any
thread, shuts down the socket of each, including one that connects after the call,
so a blocked send or read, or a CONNECT to a proxy that never answers, fails at
once and the thread ends instead of trickling on. Leaving the block finishes the
exchange: its duplicate descriptors are closed and a later ``abandon`` does nothing.

Public API only, in both supported majors of urllib3 (1.26.8 and later, and 2.x) and
in ``requests`` from 2.28 on (``tests/test_cutoff.py`` checks that no underscore name
of either is used):

- ``requests.adapters.HTTPAdapter``: ``max_retries``, and the overridable
  ``init_poolmanager`` and ``proxy_manager_for`` that build the pool managers.
- ``PoolManager.pool_classes_by_scheme``: the pool class per scheme. An
  attribute without an underscore that urllib3 sets on each instance so that it can
  be replaced; the one name used here that the reference pages do not list.
- ``HTTPConnectionPool.ConnectionCls`` and ``HTTPSConnectionPool.ConnectionCls``:
  the connection class a pool creates (documented class attributes).
- ``HTTPConnection`` and ``HTTPSConnection`` from ``urllib3.connection``:
  the constructor, ``connect()`` (called on every new connection, directly or by
  ``http.client``'s auto-open, before anything is sent on it), ``close()`` and
  ``sock`` (``http.client``'s socket of the connection, or None).

Why that is enough:

- When ``connect()`` returns, ``sock`` is the connected socket (TLS, if any,
  wrapped around it). The connection hands a duplicate of its descriptor to the
  exchange there: shutdown acts on the socket, so the duplicate cuts every later
  send and read, also one on a response that outlives ``close()``, without touching
  the ``ssl.SSLSocket`` object the POST's thread is using.
- A connection abandoned before ``connect()`` starts does not connect at all; one
  abandoned while it connects is shut as soon as ``connect()`` returns, before the
  request is sent.
- While ``connect()`` runs, ``sock`` holds the plain TCP socket during a CONNECT to
  a proxy (urllib3 1.26 and 2.x alike) and, in 2.x, from the TCP connect on, so
  ``abandon`` shuts that too. ``close()`` holds the exchange's lock, so ``abandon``
  never shuts a descriptor that was closed (and perhaps reused) under it.

Not used: ``socket_options`` (urllib3 applies them to each new socket, but never
hands the socket to them), ``sock`` as the only handle (``http.client`` closes the
connection on ``Connection: close`` while the response reads on, and TLS replaces
the socket), ``HTTPResponse.shutdown()`` (urllib3 2.3 on, and only once a response
exists), an own ``ssl_context`` whose ``wrap_socket`` would see the socket before the
handshake (the trust store would then be this module's to load, not requests': some
requests releases load none into a context they are given).

The one gap: a TLS handshake under way when the exchange is abandoned. No public
API hands out the socket in the middle of it (urllib3 1.26 sets ``sock`` only once
the handshake is done, and ``ssl`` detaches the plain socket it wraps), so the
handshake runs on until it ends or fails, each wait bounded by the connect
timeout, and then meets the shutdown when ``connect()`` returns: the request is
never sent. The same holds, trivially, for a resolver or TCP connect under way.

The adapter also switches off urllib3's own retries and redirects, and adds the
headers it is given to every request it makes of a proxy (the ``CONNECT`` of a
tunnel, a forwarded request), so that a proxy sees who is asking.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["AbandonedError", "Exchange", "adapter"]


class AbandonedError(ConnectionAbortedError):
    """A connection of an exchange that was abandoned before it began to connect."""


class Exchange:
    """The connections and sockets of one POST, so that an abandoned POST can be cut off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._connecting: list[Any] = []
        self._abandoned = False
        self._finished = False

    def __enter__(self) -> Exchange:
        """Make the connections the adapter creates on this thread, until the block ends,
        belong to this exchange."""
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
        """Shut ``sock`` down when the exchange is abandoned (at once if it already is).

        Keeps a duplicate descriptor: shutdown acts on the socket, and the duplicate
        stays valid whoever closes, wraps or detaches ``sock`` itself.
        """
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if self._finished:
                dup.close()
                return
            self._sockets.append(dup)
            if self._abandoned:
                _shut(dup)

    def connecting(self, connection: Any) -> None:
        """``connection`` is about to connect: until :meth:`connected`, ``abandon`` shuts
        its ``sock`` as far as it is set. Raises :class:`AbandonedError` when the exchange
        already is, so that nothing connects."""
        with self._lock:
            if self._abandoned and not self._finished:
                raise AbandonedError("the exchange was abandoned")
            if not self._finished:
                self._connecting.append(connection)

    def connected(self, connection: Any) -> None:
        """``connection.connect()`` has returned (or failed): its socket, if any, is tracked."""
        with self._lock, contextlib.suppress(ValueError):
            self._connecting.remove(connection)
        sock = connection.sock
        if sock is not None:
            self.track(sock)

    def closing(self) -> threading.Lock:
        """The lock a connection holds while it closes, so that ``abandon`` never shuts a
        descriptor closed (and perhaps reused) at the same time."""
        return self._lock

    def abandon(self) -> None:
        """Shut down the exchange's sockets, now and as they connect, unless it is finished."""
        with self._lock:
            self._abandoned = True
            if self._finished:
                return
            for dup in self._sockets:
                _shut(dup)
            for connection in self._connecting:
                # The plain socket while connecting, or None: a shutdown of a socket
                # that TLS has detached fails harmlessly (that handshake is the gap).
                sock = connection.sock
                if sock is not None:
                    _shut(sock)

    def finish(self) -> None:
        """Close the duplicates (the sockets themselves stay open); ``abandon`` is then a no-op."""
        with self._lock:
            self._finished = True
            sockets, self._sockets = self._sockets, []
            self._connecting = []
            for sock in sockets:
                sock.close()


_current = threading.local()


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an ssl.SSLSocket: that one's would drop
    # its TLS state under the thread that is using it. Shutdown never blocks.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def adapter(proxy_headers: Mapping[str, str] | None = None) -> Any:
    """A new ``requests`` adapter: no retries, its connections cut off with the exchange
    of the thread that creates them (see the module docs), and ``proxy_headers`` on
    every request to a proxy (besides the ``Proxy-Authorization`` of its URL)."""
    return _adapter_class()(dict(proxy_headers or {}))


@functools.cache
def _adapter_class() -> Any:
    """The adapter class, built on first use (``requests`` is imported on the worker)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.util.retry import Retry

    class Tracked:
        """Mixed into urllib3's connection classes: the connection belongs to the exchange
        of the thread that creates it (the POST's: pools create connections on demand)."""

        phonehome_exchange: Exchange | None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.phonehome_exchange = getattr(_current, "exchange", None)

        def connect(self) -> None:
            exchange = self.phonehome_exchange
            if exchange is None:
                super().connect()  # type: ignore[misc]
                return
            exchange.connecting(self)
            try:
                super().connect()  # type: ignore[misc]
            finally:
                exchange.connected(self)

        def close(self) -> None:
            exchange = self.phonehome_exchange
            if exchange is None:
                super().close()  # type: ignore[misc]
                return
            with exchange.closing():
                super().close()  # type: ignore[misc]

    class TrackedHTTP(Tracked, HTTPConnection):
        pass

    class TrackedHTTPS(Tracked, HTTPSConnection):
        pass

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPS

    pools = {"http": HTTPPool, "https": HTTPSPool}

    class Adapter(HTTPAdapter):
        """No retries, and connections an abandoned exchange can cut off."""

        def __init__(self, extra_proxy_headers: dict[str, str]) -> None:
            self.extra_proxy_headers = extra_proxy_headers
            super().__init__(max_retries=Retry(total=0, redirect=0, raise_on_status=False))

        def proxy_headers(self, proxy: str) -> dict[str, str]:
            headers: dict[str, str] = {**self.extra_proxy_headers, **super().proxy_headers(proxy)}
            return headers

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter
