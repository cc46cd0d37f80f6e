"""Cutting off an abandoned exchange: its sockets are shut down from another thread, and
a finished exchange is left alone."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from faultservers import FaultServer, Silent

from phonehome_plugin.delivery.cutoff import Exchange, adapter

WAIT = 5.0  # seconds a blocked read may take before the test calls it hung


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair: the first end stands for a POST's socket, the second for the server."""
    ours, theirs = socket.socketpair()
    ours.settimeout(WAIT)
    theirs.settimeout(WAIT)
    yield ours, theirs
    ours.close()
    theirs.close()


def read_blocked_until(sock: socket.socket, action: threading.Timer) -> bytes:
    """Block in ``recv`` on ``sock`` while ``action`` fires; what it read. Only a shut
    down socket reads ``b""`` here: one left alone raises ``TimeoutError`` after
    :data:`WAIT` (the timer may fire before or after ``recv`` blocks; both are cut)."""
    action.start()
    try:
        return sock.recv(1)
    finally:
        action.join()


def test_abandon_ends_a_blocked_read_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.track(ours)
    assert read_blocked_until(ours, threading.Timer(0.01, exchange.abandon)) == b""
    assert theirs.recv(1) == b""  # the other end sees the hang-up too


def test_a_socket_tracked_after_abandon_is_shut_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.abandon()
    exchange.track(ours)
    assert ours.recv(1) == b""
    assert theirs.recv(1) == b""


def test_a_finished_exchange_is_left_alone(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.track(ours)
    exchange.finish()
    exchange.abandon()
    late, late_theirs = socket.socketpair()
    with late, late_theirs:
        exchange.track(late)
        exchange.abandon()
        late.sendall(b"y")
        assert late_theirs.recv(1) == b"y"
    ours.sendall(b"x")
    assert theirs.recv(1) == b"x"


def test_sockets_the_adapter_opens_inside_the_block_are_cut_off() -> None:
    import requests

    server = FaultServer(then=Silent())
    try:
        with Exchange() as exchange, requests.Session() as session:
            session.mount("http://", adapter())

            # Abandoned once the server has the request, so the cut lands on a connected
            # socket blocked in its read: a connection error at once, not the read
            # timeout (``ReadTimeout`` is no ``ConnectionError``).
            def abandon_once_requested() -> None:
                if server.wait_for(lambda s: len(s.requests) == 1, WAIT):
                    exchange.abandon()

            watcher = threading.Thread(target=abandon_once_requested)
            watcher.start()
            with pytest.raises(requests.exceptions.ConnectionError):
                session.post(server.url, data=b"{}", timeout=WAIT)
            watcher.join()
        assert server.wait_for(lambda s: len(s.hangups) == 1, WAIT)
    finally:
        server.close()
