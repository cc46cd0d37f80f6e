"""One installation of many processes on PostgreSQL: what a tick and a report cost the
state, and how long a healthy process waits while another is frozen.

:data:`PROCESSES` real processes (forked, each a simulated host start with the real
plugin, :data:`QUICK_PROCESSES` in a quick run) share one PostgreSQL database (a
database of its own on the server at ``PHONEHOME_TEST_PG``, dropped afterwards).
The benchmark drives them on the host clock, in waves of :data:`WAVE` (the server's
connection slots are shared with everything else on it; a real host's processes do
not tick in step), and each process counts, for each handled tick, its store
transactions (one :meth:`Store.run` each) and the CPU time the tick cost the
process (every thread of it: the host's and the plugin's worker).

- **An idle handled tick** (a fold interval later, nothing due): transactions and
  CPU per process, median and largest.
- **A periodic report**: the one process that claims the due slot, builds, stores
  and sends it; transactions and CPU of that tick.
- **A frozen process**: a session that took the installation's advisory lock inside
  a transaction and then went silent, with the settings the plugin gives its own
  sessions (as a process frozen by SIGSTOP mid-transaction leaves it); the longest
  wall time any other process's handled tick takes meanwhile. Bounded by the
  plugin's timeouts (state/postgres.py: 5 s), however long the freeze. Wall time,
  so machine-dependent; its budget is that bound with room for the machine.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.convoy import _database
from bench.results import Row

SECTION = "One installation of many processes on PostgreSQL"
PROCESSES = 200
QUICK_PROCESSES = 12
WAVE = 25
"""Processes ticked at once (each holds one connection while its job runs)."""
IDLE_LIMIT = 1
REPORT_LIMIT = 5
FROZEN_LIMIT = 10.0
"""Seconds: the 5 s of the plugin's lock and idle-in-transaction timeouts, with room."""
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
FORK = multiprocessing.get_context("fork")
WAIT = 300.0


def _serve(url: str, endpoint: str, data_dir: Path, commands: Connection) -> None:
    """One process: a host start on the installation's state, ticked when told."""
    from phonehome_plugin.plugin import RUNTIME_NAME
    from phonehome_plugin.testing.simclock import SimClock
    from phonehome_plugin.testing.simhost import SimHost

    section = {"endpoint": endpoint, "geoip_url": "", "state_url": url, "interval": 3600}
    host = SimHost({"modules": {"phonehome": section}}, data_dir, clock=SimClock(START))
    host.start()
    runtime: Any = host.app.plugin_manager.get_plugin(RUNTIME_NAME)
    counted = [0]
    while True:
        command, argument = commands.recv()
        if command == "stop":
            host.shutdown()
            commands.send(None)
            return
        store = runtime.worker.store
        if store is not None and not getattr(store, "_bench_counted", False):
            run = store.run

            def counting(work: Any, run: Any = run) -> Any:
                counted[0] += 1
                return run(work)

            store.run = counting
            store._bench_counted = True
        counted[0] = 0
        began_cpu, began = time.process_time(), time.perf_counter()
        host.tick_at(datetime.fromtimestamp(argument, UTC))
        runtime.worker.wait_idle(WAIT)
        cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
        commands.send((counted[0], cpu, wall))


class _Installation:
    def __init__(self, url: str, endpoint: str, count: int, home: Path) -> None:
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for n in range(count):
            ours, theirs = FORK.Pipe()
            process = FORK.Process(target=_serve, args=(url, endpoint, home / f"p{n}", theirs))
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def tick(self, at: float) -> list[tuple[int, float, float]]:
        """Tick every process at host time ``at``, a wave at a time."""
        found: list[tuple[int, float, float]] = []
        for first in range(0, len(self.pipes), WAVE):
            wave = self.pipes[first : first + WAVE]
            for pipe in wave:
                pipe.send(("at", at))
            for pipe in wave:
                if not pipe.poll(WAIT):
                    raise RuntimeError("a process of the installation hung")
                found.append(pipe.recv())
        return found

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(("stop", None))
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            if pipe.poll(60):
                pipe.recv()
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()


def _frozen(url: str) -> Any:
    """A session holding the installation's lock inside an open transaction, gone silent."""
    import psycopg

    from phonehome_plugin.state.postgres import LOCK_KEY, session_settings

    extra, begin = session_settings(url)
    conn = psycopg.connect(url, autocommit=True, **extra)
    conn.execute(begin)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    return conn


def installation_rows(endpoint: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    count = QUICK_PROCESSES if quick else PROCESSES
    with _database() as url:
        if url is None:
            return [
                Row(
                    "installation.idle_tick",
                    SECTION,
                    "transactions per idle handled tick",
                    None,
                    unit="n",
                    note="Skipped: psycopg is not installed or no PostgreSQL server answers.",
                )
            ], {}
        with TemporaryDirectory(prefix="phonehome-bench-installation-") as home:
            installation = _Installation(url, endpoint, count, Path(home))
            try:
                now = START.timestamp()
                installation.tick(now)  # the startup report (one process makes it)
                installation.tick(now + 61)  # the others see the startup settled
                now += 61
                idle: list[tuple[int, float, float]] = []
                for _ in range(2):
                    now += 61
                    idle += installation.tick(now)
                now += 2 * 3600  # a slot is due by then: one process reports it
                report_ticks = installation.tick(now)
                now += 61
                frozen = _frozen(url)
                try:
                    began = time.perf_counter()
                    during = installation.tick(now)
                    freeze_span = time.perf_counter() - began
                finally:
                    frozen.close()
            finally:
                installation.close()
    reporting = max(report_ticks, key=lambda t: t[0])
    transactions = [t[0] for t in idle]
    cpus = [t[1] for t in idle]
    longest = max(t[2] for t in during)
    rows = [
        Row(
            "installation.idle_tick",
            SECTION,
            f"{count} processes: state transactions per idle handled tick (largest)",
            float(max(transactions)),
            unit="n",
            limit=IDLE_LIMIT,
            budget=f"<= {IDLE_LIMIT}",
            note=f"Median {statistics.median(transactions):.0f} over {len(idle)} handled "
            f"ticks; CPU per tick, the whole process: median "
            f"{statistics.median(cpus) * 1e3:.2f} ms, largest {max(cpus) * 1e3:.2f} ms "
            "(machine-dependent).",
        ),
        Row(
            "installation.report",
            SECTION,
            f"{count} processes: state transactions of the tick that makes a periodic "
            "report, its sending included",
            float(reporting[0]),
            unit="n",
            limit=REPORT_LIMIT,
            budget=f"<= {REPORT_LIMIT}",
            note=f"CPU of that tick, the whole process: {reporting[1] * 1e3:.1f} ms; the "
            f"other processes' ticks of that moment: "
            f"{statistics.median(t[0] for t in report_ticks if t is not reporting):.0f} "
            "transaction(s) each (median).",
        ),
        Row(
            "installation.frozen",
            SECTION,
            f"{count} processes: the longest handled tick of a healthy process while "
            "another holds the installation's lock, frozen (wall clock)",
            longest,
            limit=FROZEN_LIMIT,
            budget=f"<= {FROZEN_LIMIT:.0f} s",
            note=f"The plugin's lock and idle-in-transaction timeouts are 5 s; the whole "
            f"round of {count} processes ({WAVE} at a time) took {freeze_span:.1f} s.",
        ),
    ]
    return rows, {"idle": idle, "report": report_ticks, "frozen": during}
