"""One installation, many processes and nodes: exactly one report per trigger, with
totals summed.

Real processes (forked), each a simulated MaestroHub host start with the real
plugin, share one installation's state: the embedded SQLite file (processes of
one machine) or one PostgreSQL database (processes of several nodes, each with
its own data dir). The test process drives them in lockstep on the host clock
and runs the receiver, which deduplicates by ``Idempotency-Key`` and counts
duplicates, as the real one does.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from faultservers import FaultServer, Reply, Silent

from phonehome_plugin.plugin import RUNTIME_NAME
from phonehome_plugin.reports import schedule
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

FORK = multiprocessing.get_context("fork")
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STEP = 600
INTERVAL = 3600
REPLY_WAIT = 60.0
STATUSES = {"completed": 6, "failed": 2, "completed_with_errors": 1, "cancelled": 1}
CONNECTIONS = (("mqtt", "c1"), ("opcua", "c2"), ("s7", "c3"))


def _serve(
    config: dict[str, Any],
    data_dir: Path,
    started_at: datetime,
    commands: Connection,
    barrier: Any,
) -> None:
    """One process of the installation: a host start that does what it is told."""
    host = SimHost(config, data_dir, clock=SimClock(START), started_at=started_at)
    for kind, connection_id in CONNECTIONS:  # the same inventory in every process
        host.save_connection(kind, connection_id)
    host.start()
    runtime: Any = host.app.plugin_manager.get_plugin(RUNTIME_NAME)
    while True:
        command, argument = commands.recv()
        if command == "tick":
            host.tick(argument)
            commands.send(runtime.worker.wait_idle(30))
        elif command == "user":
            barrier.wait(10)  # two processes create their users at the same moment
            host.create_user(argument)
            commands.send(runtime.worker.wait_idle(30))
        elif command == "call":  # a change made in this process only
            name, args, kwargs = argument
            getattr(host, name)(*args, **kwargs)
            commands.send(runtime.worker.wait_idle(30))
        elif command == "executions":
            commands.send(dict(host.run_executions(argument, STATUSES, threads=2)))
        elif command == "stop":
            host.shutdown()
            commands.send(True)
            return


@dataclass
class Process:
    process: Any
    commands: Connection

    def send(self, command: str, argument: Any = None) -> None:
        self.commands.send((command, argument))

    def reply(self) -> Any:
        assert self.commands.poll(REPLY_WAIT), "a process of the installation hung or died"
        return self.commands.recv()


class Installation:
    """Processes started from ``(data_dir, started_at)`` pairs, sharing ``state_url``."""

    def __init__(
        self,
        server: FaultServer,
        starts: Sequence[tuple[Path, datetime]],
        state_url: str | None,
        timeout: float = 10,
    ) -> None:
        section: dict[str, Any] = {"endpoint": server.url, "geoip_url": "", "timeout": timeout}
        if state_url is not None:
            section["state_url"] = state_url
        config = {"modules": {"phonehome": section}}
        self.barrier = FORK.Barrier(2)
        self.processes: list[Process] = []
        for data_dir, started_at in starts:
            ours, theirs = FORK.Pipe()
            process = FORK.Process(
                target=_serve, args=(config, data_dir, started_at, theirs, self.barrier)
            )
            process.start()
            self.processes.append(Process(process, ours))

    def all(self, command: str, argument: Any = None) -> list[Any]:
        """Send ``command`` to every process at once, then collect every reply."""
        for process in self.processes:
            process.send(command, argument)
        return [process.reply() for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.process.is_alive():
                process.send("stop")
        for process in self.processes:
            process.process.join(10)
            if process.process.is_alive():
                process.process.kill()
                process.process.join(5)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(then=Reply(202)) as running:
        yield running


def _run_a_day(
    server: FaultServer, installation: Installation, user_makers: tuple[int, int]
) -> Counter[str]:
    """Startup, the first user (twice at once), executions everywhere, then ticks until
    the 24th periodic slot after the startup's is due; returns the executions emitted."""
    assert all(installation.all("tick")), "startup: a worker did not settle"
    [startup] = [r for r in server.reports.values() if r["trigger"] == "startup"][:1]
    instance_id = startup["instance_id"]
    # Two processes create the installation's first users at the same moment.
    for index, email in zip(user_makers, ("b@example.com", "a@example.com"), strict=True):
        installation.processes[index].send("user", email)
    assert all(installation.processes[i].reply() for i in user_makers)
    # Executions in every process, before the ticks that fold them into the store.
    emitted: Counter[str] = Counter()
    for n, process in enumerate(installation.processes):
        process.send("executions", 100 * (n + 1))
    for process in installation.processes:
        emitted.update(process.reply())
    # The periodic slot current at startup is the last one "reported"; run until the
    # 24th after it is due (no further slot can be due within one step of that).
    offset = schedule.offset(instance_id, INTERVAL)
    first_slot = schedule.slot_of(START.timestamp(), INTERVAL, offset)
    due = schedule.periodic_due_at(first_slot + 23, instance_id, INTERVAL)
    now = START.timestamp()
    while now < due:
        assert all(installation.all("tick", STEP)), "a worker did not settle"
        now += STEP
    assert due + INTERVAL - schedule.MAX_JITTER > now
    return emitted


def _check(server: FaultServer, emitted: Counter[str], startups: int) -> None:
    reports = sorted(server.reports.values(), key=lambda r: r["sequence"])
    triggers = Counter(r["trigger"] for r in reports)
    assert triggers == {"startup": startups, "first_user": 1, "periodic": 24}, triggers
    assert sum(server.duplicates.values()) == 0, server.duplicates
    assert all(count == 1 for count in server.accepted.values())
    # One sequence, one instance, one report per periodic slot.
    assert [r["sequence"] for r in reports] == list(range(1, len(reports) + 1))
    assert len({r["instance_id"] for r in reports}) == 1
    assert len({r["generated_at"] for r in reports if r["trigger"] == "periodic"}) == 24
    [first] = [r for r in reports if r["trigger"] == "first_user"]
    assert first["users"]["first_email"] in ("a@example.com", "b@example.com")
    # Totals are the installation's: executions summed over every process,
    # inventory counted once (every process knows the same connections).
    last = reports[-1]
    by_status = {s: n for s, n in last["executions"]["by_status"].items() if n}
    assert by_status == dict(emitted)
    assert last["executions"]["total"] == sum(emitted.values())
    assert all(r["connections"]["total"] == len(CONNECTIONS) for r in reports)


def test_four_processes_of_one_machine_share_the_embedded_store(
    tmp_path: Path, server: FaultServer
) -> None:
    installation = Installation(server, [(tmp_path / "data", START)] * 4, state_url=None)
    try:
        emitted = _run_a_day(server, installation, user_makers=(1, 3))
    finally:
        installation.stop()
    _check(server, emitted, startups=1)


@pytest.mark.postgres
def test_two_nodes_of_three_processes_share_postgresql(
    tmp_path: Path, server: FaultServer, pg_url: str
) -> None:
    # Each node is its own host start (its own started_at) with its own data dir.
    node_a = (tmp_path / "node-a", START)
    node_b = (tmp_path / "node-b", START - timedelta(seconds=40))
    installation = Installation(server, [node_a] * 3 + [node_b] * 3, state_url=pg_url)
    try:
        emitted = _run_a_day(server, installation, user_makers=(0, 4))
    finally:
        installation.stop()
    _check(server, emitted, startups=2)
    assert not (tmp_path / "node-a" / "phonehome.sqlite3").exists()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_each_process_sees_only_its_own_changes_and_every_report_counts_them_all(
    tmp_path: Path, server: FaultServer, backend: str, request: pytest.FixtureRequest
) -> None:
    """As a real multi-process host does, each change's signal is sent only in the
    process that made it: one process saves connections and pipelines, another
    creates a user, and every later report, whichever process builds it, has the
    installation's totals."""
    state_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    data = [(tmp_path / "data", START)] * 2
    installation = Installation(server, data, state_url=state_url)
    try:
        assert all(installation.all("tick")), "startup: a worker did not settle"
        maker, other = installation.processes
        for n in range(5):
            maker.send("call", ("save_connection", ("mqtt" if n % 2 else "modbus", f"a-c{n}"), {}))
            assert maker.reply()
        for n in range(2):
            maker.send(
                "call", ("save_pipeline", (["trigger.manual"],), {"pipeline_id": f"a-p{n}"})
            )
            assert maker.reply()
        maker.send("call", ("delete_connection", ("c1",), {}))  # one of the common ones
        assert maker.reply()
        other.send("call", ("create_user", ("admin@example.com",), {}))
        assert other.reply()
        for _ in range(4 * INTERVAL // STEP):
            assert all(installation.all("tick", STEP)), "a worker did not settle"
    finally:
        installation.stop()
    reports = sorted(server.reports.values(), key=lambda r: r["sequence"])
    # Each process carries its changes over at its own next job (every STEP tick is
    # one for both): a report built in that first round, like the first-user report
    # made at once by the process that created the user, may not have the other's
    # yet. Every report of a later round must.
    folded = START + timedelta(seconds=2 * STEP)
    periodic = [
        r
        for r in reports
        if r["trigger"] == "periodic"
        and datetime.fromisoformat(r["generated_at"].replace("Z", "+00:00")) >= folded
    ]
    assert len(periodic) >= 2
    for report in periodic:
        assert report["connections"] == {
            "total": len(CONNECTIONS) - 1 + 5,
            "by_type": {"modbus": 3, "mqtt": 2, "opcua": 1, "s7": 1},
        }, report["trigger"]
        assert report["pipelines"]["total"] == 2
        assert report["users"] == {"total": 1, "first_email": "admin@example.com"}
    assert len({r["instance_id"] for r in reports}) == 1


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_process_killed_mid_send_leaves_its_report_to_another_exactly_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    state_url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    with FaultServer(script=[Silent()], then=Reply(202)) as server:
        # A long series deadline: the victim is still inside its send when killed.
        installation = Installation(
            server, [(tmp_path / "data", START)] * 3, state_url=state_url, timeout=60
        )
        victim, *others = installation.processes
        try:
            victim.send("tick")  # claims, builds and leases the startup report, then POSTs
            assert server.wait_for(lambda s: len(s.requests) == 1, 20), "no POST arrived"
            [held] = server.requests
            victim.process.kill()  # SIGKILL in the middle of the send
            victim.process.join(5)
            assert victim.process.exitcode == -9
            for process in others:
                process.send("tick")
            assert all(process.reply() for process in others)
            # The lease is still live on the host clock: nobody sends it yet.
            assert len(server.requests) == 1 and not server.accepted
            for process in others:
                process.send("tick", STEP)  # past the lease (300 s of host clock)
            assert all(process.reply() for process in others)
        finally:
            installation.stop()
    assert held.key is not None
    # A periodic report may fall due too, depending on the installation's offset.
    assert server.accepted[held.key] == 1
    assert sum(server.duplicates.values()) == 0
    startups = [r for r in server.reports.values() if r["trigger"] == "startup"]
    assert [r["report_id"] for r in startups] == [held.key]
    # The victim's stalled POST and exactly one delivery by another process.
    assert [r.key for r in server.requests].count(held.key) == 2
