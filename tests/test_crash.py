"""Real child processes: killed with SIGKILL mid-write and mid-send, and forked.

The outbox must never be corrupt, nothing stored may be lost, and what a killed
process had sent but not yet crossed off goes again under the same
``Idempotency-Key`` (the endpoint absorbs it), so every stored report is
accepted exactly once in the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faultservers import START, FaultServer, Host, Reply

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
CHILD_POLICY = RetryPolicy(deadline=2.0, max_attempts=3, wait_base=0.01, wait_max=0.02)
FAST = RetryPolicy(deadline=1.0, max_attempts=4, wait_base=0.01, wait_max=0.05)
KILLS = 240


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
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        return {row[0] for row in conn.execute("SELECT report_id FROM outbox")}
    finally:
        conn.close()


def read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def read_until(fd: int, marker: str) -> str:
    """Read the child's notes until the line ``marker`` (or EOF); what was read."""
    text = ""
    while f"\n{marker}\n" not in f"\n{text}":
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text += chunk.decode()
    return text


# SIGKILL while writing and while sending ---------------------------------------------


def _store_and_send(data_dir: Path, url: str, now: float, seed: int, notes: int) -> None:
    """Store reports and send them, forever, telling the parent each step (until killed)."""
    rng = random.Random(seed)
    store = open_store(data_dir)
    outbox = Outbox(store, UNBOUNDED)
    transport = Transport(Settings(endpoint=url, geoip_url=""))
    sender = Sender(outbox, transport, CHILD_POLICY, 3600.0, threading.Event())
    os.write(notes, b"R\n")  # ready: the parent's kill timer starts now
    while True:
        if rng.random() < 0.6:
            os.write(notes, b"W\n")  # writing the outbox
            for _ in range(rng.randint(1, 4)):
                sequence = store.next_sequence()
                rid = str(uuid.uuid4())
                pad = "x" * rng.choice((200, 4000, 40000))
                body = json.dumps({"report_id": rid, "sequence": sequence, "pad": pad}).encode()
                outbox.put(Entry(rid, sequence, "periodic", now, body), now)
                os.write(notes, f"P {rid}\n".encode())  # stored: it must not be lost
        else:
            os.write(notes, b"S\n")  # sending
            sender.deliver_due(now)
        now += 1.0


@pytest.mark.slow
def test_sigkill_mid_write_and_mid_send_never_corrupts_loses_or_doubles(
    tmp_path: Path, server: FaultServer
) -> None:
    rng = random.Random(20260302)
    stored: set[str] = set()
    phases: Counter[str] = Counter()
    killed_sending = 0
    for n in range(KILLS):
        reader, writer = os.pipe()
        child = FORK.Process(
            target=_store_and_send,
            args=(tmp_path, server.url, NOW + n * 10_000, rng.randrange(2**32), writer),
        )
        child.start()
        os.close(writer)
        # Aim each kill at a phase: wait until the child enters it, then a little more.
        target = rng.choice(("W", "S"))
        seen = read_until(reader, target)
        time.sleep(rng.uniform(0.0, 0.001 if target == "W" else 0.004))
        child.kill()  # SIGKILL: no cleanup of any kind
        child.join(5)
        assert child.exitcode == -9
        lines = (seen + read_all(reader)).splitlines()
        os.close(reader)
        stored |= {line[2:] for line in lines if line.startswith("P ")}
        phase = next((line for line in reversed(lines) if line in ("W", "S")), "ready")
        phases[phase] += 1
        killed_sending += phase == "S"
        if n % 10 == 0 or n == KILLS - 1:
            assert integrity(tmp_path) == "ok"
            # Every stored report is still stored, or was accepted before it left.
            assert stored <= stored_ids(tmp_path) | set(server.accepted)
    # The kills landed in both phases, many times each.
    assert phases["W"] >= 20 and phases["S"] >= 20, phases
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
    # outbox's delete: at most one per kill while sending.
    assert sum(server.duplicates.values()) <= killed_sending


# SIGKILL of the whole plugin ------------------------------------------------------------


def plugin_config(url: str) -> dict[str, Any]:
    # Reports of every child must still be young enough to send at the final run.
    return {"endpoint": url, "geoip_url": "", "outbox": {"max_age_days": 365}}


def _run_host(data_dir: Path, url: str, started_at: datetime) -> None:
    host = Host(data_dir, plugin_config(url), started_at, FAST)
    host.start()
    now = started_at
    while True:
        host.tick(now)
        now += timedelta(minutes=30)


@pytest.mark.slow
def test_sigkill_of_a_running_plugin_loses_nothing(tmp_path: Path, server: FaultServer) -> None:
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    seen: set[str] = set()
    for n in range(40):
        child = FORK.Process(
            target=_run_host, args=(data_dir, server.url, START + n * timedelta(days=1))
        )
        child.start()
        time.sleep(rng.uniform(0.005, 0.15))
        child.kill()
        child.join(5)
        assert child.exitcode == -9
        if (data_dir / FILENAME).exists():
            assert integrity(data_dir) == "ok"
            seen |= stored_ids(data_dir)
    seen |= set(server.accepted)
    assert len(seen) >= 40

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
