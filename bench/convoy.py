"""One report while the host's threads are CPU-bound, and its transactions on PostgreSQL.

Every call into SQLite (or a socket) gives up the GIL; with CPU-bound host threads
running, taking it back waits up to a switch interval each time, so a report that
makes many separate calls is slowed by the host's busy threads, a convoy. Measured
with 8 host threads spinning in pure Python: one report (``reporter.periodic`` at a
due slot: claim, build, check, store; what the worker does for a report but the
POST), run on the benchmark's thread with the worker idle. The budget is on wall
time less run-queue wait (:mod:`bench.clocks`): CPU time plus the time spent
blocked, waiting for the GIL mostly, but not the time the OS ran something else on
a busy machine. Wall time is beside it (machine-dependent), with the voluntary
context switches (how often the report's thread blocked).

The same report on PostgreSQL state (a database of its own on the server at
``PHONEHOME_TEST_PG``, default ``postgresql://postgres@127.0.0.1:5432/postgres``,
dropped afterwards), its transactions and statements counted; skipped, saying why,
when no server answers.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import clocks
from bench.host import Host, host_with, make_inventory, scale_of
from bench.results import Row
from bench.transactions import Counted, StoreCounter

SECTION = "One report while host threads are CPU-bound (GIL convoy)"
BUSY_THREADS = 8
CONVOY_LIMIT = 0.100
TRANSACTIONS_LIMIT = 5
PG_ADMIN = os.environ.get("PHONEHOME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SCALE = 1_000
"""Pipelines of the installation measured here (the rest in proportion)."""


def _report(host: Host) -> tuple[clocks.Span, Counted]:
    reporter = host.runtime.worker.reporter
    host.now = datetime.fromtimestamp(reporter.next_periodic(host.now) + 0.001, UTC)
    with StoreCounter(host.runtime.worker.store) as counted, clocks.span() as one:
        made = reporter.periodic(host.now)
    if made is None:
        raise RuntimeError("no periodic report was made at its due time")
    return one, counted


def _due_tick(host: Host) -> clocks.Span:
    """``on_tick`` when a report is due: the host thread's part (it hands the tick over)."""
    reporter = host.runtime.worker.reporter
    host.now = datetime.fromtimestamp(reporter.next_periodic(host.now) + 0.001, UTC)
    with clocks.span() as one:
        host.tick()
    host.idle(120.0)
    return one


@contextmanager
def _spinning(count: int) -> Iterator[None]:
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1

    threads = [threading.Thread(target=spin, name=f"busy-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _booted(url: str, **settings: Any) -> Host:
    inventory = make_inventory(scale_of(SCALE), datetime.now(UTC))
    host = host_with(url, inventory, interval=60, **settings)
    host.boot(inventory, timeout=120.0)
    if host.runtime.worker.store is None:
        host.close()
        raise RuntimeError("the plugin did not open its state")
    return host


def convoy_rows(url: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    reps = 2 if quick else 6
    host = _booted(url)
    try:
        idle = [_report(host)[0] for _ in range(reps)]
        with _spinning(BUSY_THREADS):
            busy = [_report(host) for _ in range(reps)]
            ticks = [_due_tick(host) for _ in range(reps)]
    finally:
        host.close()
    spans = [b[0] for b in busy]
    counted = busy[-1][1]

    def med(values: list[int]) -> float:
        return float(statistics.median(values)) / 1e9

    value = med([s.unpreempted for s in spans])
    base = med([s.unpreempted for s in idle])
    switch = sys.getswitchinterval()
    waits = statistics.median(s.blocked_times for s in spans)
    busy_cpu, busy_wall = med([s.cpu for s in spans]), med([s.wall for s in spans])
    idle_cpu, idle_wall = med([s.cpu for s in idle]), med([s.wall for s in idle])
    rows = [
        Row(
            "convoy.report",
            SECTION,
            f"one report with {BUSY_THREADS} CPU-bound host threads: wall less run-queue wait",
            value,
            baseline="no busy thread",
            baseline_value=base,
            ratio=value / base if base else None,
            limit=CONVOY_LIMIT,
            budget="<= 100 ms",
            note=f"{SCALE:,} pipelines (the rest in proportion), {reps} reports each way; "
            f"`reporter.periodic` at a due slot on the benchmark's thread. With the busy "
            f"threads: CPU {busy_cpu * 1e3:.1f} ms, the thread blocked {waits:.0f} times "
            "(voluntary switches; each wait for the GIL lasts up to the "
            f"{switch * 1e3:.0f} ms switch interval), wall {busy_wall * 1e3:.0f} ms "
            f"(machine-dependent); {counted.transactions} transactions, "
            f"{counted.statements} SQLite statements. Idle: CPU {idle_cpu * 1e3:.1f} ms, "
            f"wall {idle_wall * 1e3:.1f} ms.",
        )
    ]
    rows.append(
        Row(
            "convoy.tick",
            SECTION,
            f"on_tick with a report due, {BUSY_THREADS} CPU-bound host threads: wall less "
            "run-queue wait (no budget)",
            med([t.unpreempted for t in ticks]),
            note="The host thread's part only (the worker builds and sends afterwards): "
            f"CPU {med([t.cpu for t in ticks]) * 1e6:.0f} µs; it blocked "
            f"{statistics.median(t.blocked_times for t in ticks):.0f} times (starting the "
            "worker's thread waits for that thread to run, which needs the GIL).",
        )
    )
    rows.append(_postgres_row(url, quick))
    details = {
        "busy": [vars(s) for s in spans],
        "idle": [vars(s) for s in idle],
        "statements": counted.kinds,
    }
    return rows, details


@contextmanager
def _database() -> Iterator[str | None]:
    """The URL of a new database on the test server (dropped afterwards), or None."""
    try:
        import psycopg
    except ImportError:
        yield None
        return
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        yield None
        return
    name = f"phonehome_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield urlunsplit(urlsplit(PG_ADMIN)._replace(path=f"/{name}"))
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _postgres_row(url: str, quick: bool) -> Row:
    label = "state-store transactions for one report (PostgreSQL)"
    with _database() as pg:
        if pg is None:
            return Row(
                "convoy.pg_transactions",
                SECTION,
                label,
                None,
                note="Skipped: psycopg is not installed or no PostgreSQL server answers at "
                f"{urlsplit(PG_ADMIN).netloc.rpartition('@')[2]}.",
            )
        host = _booted(url, state_url=pg)
        try:
            found = [_report(host) for _ in range(2 if quick else 4)]
        finally:
            host.close()
    span, counted = found[-1]
    return Row(
        "convoy.pg_transactions",
        SECTION,
        label,
        float(counted.transactions),
        unit="n",
        limit=float(TRANSACTIONS_LIMIT),
        budget=f"<= {TRANSACTIONS_LIMIT}",
        note=f"{counted.statements} statements run by the plugin's work (each a round trip; "
        "the BEGIN, SET LOCAL, lock and COMMIT each transaction adds not counted) for "
        f"`reporter.periodic` at a due slot, {SCALE:,} pipelines; wall "
        f"{span.wall / 1e6:.1f} ms, CPU {span.cpu / 1e6:.1f} ms (machine-dependent: a local "
        "server).",
    )
