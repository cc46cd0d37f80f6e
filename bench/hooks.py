"""The host's hooks on the host's thread: ``on_tick``, ``on_user_created``, ``on_startup``,
``on_shutdown``, against a bare pluggy hook call with one empty implementation."""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pluggy

import hookspecs.host
from bench import clocks, measure
from bench.host import TYPICAL, Host, host_with, make_inventory, phonehome_config
from bench.results import Row
from bench.servers import BlackHole, HTTPEndpoint
from hookspecs import hookimpl

SECTION_HOOKS = "Host hooks on the host's thread"
SHUTDOWN_LIMIT = 0.020
TICK = "hook.on_tick(app=app, now=now)"


class _Empty:
    """One empty implementation of each host hook."""

    @hookimpl
    def on_tick(self, app: Any, now: datetime) -> None:
        pass

    @hookimpl
    def on_startup(self, app: Any) -> None:
        pass


def _bare_pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("maestrohub")
    pm.add_hookspecs(hookspecs.host)
    pm.register(_Empty())
    return pm


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def tick_rows(
    ok: HTTPEndpoint, quick: bool
) -> tuple[list[Row], list[measure.Peak], dict[str, Any]]:
    """``on_tick`` with nothing due and with a report due, and ``on_user_created``."""
    host = host_with(ok.url, interval=60)
    inventory = make_inventory(TYPICAL, host.started_at)
    inventory.modules["users"] = []  # the users come through on_user_created below
    host.boot(inventory)
    worker = host.runtime.worker
    assert host.now < worker.wake_at, "the first tick left a report due"
    bare = _bare_pm()
    samples = measure.interleave(
        {
            "plugin": measure.loop(TICK, hook=host.pm.hook, app=host.app, now=host.now),
            "bare": measure.loop(TICK, hook=bare.hook, app=host.app, now=host.now),
        },
        rounds=60 if quick else 600,
        number=500,
    )
    passes = 3 if quick else 5
    idle_peak = measure.peak_each(
        "on_tick, nothing due",
        TICK,
        passes=passes,
        count=5_000 if quick else 20_000,
        hook=host.pm.hook,
        app=host.app,
        now=host.now,
    )

    # A report due at every call: tick at the moment the next periodic slot's report falls due.
    per_pass = 10 if quick else 40
    received_before = ok.requests

    def due_tick() -> None:
        host.tick()

    def advance() -> None:
        host.idle()
        host.now = _at(worker.reporter.next_periodic(host.now) + 0.001)

    advance()
    due_times = [
        measure.timed_calls(due_tick, count=per_pass, between=advance) for _ in range(passes)
    ]
    built = ok.requests - received_before

    # Users created one after another on the host's clock; the first one's report is due at once.
    created = iter(range(1_000_000))

    def create_user() -> None:
        i = next(created)
        host.pm.hook.on_user_created(
            app=host.app,
            user={
                "id": f"new{i}",
                "email": f"new{i}@example.com",
                "created_at": host.now + timedelta(seconds=i),
                "password_hash": "x",
            },
        )

    user_times = [
        measure.timed_calls(create_user, count=per_pass, between=host.idle) for _ in range(passes)
    ]
    users = host.runtime.worker.reporter.build("periodic", host.now)["users"]["total"]
    host.close()

    due_all = [t for times in due_times for t in times]
    user_all = [t for times in user_times for t in times]
    peaks = [
        idle_peak,
        measure.Peak("on_tick, report due", [max(t) for t in due_times], len(due_all)),
        measure.Peak("on_user_created", [max(t) for t in user_times], len(user_all)),
    ]
    bare_median = samples["bare"].median
    rows = [
        Row(
            "on_tick.idle",
            SECTION_HOOKS,
            "on_tick, nothing due",
            samples["plugin"].median,
            baseline="bare pluggy hook, one empty impl",
            baseline_value=bare_median,
            ratio=measure.paired_ratio(samples["plugin"], samples["bare"]),
            limit=2.0,
            budget_on="ratio",
            budget="<= 2.00x",
        ),
        Row(
            "on_tick.due",
            SECTION_HOOKS,
            "on_tick, report due (host thread only)",
            statistics.median(due_all),
            baseline="bare pluggy hook, one empty impl",
            baseline_value=bare_median,
            ratio=statistics.median(due_all) / bare_median,
            note=f"{len(due_all)} ticks, each at the moment a periodic report fell due; the "
            f"endpoint received {built} reports meanwhile (only the hook call is timed).",
        ),
        Row(
            "on_user_created",
            SECTION_HOOKS,
            "on_user_created",
            statistics.median(user_all),
            baseline="bare pluggy hook, one empty impl",
            baseline_value=bare_median,
            ratio=statistics.median(user_all) / bare_median,
            note=f"{len(user_all)} users created, the first one due for the first-user report; "
            f"the next report counts {users} users.",
        ),
    ]
    details = {
        "on_tick_idle": {k: v.quantiles() for k, v in samples.items()},
        "on_tick_due_seconds": sorted(due_all),
        "on_user_created_seconds": sorted(user_all),
        "reports_built_during_due_ticks": built,
    }
    return rows, peaks, details


def startup_rows(ok_url: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """``on_startup`` (historic call) on a fresh host each time, on and off."""
    reps = 5 if quick else 30
    on: list[float] = []
    off: list[float] = []
    bare: list[float] = []
    inventory = make_inventory(TYPICAL, datetime.now(UTC))
    for _ in range(reps):
        pm = _bare_pm()
        t0 = time.thread_time()
        pm.hook.on_startup.call_historic(kwargs={"app": None})
        bare.append(time.thread_time() - t0)
        for enabled, times in ((True, on), (False, off)):
            host = Host(phonehome_config(ok_url, enabled=enabled))
            t0 = time.thread_time()
            host.start()
            times.append(time.thread_time() - t0)
            host.sync(inventory)
            host.idle()
            host.close()
    bare_median = statistics.median(bare)
    rows = [
        Row(
            "on_startup.on",
            SECTION_HOOKS,
            "on_startup, telemetry on (warm, in-process), thread CPU",
            statistics.median(on),
            baseline="bare historic call, one empty impl",
            baseline_value=bare_median,
            ratio=statistics.median(on) / bare_median,
            note=f"Fresh host each time, {reps} times; in-process, so imports are warm (the "
            "first start in a fresh process is the `startup.on` row).",
        ),
        Row(
            "on_startup.off",
            SECTION_HOOKS,
            "on_startup, telemetry off (warm, in-process), thread CPU",
            statistics.median(off),
            baseline="bare historic call, one empty impl",
            baseline_value=bare_median,
            ratio=statistics.median(off) / bare_median,
        ),
    ]
    return rows, {"on": sorted(on), "off": sorted(off), "bare": sorted(bare)}


def shutdown_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """``on_shutdown`` while the worker's POST hangs on an endpoint that never answers."""
    reps = 3 if quick else 7
    spans: list[clocks.Span] = []
    hanging: list[int] = []
    left: list[str] = []
    with BlackHole() as hole:
        inventory = make_inventory(TYPICAL, datetime.now(UTC))
        for rep in range(reps):
            host = host_with(hole.url)
            host.start()
            host.sync(inventory)
            host.tick()  # the startup report: the worker POSTs it into the black hole
            hanging.append(int(hole.wait_accepted(rep + 1, timeout=10.0)))
            with clocks.span() as one:
                host.shutdown()
            spans.append(one)
            left += [
                t.name
                for t in threading.enumerate()
                if t.name == "phonehome-worker" or not (t.daemon or t is threading.main_thread())
            ]
            host.close()
    waited = [s.unpreempted / 1e9 for s in spans]
    walls = [s.wall / 1e9 for s in spans]
    worst = max(walls)
    value = statistics.median(waited)
    rows = [
        Row(
            "on_shutdown",
            SECTION_HOOKS,
            "on_shutdown, endpoint black-holed: wall less run-queue wait",
            value,
            limit=SHUTDOWN_LIMIT,
            budget="<= 20 ms; <= 2 s and nothing left running (contract)",
            ok=value <= SHUTDOWN_LIMIT and worst <= 2.0 and not left,
            note=f"{reps} shutdowns, each with the startup report's POST hanging on a loopback "
            f"socket that accepts and never replies ({sum(hanging)}/{reps} confirmed in "
            f"flight). The hook's thread CPU plus the time it waited (for the worker to see "
            f"the cancel and end), median; largest {max(waited) * 1e3:.1f} ms. Wall "
            f"(machine-dependent): median {statistics.median(walls) * 1e3:.1f} ms, slowest "
            f"{worst * 1e3:.1f} ms. Threads left that could keep the process alive or still "
            f"working: {', '.join(left) or 'none'}.",
        ),
    ]
    found = {"unpreempted_seconds": sorted(waited), "wall_seconds": sorted(walls), "left": left}
    return rows, found
