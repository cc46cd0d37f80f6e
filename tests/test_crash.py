"""Real child processes killed with SIGKILL mid-write and mid-send.

The outbox must never be corrupt, nothing stored may be lost, and what a killed
process had sent but not yet crossed off goes again under the same
``Idempotency-Key`` (the endpoint absorbs it), so every stored report is
accepted exactly once in the end.

Every kill lands at a known point, never after some wall time: the child tells
the parent over a pipe where it is and waits there until the parent kills it.
The points are the start of an SQL statement (every connection the child opens
reports each statement to a trace callback, which can hold the child inside
its transaction, or before its ``COMMIT``), and the middle of a POST (the
endpoint holds the request unanswered, and the kill follows once it has it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import random
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faultservers import START, FaultServer, Host, Reply, Silent

from phonehome_plugin.config.settings import OutboxLimits, Settings
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.delivery.sender import Sender
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import FILENAME

FORK = multiprocessing.get_context("fork")
NOW = 1_772_438_400.0
UNBOUNDED = OutboxLimits(max_reports=10**9, max_bytes=10**12, max_age_days=10**5)
# A child's POST must still be waiting when the parent kills it mid-send, however
# slowly the machine runs: every other answer in these tests comes at once, so a
# long deadline costs nothing.
CHILD_POLICY = RetryPolicy(deadline=120.0, max_attempts=3, wait_base=0.01, wait_max=0.02)
FAST = RetryPolicy(deadline=1.0, max_attempts=4, wait_base=0.01, wait_max=0.05)
KILLS = 240
STOP_CHANCE = 0.2
"""Per statement of the aimed-at phase, the chance that the child stops there."""
WAIT = 120.0
"""Seconds to wait for a child to reach its point: only a hung child takes that long."""


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(then=Reply(202)) as running:
        yield running


def integrity(data_dir: Path) -> str:
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def stored_ids(data_dir: Path) -> set[str]:
    """The report ids in the outbox; none when a kill came before the table was made."""
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        made = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone()
        if made is None:
            return set()
        return {row[0] for row in conn.execute("SELECT report_id FROM outbox")}
    finally:
        conn.close()


# Talking to a child ------------------------------------------------------------------


class Notes:
    """What a child writes to its pipe, one line per note.

    Read on a thread of the parent, so that a full pipe never holds the child up
    while the parent waits for something else (the endpoint, say).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._data = b""
        self._ended = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True, name="child-notes")
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self._fd, 65536):
            with self._cond:
                self._data += chunk
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _stop(self) -> str | None:
        return next((line for line in self._lines() if line.startswith("K ")), None)

    def _lines(self) -> list[str]:
        complete, _, _ = self._data.rpartition(b"\n")
        return complete.decode().splitlines()

    def stopped(self, timeout: float = WAIT) -> str | None:
        """The child's ``K ...`` note once it waits at its point; None if it ended first."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop() is not None or self._ended, timeout)
            return self._stop()

    def close(self) -> list[str]:
        """Everything the (dead) child wrote; the pipe is closed once."""
        self._thread.join(WAIT)
        if not self._closed:
            self._closed = True
            os.close(self._fd)
        return self._lines()


@contextlib.contextmanager
def child_process(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, Notes]]:
    """A forked child running ``target(*args, notes, gate)``, and its notes.

    ``notes`` is the write end of the child's pipe; ``gate`` a read end that only
    ever sees end-of-file: the child waits on it at its point, and leaves if the
    parent dies instead of killing it. The block must kill the child.
    """
    reader, writer = os.pipe()
    gate, hold = os.pipe()
    child = FORK.Process(target=_gated, args=(target, args, writer, gate, hold))
    child.start()
    os.close(writer)
    os.close(gate)
    notes = Notes(reader)
    try:
        yield child, notes
    finally:
        child.kill()
        child.join(WAIT)
        os.close(hold)
        notes.close()


def _gated(
    target: Callable[..., None], args: tuple[Any, ...], notes: int, gate: int, hold: int
) -> None:
    os.close(hold)  # the parent's end: only then does the gate see the parent go
    target(*args, notes, gate)


def wait_here(notes: int, gate: int, where: str) -> None:
    """Tell the parent where this child is, and wait there to be killed."""
    os.write(notes, f"K {where[:300]}\n".encode())
    os.read(gate, 1)  # returns only at end-of-file: the parent is gone
    os._exit(3)


def trace_statements(on_statement: Callable[[str], None]) -> None:
    """Call ``on_statement(sql)`` as each SQL statement starts, on every connection
    this (child) process opens from now on, whichever module opens it."""
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real(*args, **kwargs)
        conn.set_trace_callback(on_statement)
        return conn

    # Undone by the child's death, never in the parent.
    pytest.MonkeyPatch().setattr(sqlite3, "connect", connect)


def holds_a_post(server: FaultServer, before: int) -> bool:
    """Wait until the endpoint has read a request beyond its first ``before``."""
    return server.wait_for(lambda s: len(s.requests) > before, WAIT)


def one_line(sql: str) -> str:
    return " ".join(sql.split())


# SIGKILL while writing and while sending ---------------------------------------------


def _store_and_send(
    data_dir: Path, url: str, now: float, seed: int, target: str, notes: int, gate: int
) -> None:
    """Store reports and send them, forever, noting each step, until killed.

    ``target`` is where the kill lands: ``W`` (an SQL statement while storing), ``S``
    (an SQL statement while sending: leasing before the POST, crossing off after
    it) or ``post`` (the parent kills while the endpoint holds a POST).
    """
    rng = random.Random(seed)
    phase = "open"

    def on_statement(sql: str) -> None:
        if phase == target and rng.random() < STOP_CHANCE:
            wait_here(notes, gate, f"{phase} {one_line(sql)}")

    trace_statements(on_statement)
    store = open_store(data_dir)
    outbox = Outbox(store, UNBOUNDED)
    transport = Transport(Settings(endpoint=url, geoip_url=""))
    sender = Sender(outbox, transport, CHILD_POLICY, 3600.0, threading.Event())
    os.write(notes, b"R\n")  # ready: the state file is open and has its tables
    while True:
        if rng.random() < 0.6:
            phase = "W"
            os.write(notes, b"W\n")
            for _ in range(rng.randint(1, 4)):
                sequence = store.next_sequence()
                rid = str(uuid.uuid4())
                pad = "x" * rng.choice((200, 4000, 40000))
                body = json.dumps({"report_id": rid, "sequence": sequence, "pad": pad}).encode()
                outbox.put(Entry(rid, sequence, "periodic", now, body), now)
                os.write(notes, f"P {rid}\n".encode())  # stored: it must not be lost
        else:
            phase = "S"
            os.write(notes, b"S\n")
            sender.deliver_due(now)
        now += 1.0


@pytest.mark.slow
def test_sigkill_mid_write_and_mid_send_never_corrupts_loses_or_doubles(
    tmp_path: Path, server: FaultServer
) -> None:
    rng = random.Random(20260302)
    stored: set[str] = set()
    kills: Counter[str] = Counter()
    statements: dict[str, set[str]] = {"W": set(), "S": set()}
    for n in range(KILLS):
        target = ("W", "S", "post")[n % 3]
        before = len(server.requests)
        if target == "post":
            server.behave([Silent()], then=Reply(202))  # hold the child's next POST
        args = (tmp_path, server.url, NOW + n * 10_000, rng.randrange(2**32), target)
        with child_process(_store_and_send, *args) as (child, notes):
            if target == "post":
                assert holds_a_post(server, before), "no POST reached the endpoint"
            else:
                stop = notes.stopped()
                assert stop is not None, f"child {n} ended before its point: {child.exitcode}"
                statements[target].add(stop.split(" ", 2)[2])
        assert child.exitcode == -9, "killed while waiting at its point"
        server.behave(then=Reply(202))
        kills[target] += 1
        stored |= {line[2:] for line in notes.close() if line.startswith("P ")}
        if n % 10 == 0 or n == KILLS - 1:
            assert integrity(tmp_path) == "ok"
            # Every stored report is still stored, or was accepted before it left.
            assert stored <= stored_ids(tmp_path) | set(server.accepted)
    assert kills == {"W": KILLS // 3, "S": KILLS // 3, "post": KILLS // 3}
    # Inside transactions and at their COMMIT, on both sides of a POST.
    assert len(statements["W"]) >= 3 and len(statements["S"]) >= 3, statements
    assert any(sql.startswith("COMMIT") for sql in statements["W"])
    assert len(stored) >= KILLS

    # A final clean run delivers the rest.
    store = open_store(tmp_path)
    sender = Sender(
        Outbox(store, UNBOUNDED),
        Transport(Settings(endpoint=server.url, geoip_url="")),
        CHILD_POLICY,
        3600.0,
        threading.Event(),
    )
    later = NOW + KILLS * 10_000 + 10**6
    while sender.deliver_due(later):
        pass
    assert Outbox(store, UNBOUNDED).pending() == []
    store.close()
    assert integrity(tmp_path) == "ok"
    assert set(server.accepted) >= stored
    assert all(count == 1 for count in server.accepted.values())
    # A resend happens only when a kill fell between the endpoint's answer and the
    # outbox's delete: at most one per kill at a statement while sending, and some
    # kills did fall there.
    assert 1 <= sum(server.duplicates.values()) <= kills["S"]


# SIGKILL of the whole plugin ------------------------------------------------------------

PLUGIN_KILLS = 40
LAST_STATEMENT = 400
"""Kills land at up to this statement of a child's life: the first open of the state
file, the startup report (claim, build, store, send, cross off) and a few periodic
ones (about 100 statements each)."""


def plugin_config(url: str) -> dict[str, Any]:
    # Reports of every child must still be young enough to send at the final run.
    return {"endpoint": url, "geoip_url": "", "outbox": {"max_age_days": 365}}


def _run_host(
    data_dir: Path, url: str, started_at: datetime, target: str, notes: int, gate: int
) -> None:
    """Run the plugin in a host, ticking every 30 minutes of host time, until killed.

    ``target``: ``create`` (stop at the first table made in a new state file),
    ``post`` (the parent kills while the endpoint holds a POST), else the number of
    the SQL statement, counted over the child's life, to stop at.
    """
    counted = itertools.count(1)

    def on_statement(sql: str) -> None:
        number = next(counted)  # atomic: the host's thread and the worker's both count
        if target == "create" and sql.lstrip().upper().startswith("CREATE"):
            wait_here(notes, gate, f"{number} {one_line(sql)}")
        if target == str(number):
            wait_here(notes, gate, f"{number} {one_line(sql)}")

    trace_statements(on_statement)
    host = Host(data_dir, plugin_config(url), started_at, CHILD_POLICY)
    host.start()
    now = started_at
    while True:
        # Each tick's work is done before the next: the statements come in one order.
        host.tick(now, idle=WAIT)
        now += timedelta(minutes=30)


@pytest.mark.slow
def test_sigkill_of_a_running_plugin_loses_nothing(tmp_path: Path, server: FaultServer) -> None:
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    seen: set[str] = set()
    kills: Counter[str] = Counter()
    for n in range(PLUGIN_KILLS):
        if n == 0:
            target = "create"  # the state file exists, its tables do not
        elif n % 4 == 3:
            target = "post"
        else:
            target = str(rng.randint(1, LAST_STATEMENT))
        before = len(server.requests)
        if target == "post":
            server.behave([Silent()], then=Reply(202))
        started_at = START + n * timedelta(days=1)
        with child_process(_run_host, data_dir, server.url, started_at, target) as (child, notes):
            if target == "post":
                assert holds_a_post(server, before), "no POST reached the endpoint"
            else:
                stop = notes.stopped()
                assert stop is not None, f"child {n} ended before its point: {child.exitcode}"
                assert target == "create" or stop.split()[1] == target
        assert child.exitcode == -9, "killed while waiting at its point"
        server.behave(then=Reply(202))
        kills["statement" if target.isdigit() else target] += 1
        assert integrity(data_dir) == "ok"
        if n == 0:
            assert stored_ids(data_dir) == set(), "killed while the tables were made"
        seen |= stored_ids(data_dir)
    posts = PLUGIN_KILLS // 4
    assert kills == {"create": 1, "post": posts, "statement": PLUGIN_KILLS - 1 - posts}
    seen |= set(server.accepted)
    assert len(seen) >= PLUGIN_KILLS

    final = Host(data_dir, plugin_config(server.url), START + timedelta(days=60), FAST)
    final.start()
    try:
        final.tick(START + timedelta(days=60))
        sender = final.runtime.worker.sender
        assert sender is not None
        assert sender.outbox.pending() == []
    finally:
        final.shutdown()
    assert integrity(data_dir) == "ok"
    assert set(server.accepted) >= seen
    assert all(count == 1 for count in server.accepted.values())
