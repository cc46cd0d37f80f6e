"""Loopback endpoints for the plugin to send to: answering 200, answering 503, or never.

Both are the project's fault servers (:mod:`phonehome_plugin.testing.faults`), the
ones the tests use, under the names and counters the benchmarks read. Every server
binds 127.0.0.1 on a free port and serves on daemon threads, so none of them can
keep the benchmark process alive.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from phonehome_plugin.testing.faults import FaultServer, Reply, Silent


class HTTPEndpoint:
    """A loopback HTTP endpoint answering every POST with ``status``; counts requests."""

    def __init__(self, status: int = 200) -> None:
        self._server = FaultServer(then=Reply(status))

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> int:
        return len(self._server.requests)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()


class BlackHole:
    """A loopback endpoint that accepts connections, reads the request, never replies."""

    def __init__(self) -> None:
        self._server = FaultServer(then=Silent())

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def accepted(self) -> int:
        return self._server.connections

    def wait_accepted(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections in all have been accepted (and left hanging)."""
        return self._server.wait_connections(count, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
