"""The fault matrix: one installation of 2 nodes x 3 processes, through every fault an
installation meets, each landing at an exact point.

The installation's state is a PostgreSQL cluster of this module's own (so it can be
stopped, restarted ``-m immediate`` and filled to ``max_connections``); PgBouncer in
transaction mode stands in front of it in one case. Every process is a real host
start (tests/installation_support.py); each makes inventory changes that only it sees.

Exact points: a test-only trigger on each of the plugin's tables makes one chosen
process's statement of one kind (``INSERT`` into ``outbox``, say) wait on an advisory
lock the test holds; once that process is seen waiting there, the test kills it
(SIGKILL, then a replacement process from the host's database), terminates its
backend, restarts the server, or freezes it (SIGSTOP), and only then lets it go on.

Every case then checks the installation's promises: the reports expected (one
startup per node's host start, the first user's, one periodic per due slot, from
the slot after the one the startup covers to the last one due) are the reports
received; each claimed trigger has one report id and the receiver accepted it
once; no once-only report was lost; one ``instance_id``; the last report's totals
equal every execution and inventory change made. ``-s`` prints the table.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from faultservers import FaultServer, Reply
from installation_support import START, Installation, Member, Spec
from pg_support import PgCluster, pgbouncer

from phonehome_plugin.reports import schedule
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.testing.simhost import SimState
from phonehome_plugin.testing.vocabulary import ID_PREFIX

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL = 3600
STEP = 1200
GATE = 4242
"""The advisory lock the test holds while a process waits at a gate."""
WAIT = 20.0
"""Seconds to wait for a process to reach a gate: only a hung process takes that long."""
NODES = {"a": START, "b": START - timedelta(seconds=40)}
TABLES = ("claims", "outbox", "counters", "entities", "kv", "history")
REPORT_STEPS = (
    ("kv", "INSERT"),  # the schedule's last slot, read or set first
    ("claims", "INSERT"),  # the slot claimed
    ("entities", "INSERT"),  # the process's own inventory change folded, mid-build
    ("counters", "INSERT"),  # the sequence taken, inside the settle
    ("outbox", "INSERT"),  # the report stored, inside the settle
    ("outbox", "UPDATE"),  # settled; the report leased for sending
    ("outbox", "DELETE"),  # sent and answered; crossed off
    ("history", "INSERT"),  # the outcome recorded
)
"""The statements of one periodic report, in order, from the building process."""
USER_STEPS = (
    ("kv", "INSERT"),  # the earliest user remembered
    ("claims", "INSERT"),  # the first-user trigger claimed
    ("outbox", "INSERT"),  # its report stored
    ("outbox", "UPDATE"),  # leased for sending
)
"""The statements of the first-user report, from the process that created the user."""
GATE_SQL = f"""
CREATE TABLE IF NOT EXISTS fault_gate (tbl TEXT, op TEXT, app TEXT);
CREATE OR REPLACE FUNCTION fault_gate_wait() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM fault_gate WHERE tbl = TG_TABLE_NAME AND op = TG_OP
               AND app = current_setting('application_name')) THEN
        PERFORM pg_advisory_xact_lock({GATE});
    END IF;
    RETURN NULL;
END $$;
"""
NO_TIMEOUTS = "-c lock_timeout=0 -c statement_timeout=0"
"""For a process held at a gate: it waits there as long as the test needs, not 5 s."""


class Gates:
    """The test-only triggers of one database, and the lock that holds a process there."""

    def __init__(self, cluster: PgCluster, database: str) -> None:
        self.cluster, self.database = cluster, database
        self.conn = cluster.admin(database)
        for table in TABLES:
            self.conn.execute(
                f"CREATE TRIGGER fault_gate_{table} AFTER INSERT OR UPDATE OR DELETE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION fault_gate_wait()"
            )

    def hold(self, app: str, table: str, op: str) -> None:
        """The next statement of ``op`` on ``table`` by process ``app`` waits."""
        self.conn.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        self.conn.execute("INSERT INTO fault_gate VALUES (%s, %s, %s)", (table, op, app))

    def waiting(self, app: str) -> int:
        """The backend of ``app`` once it waits at the gate (a readiness wait: it ends
        as soon as the process gets there; only a hung process reaches the limit)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            row = self.conn.execute(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objid = %s "
                "AND a.application_name = %s",
                (GATE, app),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.01)
        claims = self.conn.execute("SELECT key, owner, done FROM claims").fetchall()
        kv = self.conn.execute("SELECT key, value FROM kv WHERE key LIKE 'periodic%'").fetchall()
        activity = self.conn.execute(
            "SELECT application_name, state, wait_event_type, left(query, 60) "
            "FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchall()
        pytest.fail(f"{app} never reached its gate: {claims} {kv} {activity}")

    def open(self) -> None:
        """No gate any more, and whoever waits at one goes on."""
        self.conn.execute("DELETE FROM fault_gate")
        self.conn.execute("SELECT pg_advisory_unlock_all()")

    def terminate(self, backend: int) -> None:
        self.conn.execute("SELECT pg_terminate_backend(%s)", (backend,))

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = self.cluster.admin(self.database)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class Setup:
    """Everything one case runs on."""

    cluster: PgCluster
    database: str
    server: FaultServer
    tmp_path: Path
    gates: Gates

    def url(self, app: str, timeouts: bool = True, via: str | None = None) -> str:
        params = {"application_name": app}
        if not timeouts:
            params["options"] = quote(NO_TIMEOUTS)
        base = via or self.cluster.url(self.database)
        return (
            base + ("&" if "?" in base else "?") + "&".join(f"{k}={v}" for k, v in params.items())
        )

    def specs(
        self,
        url: Callable[[str], str] | None = None,
        offsets: dict[str, float] | None = None,
    ) -> list[Spec]:
        specs = []
        for node, started_at in NODES.items():
            for index in range(3):
                name = f"{node}{index}"
                section = {
                    "endpoint": self.server.url,
                    "geoip_url": "",
                    "state_url": (url or self.url)(name),
                    "interval": INTERVAL,
                }
                specs.append(
                    Spec(
                        name,
                        self.tmp_path / f"node-{node}",
                        started_at,
                        {"modules": {"phonehome": section}},
                        (offsets or {}).get(name, 0.0),
                    )
                )
        return specs


def host_db() -> SimState:
    """What the host's database holds before the case: every process syncs it."""
    db = SimState()
    for n, kind in enumerate(("mqtt", "opcua", "s7")):
        db.modules["connections"][f"base-c{n}"] = {"id": f"base-c{n}", "type": kind}
    db.modules["pipelines"]["base-p0"] = {
        "id": "base-p0",
        "enabled": True,
        "node_types": ["trigger.manual"],
    }
    return db


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    pytest.importorskip("psycopg")
    running = PgCluster(max_connections=30)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def setup(cluster: PgCluster, tmp_path: Path) -> Iterator[Setup]:
    database = cluster.new_database()
    # The plugin's tables first (as any process would make them), then the gates.
    open_store(None, cluster.url(database)).close()
    with cluster.admin(database) as conn:
        conn.execute(GATE_SQL)
    gates = Gates(cluster, database)
    with FaultServer(then=Reply(202)) as server:
        try:
            yield Setup(cluster, database, server, tmp_path, gates)
        finally:
            gates.close()


# The scenario ------------------------------------------------------------------------


def own_changes(installation: Installation) -> None:
    """Each of four processes makes a change only it sees (its own signal)."""
    installation.call(installation.member("a0"), "save_connection", "modbus", "a0-c")
    installation.call(installation.member("b1"), "save_connection", "mqtt", "b1-c")
    installation.call(installation.member("a2"), "save_pipeline", ["trigger.schedule"])
    installation.call(installation.member("b2"), "save_organization", "b2-org")


def due_after(server: FaultServer, now: float) -> float:
    """The first moment after ``now`` at which a periodic slot falls due."""
    [instance_id] = {r["instance_id"] for r in server.reports.values()}
    # From the slot before now's: the current slot's report waits for its jitter.
    slot = schedule.slot_of(now, INTERVAL, schedule.offset(instance_id, INTERVAL)) - 1
    while schedule.periodic_due_at(slot, instance_id, INTERVAL) <= now:
        slot += 1
    # A millisecond on: a host clock has microseconds, the schedule's floats more.
    return schedule.periodic_due_at(slot, instance_id, INTERVAL) + 0.001


def user_record(installation: Installation, member: Member, email: str) -> dict[str, Any]:
    """The host's record of the user ``member`` created as the first thing it created
    (it died before telling): the id its host gave it, its clock's time."""
    created = datetime.fromtimestamp(installation.now + member.spec.clock_offset, UTC)
    user_id = f"{ID_PREFIX['users']}-{member.spec.ids_from + 1:06d}"
    return {"id": user_id, "email": email, "created_at": created}


@dataclass
class Fault:
    """What a case does at its two moments; the defaults are a quiet installation."""

    def first_user(self, setup: Setup, installation: Installation) -> None:
        installation.call(installation.member("b0"), "create_user", "first@example.com")

    def periodic(self, setup: Setup, installation: Installation, due: float) -> None:
        installation.tick(due - installation.now)


@dataclass
class AtStep(Fault):
    """One process held at one statement of a report, then ``action`` (``kill``,
    ``terminate``, ``restart``, ``freeze``), then let go."""

    action: str
    step: tuple[str, str]
    during: str = "periodic"  # or "first_user"
    victim: str = "a1"

    def first_user(self, setup: Setup, installation: Installation) -> None:
        if self.during != "first_user":
            super().first_user(setup, installation)
            return
        victim = installation.member(self.victim)
        setup.gates.hold(self.victim, *self.step)
        victim.send("call", ("create_user", ("first@example.com",)))
        self._strike(setup, installation, victim, user=True)

    def periodic(self, setup: Setup, installation: Installation, due: float) -> None:
        if self.during != "periodic":
            super().periodic(setup, installation, due)
            return
        victim = installation.member(self.victim)
        # A change of the victim's own, which its report folds in as it builds.
        installation.call(victim, "save_data_model", "a1-model")
        setup.gates.hold(self.victim, *self.step)
        # The victim alone reaches the due moment: it claims and builds the slot.
        installation.now = due
        victim.send("at", due)
        self._strike(setup, installation, victim, user=False)
        installation.tick()  # everyone else catches up

    def _strike(
        self, setup: Setup, installation: Installation, victim: Member, user: bool
    ) -> None:
        gates = setup.gates
        backend = gates.waiting(self.victim)
        if self.action == "kill":
            victim.kill()
            gates.open()
            if user:
                record = user_record(installation, victim, "first@example.com")
                installation.db.modules["users"][record["id"]] = record
            installation.replace(victim)
            return
        if self.action == "terminate":
            gates.conn.execute("DELETE FROM fault_gate")
            gates.terminate(backend)
            gates.open()
        elif self.action == "restart":
            setup.cluster.restart_immediate()  # the gate's own session dies with it
            gates.reconnect()
        elif self.action == "freeze":
            gates.conn.execute("DELETE FROM fault_gate")
            victim.freeze()
            gates.open()  # its statement ends; its transaction is left open, frozen
            # The others go on while it is frozen: a tick each, through its lock.
            installation.tick(only=lambda m: m is not victim)
            victim.thaw()
        answer = victim.reply()
        if user:
            installation.merge(answer)
        else:
            assert answer, "the victim's plugin did not settle"


def run(setup: Setup, installation: Installation, fault: Fault) -> None:
    try:
        installation.tick()  # every host start's first tick: the startup reports
        own_changes(installation)
        installation.executions(10)
        installation.tick(STEP)
        fault.first_user(setup, installation)
        fault.periodic(setup, installation, due_after(setup.server, installation.now))
        installation.executions(5)
        for _ in range(3 * INTERVAL // STEP):
            installation.tick(STEP)
    finally:
        installation.stop()


# The promises ----------------------------------------------------------------------


def verify(setup: Setup, installation: Installation, name: str) -> dict[str, Any]:
    """Check every promise of the installation; the row of the table for this case."""
    server = setup.server
    reports = sorted(server.reports.values(), key=lambda r: r["sequence"])
    with setup.cluster.admin(setup.database) as conn:
        claims = conn.execute("SELECT key, done, report_id FROM claims").fetchall()
    done = {key: report_id for key, is_done, report_id in claims if is_done}
    triggers = Counter(r["trigger"] for r in reports)
    instances = {r["instance_id"] for r in reports}
    [instance_id] = instances
    offset = schedule.offset(instance_id, INTERVAL)
    # Expected: each node's start, the first user, and a report for every slot from
    # the one after the first startup's to the last due by the clock furthest ahead:
    # a periodic one, unless a startup made in that slot covered it first (a startup
    # made later, by a node that started or joined late, does not undo a periodic).
    started = {
        schedule.slot_of(_epoch(r["generated_at"]), INTERVAL, offset)
        for r in reports
        if r["trigger"] == "startup"
    }
    ahead = installation.now + max(m.spec.clock_offset for m in installation.members)
    last_due = min(started)
    while schedule.periodic_due_at(last_due, instance_id, INTERVAL) <= ahead:
        last_due += 1
    due = set(range(min(started) + 1, last_due + 1))
    slots = {int(key.split(":")[1]) for key in done if key.startswith("periodic:")}
    assert slots <= due, (sorted(slots), sorted(due))
    assert due - slots <= started, ("a due slot has no report", sorted(due - slots))
    expected = len(NODES) + 1 + len(due - (started - slots))
    assert triggers == {
        "startup": len(NODES),
        "first_user": 1,
        "periodic": len(slots),
    }, triggers
    # One report id per trigger, accepted once: the claims' ids are what arrived.
    assert sorted(done.values()) == sorted(r["report_id"] for r in reports)
    assert all(n == 1 for n in server.accepted.values()), server.accepted
    assert [r["sequence"] for r in reports] == list(range(1, len(reports) + 1))
    # The installation's totals: every execution, every change of every process.
    last = reports[-1]
    emitted = installation.emitted()
    by_status = {s: n for s, n in last["executions"]["by_status"].items() if n}
    assert by_status == dict(emitted), (by_status, dict(emitted))
    db = installation.db.modules
    assert last["connections"]["total"] == len(db["connections"])
    assert last["pipelines"]["total"] == len(db["pipelines"])
    assert last["users"]["total"] == len(db["users"]) == 1
    assert last["users"]["first_email"] == "first@example.com"
    [first] = [r for r in reports if r["trigger"] == "first_user"]
    assert first["users"]["first_email"] == "first@example.com"
    return {
        "case": name,
        "expected": expected,
        "received": len(reports),
        "ids per trigger": 1,
        "redelivered": sum(server.duplicates.values()),
        "instance ids": len(instances),
        "executions": f"{sum(by_status.values())}/{sum(emitted.values())}",
    }


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    if ROWS:
        columns = list(ROWS[0])
        print("\n| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in ROWS:
            print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def _case(setup: Setup, installation: Installation, fault: Fault, name: str) -> None:
    run(setup, installation, fault)
    ROWS.append(verify(setup, installation, name))


# The cases -------------------------------------------------------------------------


def test_quiet(setup: Setup) -> None:
    _case(setup, Installation(setup.specs(), host_db()), Fault(), "no fault")


@pytest.mark.parametrize("step", REPORT_STEPS, ids=lambda s: f"{s[1]}-{s[0]}")
@pytest.mark.parametrize("action", ["kill", "terminate"])
def test_a_fault_at_each_step_of_a_periodic_report(
    setup: Setup, action: str, step: tuple[str, str]
) -> None:
    specs = setup.specs(url=lambda app: setup.url(app, timeouts=app != "a1"))
    fault = AtStep(action, step)
    _case(setup, Installation(specs, host_db()), fault, f"{action} at {step[1]} {step[0]}")


@pytest.mark.parametrize("step", USER_STEPS, ids=lambda s: f"{s[1]}-{s[0]}")
@pytest.mark.parametrize("action", ["kill", "terminate"])
def test_a_fault_at_each_step_of_the_first_user_report(
    setup: Setup, action: str, step: tuple[str, str]
) -> None:
    specs = setup.specs(url=lambda app: setup.url(app, timeouts=app != "a1"))
    fault = AtStep(action, step, during="first_user")
    name = f"first user: {action} at {step[1]} {step[0]}"
    _case(setup, Installation(specs, host_db()), fault, name)


def test_an_immediate_restart_of_the_server_in_the_middle_of_a_report(setup: Setup) -> None:
    specs = setup.specs(url=lambda app: setup.url(app, timeouts=app != "a1"))
    fault = AtStep("restart", ("outbox", "INSERT"))
    _case(setup, Installation(specs, host_db()), fault, "restart -m immediate mid-report")


def test_a_process_frozen_inside_its_report_transaction(setup: Setup) -> None:
    specs = setup.specs(url=lambda app: setup.url(app, timeouts=app != "a1"))
    fault = AtStep("freeze", ("outbox", "INSERT"))
    _case(setup, Installation(specs, host_db()), fault, "SIGSTOP inside the report's transaction")


def test_host_clocks_five_minutes_apart(setup: Setup) -> None:
    offsets = {"a0": 300.0, "a1": -300.0, "b0": -300.0, "b2": 300.0}
    installation = Installation(setup.specs(offsets=offsets), host_db())
    _case(setup, installation, Fault(), "clocks +-5 min")


def test_the_database_down_as_every_process_starts(setup: Setup) -> None:
    setup.gates.close()
    setup.cluster.stop()
    try:
        installation = Installation(setup.specs(), host_db())
        installation.tick()  # nothing can be reached: no process reports on its own
        assert setup.server.reports == {}
    finally:
        setup.cluster.start()
    setup.gates.reconnect()
    # The first try again is 10 s of host clock later; the scenario's ticks pass it.
    _case(setup, installation, Fault(), "database down at start")


def test_max_connections_reached(setup: Setup) -> None:
    hogs: list[Any] = []
    with contextlib.suppress(Exception):
        while len(hogs) < 100:
            hogs.append(setup.cluster.admin())
    # Room for three of the six processes; the others wait their turn, in memory.
    for _ in range(3):
        hogs.pop().close()
    installation = Installation(setup.specs(), host_db())
    try:
        installation.tick()
    finally:
        for hog in hogs:
            hog.close()
    _case(setup, installation, Fault(), "max_connections reached")


def test_behind_pgbouncer_in_transaction_mode(setup: Setup) -> None:
    with pgbouncer(setup.cluster.url(setup.database)) as pooled:
        specs = setup.specs(url=lambda app: setup.url(app, via=pooled))
        _case(setup, Installation(specs, host_db()), Fault(), "PgBouncer, transaction mode")
