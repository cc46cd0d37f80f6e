"""A host that forks at any moment: real ``os.fork()`` around the worker's busiest points.

A pre-forking MaestroHub runs ``on_startup`` in a parent and forks workers at
any time, including while the plugin's worker is opening the state file, inside
a statement, waiting for a POST's answer or for a location lookup. Whatever it
was doing, the parent and every child go on: no crash, no hang, each child joins
the parent's installation, and every execution counted, by the parent or by any
child, is in the installation's lifetime totals exactly once.

The whole scenario runs in a host process of its own, so that a crash there is a
failed test with a reason instead of a dead test runner.
"""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from faultservers import START, FaultServer, Host, Linger, Reply

from hookspecs import signals
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.state import sqlite
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import FILENAME

FORK = multiprocessing.get_context("fork")
FORKS = 200
HANG = 120
"""Seconds after which a child or a worker counts as hung: a hang detector, far
beyond what any step takes on a loaded machine (the test never races a clock)."""
POINTS = ("open", "statement", "post", "lookup")
PARENT_RUNS = 3
CHILD_RUNS = 2
FAST = RetryPolicy(deadline=2.0, max_attempts=2, wait_base=0.01, wait_max=0.02)
GEO = (
    b'{"status": "success", "query": "203.0.113.9", "country": "Nowhere", '
    b'"regionName": "Test", "city": "Loopback", "isp": "Test"}'
)


@pytest.fixture
def endpoint() -> Iterator[FaultServer]:
    with FaultServer(then=Linger(202)) as running:
        yield running


@pytest.fixture
def geoip() -> Iterator[FaultServer]:
    with FaultServer(then=Linger(200, GEO)) as running:
        yield running


class Gates:
    """Where the worker of this process is: each point's event is set when the
    worker reaches it (the worker never waits on it)."""

    def __init__(self) -> None:
        self.events = {point: threading.Event() for point in POINTS}
        self.hits: Counter[str] = Counter()

    def wrap(self, point: str, original: Callable[..., Any]) -> Callable[..., Any]:
        event = self.events[point]

        def reached(*args: Any, **kwargs: Any) -> Any:
            event.set()
            return original(*args, **kwargs)

        return reached

    def install(self) -> None:
        """Patch the entries of the four points (in this host process only)."""
        sqlite._file_store = self.wrap("open", sqlite._file_store)
        sqlite.SqliteStore.session = self.wrap(  # type: ignore[method-assign]
            "statement", sqlite.SqliteStore.session
        )
        Transport.post = self.wrap("post", Transport.post)  # type: ignore[method-assign]
        Transport.get = self.wrap("lookup", Transport.get)  # type: ignore[method-assign]

    def clear(self) -> None:
        for event in self.events.values():
            event.clear()


def _reached(event: threading.Event, host: Host) -> bool:
    """Whether the worker reached the point in this job: it does, or the job ends
    without (then the round counts as missed). No deadline: a slow machine only
    makes it take longer; the test's own timeout catches a worker that hangs."""
    while not event.wait(0.005):
        if host.runtime.worker.wait_idle(0):
            return event.is_set()
    return True


def _config(url: str, geoip_url: str) -> dict[str, Any]:
    return {"endpoint": url, "geoip_url": geoip_url, "outbox": {"max_age_days": 3650}}


def _execute(host: Host, runs: int) -> None:
    for _ in range(runs):
        signals.execution_finished.send(
            host.app, pipeline_id="p1", status="completed", duration_ms=5
        )


def _child(host: Host, now: datetime, out: Connection) -> None:
    """A forked worker process: counts its own executions, ticks, reports, exits."""
    _execute(host, CHILD_RUNS)
    host.tick(now + timedelta(minutes=5), idle=HANG)
    worker = host.runtime.worker
    store = worker.store
    out.send(
        {
            "instance": None if worker.reporter is None else worker.reporter.instance_id,
            "memory": None if store is None else store.memory,
        }
    )
    host.shutdown()


def _host_process(
    data_dir: Path, url: str, geoip_url: str, seed: int, forks: int, out: Connection
) -> None:
    # The plugin's worker is busy on purpose at every fork here, so Python 3.12+
    # rightly warns that the process is multi-threaded; that is the point of the test.
    warnings.simplefilter("ignore", DeprecationWarning)
    rng = random.Random(seed)
    gates = Gates()
    gates.install()
    config = _config(url, geoip_url)
    host = Host(data_dir, config, policy=FAST)
    host.start()
    now = START
    results: dict[str, Any] = {"children": Counter(), "instances": set(), "memory": 0}
    counted = 0
    for n in range(forks):
        point = POINTS[n % len(POINTS)]
        if point == "open":
            # A new host start of the same installation: its first job opens the file.
            host.shutdown()
            host = Host(data_dir, config, started_at=START + timedelta(days=2 * n), policy=FAST)
            host.start()
        gates.clear()
        _execute(host, PARENT_RUNS)
        counted += PARENT_RUNS
        # Each round moves two days on: a new slot (claim, build, store, POST) and
        # an expired location cache (a lookup). Two days, not one, because a child of
        # the round before may itself have looked the location up, minutes after its
        # parent (when it won that round's slot); a day later that answer is fresh.
        now = START + timedelta(days=2 * n, minutes=10)
        host.tick(now, idle=0)
        reached = _reached(gates.events[point], host)
        gates.hits[point if reached else "missed"] += 1
        # A random moment around the point: from at once to a few hundred microseconds on.
        for _ in range(rng.randrange(0, 3000)):
            pass
        reader, writer = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_child, args=(host, now, writer))
        child.start()
        writer.close()
        if not reader.poll(HANG):
            results["children"]["hung"] += 1
            child.kill()
            child.join(5)
            continue
        found = reader.recv()
        child.join(HANG)
        results["children"]["exit " + str(child.exitcode)] += 1
        if child.exitcode == 0:
            counted += CHILD_RUNS
        results["instances"].add(found["instance"])
        results["memory"] += bool(found["memory"])
        assert host.runtime.worker.wait_idle(HANG), "the parent's worker hung after a fork"
    host.tick(now + timedelta(hours=1), idle=HANG)
    parent_instance = host.runtime.worker.reporter
    host.shutdown()
    store = open_store(data_dir)
    totals = store.counters("exec.")
    store.close()
    out.send(
        {
            **results,
            "parent": None if parent_instance is None else parent_instance.instance_id,
            "hits": dict(gates.hits),
            "counted": counted,
            "stored": sum(totals.values()),
        }
    )


@pytest.mark.slow
@pytest.mark.timeout(HANG * FORKS)
def test_forks_at_the_workers_busiest_points_never_crash_hang_or_split_the_installation(
    tmp_path: Path, endpoint: FaultServer, geoip: FaultServer
) -> None:
    data_dir = tmp_path / "data"
    geoip_url = geoip.url.replace("/v1/reports", "/json")
    reader, writer = FORK.Pipe(duplex=False)
    host = FORK.Process(
        target=_host_process, args=(data_dir, endpoint.url, geoip_url, 20261201, FORKS, writer)
    )
    host.start()
    writer.close()
    assert reader.poll(HANG * FORKS), "the host process hung"
    found = reader.recv()
    host.join(30)
    assert host.exitcode == 0, f"the host process died: exit code {host.exitcode}"
    assert found["children"] == {"exit 0": FORKS}, found["children"]
    # The forks landed at every point (the worker reached each before the fork).
    assert found["hits"].get("missed", 0) == 0, found["hits"]
    assert set(found["hits"]) == set(POINTS), found["hits"]
    # One installation: every child joined the parent's, none kept state in memory.
    assert found["instances"] == {found["parent"]}
    assert found["memory"] == 0
    # No count lost, none counted twice.
    assert found["stored"] == found["counted"]
    # The state file came through intact.
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # Every report the endpoint accepted, it accepted once.
    assert all(count == 1 for count in endpoint.accepted.values())


# A child with a report its parent left in the outbox ---------------------------------


def _tick_in_child(host: Host, now: datetime, out: Connection) -> None:
    host.tick(now, idle=HANG)
    sender = host.runtime.worker.sender
    out.send({"pending": None if sender is None else len(sender.outbox.pending())})
    host.shutdown()


def test_a_forked_child_sends_what_its_parent_left_in_the_outbox(
    tmp_path: Path, endpoint: FaultServer
) -> None:
    server = endpoint
    server.behave([Reply(503)] * FAST.max_attempts, then=Reply(202))
    host = Host(tmp_path / "data", {"endpoint": server.url, "geoip_url": ""}, policy=FAST)
    host.start()
    try:
        host.tick(START)  # the startup report fails and waits in the outbox
        sender = host.runtime.worker.sender
        assert sender is not None
        [waiting] = sender.outbox.pending()
        reader, writer = FORK.Pipe(duplex=False)
        child = FORK.Process(
            target=_tick_in_child, args=(host, START + timedelta(hours=2), writer)
        )
        child.start()
        assert reader.poll(HANG), "the child hung"
        found: dict[str, Any] = reader.recv()
        child.join(5)
        assert child.exitcode == 0
        assert found["pending"] == 0
        assert server.accepted[waiting.report_id] == 1
        assert all(count == 1 for count in server.accepted.values())
        # The parent carries on with its own worker and sees the child's delivery.
        assert sender.outbox.pending() == []
        host.tick(START + timedelta(hours=3))
        assert len(server.accepted) >= 2
    finally:
        host.shutdown()
