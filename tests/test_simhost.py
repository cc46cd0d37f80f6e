"""The simulated host follows section 1 of the host contract, in order, on a clock
that only the caller moves. Recorded through a real pluggy plugin and real blinker
receivers on every signal of ``hookspecs.signals``."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from e2e_support import START
from simhost_support import OFF, Recorder

import hookspecs
from hookspecs import hookimpl, signals
from phonehome_plugin import plugin
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import MODULES, SimHost
from phonehome_plugin.testing.vocabulary import SECRET_MARKER

SECRET_KEYS = {"workflow", "credentials", "actor"}


def _populate(host: SimHost) -> dict[str, Any]:
    """One of everything, before the start; returns what the host should sync."""
    admin = host.create_user("admin@example.com")
    editor = host.create_user("editor@example.com")
    host.delete_user(editor["id"])
    c1 = host.save_connection("mqtt")
    c2 = host.save_connection("opcua")
    host.save_connection("s7", c2)  # an update of c2, not a new connection
    p1 = host.save_pipeline(["trigger.manual", "action.http"], enabled=False)
    o1 = host.save_organization()
    d1 = host.save_data_model()
    d2 = host.save_data_model()
    host.delete_data_model(d2)
    host.set_uns(topic_count=120, client_count=4, storage_mode="timescale")
    host.set_license("active", "LIC-TEST-0001")
    return {"admin": admin, "c1": c1, "c2": c2, "p1": p1, "o1": o1, "d1": d1}


# Section 1, in order ---------------------------------------------------------------------


def test_start_calls_on_startup_then_syncs_every_module_then_uns_and_license(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    _populate(host)
    assert recorder.events == [], "changes before start() change the state only"

    app = host.start()
    host.tick()
    host.create_user("second@example.com")
    host.tick(10)
    host.shutdown()

    assert recorder.names() == [
        "on_startup",
        *(f"inventory-synced:{module}" for module in MODULES),
        "uns-state-changed",
        "license-changed",
        "on_tick",
        "on_user_created",
        "on_tick",
        "on_shutdown",
    ]
    assert MODULES == ("users", "connections", "pipelines", "organizations", "data_models")
    for event in recorder.events:
        if event.kind == "hook":
            assert event.kwargs["app"] is app
        else:
            assert event.sender is app, "the sender is always app"


def test_inventory_synced_carries_each_modules_full_current_state(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    made = _populate(host)
    host.start()

    synced = recorder.synced()
    assert set(synced) == set(MODULES)
    [user] = synced["users"]
    assert {k: user[k] for k in ("id", "email", "created_at")} == {
        k: made["admin"][k] for k in ("id", "email", "created_at")
    }
    assert {c["id"]: c["type"] for c in synced["connections"]} == {
        made["c1"]: "mqtt",
        made["c2"]: "s7",
    }
    assert [(p["id"], p["enabled"], p["node_types"]) for p in synced["pipelines"]] == [
        (made["p1"], False, ["trigger.manual", "action.http"])
    ]
    assert [o["id"] for o in synced["organizations"]] == [made["o1"]]
    assert [d["id"] for d in synced["data_models"]] == [made["d1"]]
    for module in MODULES:
        items = synced[module]
        assert items == list(host.state.modules[module].values())
        assert all(SECRET_MARKER in repr(item) for item in items), "whole records, secrets too"


def test_uns_and_license_are_sent_at_startup_with_absolute_values(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.set_uns(topic_count=120, client_count=4)
    host.set_uns(storage_mode="timescale")
    host.set_license("expired", "LIC-TEST-0001")
    host.start()

    [uns] = recorder.of("uns-state-changed")
    [lic] = recorder.of("license-changed")
    assert {k: uns.kwargs[k] for k in ("topic_count", "client_count", "mqtt_mode")} == {
        "topic_count": 120,
        "client_count": 4,
        "mqtt_mode": "embedded",
    }
    assert uns.kwargs["storage_mode"] == "timescale"
    assert (lic.kwargs["license_id"], lic.kwargs["status"]) == ("LIC-TEST-0001", "expired")


def test_entry_points_and_host_specs_come_before_extra_plugins_and_on_startup(
    hosts: Callable[..., SimHost], acme_distribution: Path
) -> None:
    seen: dict[str, Any] = {}

    class Probe:
        @hookimpl
        def on_startup(self, app: Any) -> None:
            pm = app.plugin_manager
            seen["project"] = pm.project_name
            seen["specs"] = {
                name: getattr(pm.hook, name).spec is not None
                for name in ("on_startup", "on_tick", "on_user_created", "on_shutdown")
            }
            seen["order"] = [name for name, _ in pm.list_name_plugin()]
            seen["me"] = pm.get_name(self)

    host = hosts(Probe(), load_entrypoints=True)
    host.start()

    assert seen["project"] == "maestrohub"
    assert all(seen["specs"].values())
    order = seen["order"]
    assert {"phonehome", "acme_counter"} <= set(order), "the maestrohub group was loaded"
    assert order.index("phonehome") < order.index(seen["me"]) > order.index("acme_counter")
    assert host.app.plugin_manager.get_plugin("phonehome") is plugin


def test_on_startup_is_historic_for_plugins_registered_after_start(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts()
    app = host.start()
    late = Recorder()
    app.plugin_manager.register(late)
    host.tick(5)

    assert [e.name for e in late.events] == ["on_startup", "on_tick"]
    assert late.events[0].kwargs["app"] is app


def test_the_app_is_the_contracts_app(hosts: Callable[..., SimHost], tmp_path: Path) -> None:
    host = hosts(version="2.4.1", edition="core", config_path=tmp_path / "config.yaml")
    with pytest.raises(RuntimeError):
        _ = host.app
    app = host.start()

    assert isinstance(app, hookspecs.App)
    assert (app.version, app.edition, app.config) == ("2.4.1", "core", OFF)
    assert app.config_path == tmp_path / "config.yaml"
    assert app.data_dir == tmp_path / "data"
    assert app.started_at == START and app.started_at.utcoffset() == timedelta(0)
    assert app.plugin_manager.project_name == "maestrohub"
    with pytest.raises(RuntimeError, match="starts once"):
        host.start()


# Ticks, users, shutdown -------------------------------------------------------------------


def test_no_tick_before_start_and_the_first_follows_every_sync(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    with pytest.raises(RuntimeError, match="not running"):
        host.tick()
    assert recorder.events == []
    host.start()
    names = recorder.names()
    host.tick()
    assert recorder.names() == [*names, "on_tick"]
    assert all(name != "on_tick" for name in names)


def test_on_tick_gets_the_host_clock_aware_utc(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.start()
    assert host.tick() == START
    assert host.tick(90) == START + timedelta(seconds=90)
    assert host.run_for(1000, step=600) == 2
    nows = [e.kwargs["now"] for e in recorder.of("on_tick")]
    assert nows == [
        START,
        START + timedelta(seconds=90),
        START + timedelta(seconds=690),
        START + timedelta(seconds=1090),
    ], "run_for ticks every step, the last one short"
    assert all(now.tzinfo is not None and now.utcoffset() == timedelta(0) for now in nows)


def test_on_user_created_gets_id_email_and_aware_utc_created_at(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.start()
    host.tick(30)
    returned = host.create_user("ops@example.com")
    fallback = host.create_user()

    first, second = (e.kwargs["user"] for e in recorder.of("on_user_created"))
    assert first["email"] == "ops@example.com" == returned["email"]
    assert first["id"] == returned["id"] != second["id"]
    assert second["email"] == f"{second['id']}@example.com" == fallback["email"]
    for user in (first, second):
        assert user["created_at"] == START + timedelta(seconds=30)
        assert user["created_at"].utcoffset() == timedelta(0)
        assert SECRET_MARKER in user["password_hash"], "the whole record, as a real host passes"
    assert (first["role"], second["role"]) == ("admin", "editor")
    assert list(host.state.modules["users"]) == [first["id"], second["id"]]


def test_on_shutdown_is_called_once_and_ends_the_signals(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.shutdown()  # before start: nothing
    assert recorder.events == []
    host.start()
    host.shutdown()
    host.shutdown()
    assert recorder.names().count("on_shutdown") == 1
    assert not host.running

    before = len(recorder.events)
    connection = host.save_connection("mqtt")  # after shutdown: the state only
    host.create_user("late@example.com")
    assert len(recorder.events) == before
    assert connection in host.state.modules["connections"]
    with pytest.raises(RuntimeError):
        host.tick()
    with pytest.raises(RuntimeError):
        host.run_executions(1)


# The clock -----------------------------------------------------------------------------


def test_the_clock_never_moves_on_its_own(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    clock = SimClock(START)
    host = hosts(recorder, clock=clock)
    host.save_pipeline(["trigger.manual"])
    host.start()
    host.tick()
    host.create_user()
    host.run_executions(500, threads=4)
    host.tick(0)
    assert clock.now() == START
    assert clock.advance(2.5) == START + timedelta(seconds=2.5) == clock.now()


def test_a_naive_started_at_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        SimHost(OFF, Path("unused"), clock=SimClock(START), started_at=datetime(2026, 3, 2))


# Executions --------------------------------------------------------------------------------


def test_run_executions_from_threads_sends_exactly_what_it_reports(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts()
    pipelines = [host.save_pipeline(["trigger.manual"]) for _ in range(3)]
    host.start()
    statuses = ("completed", "failed", "completed_with_errors", "cancelled")

    sent = host.run_executions(20_000, statuses, threads=8)

    events = recorder.of("execution-finished")
    assert sent == Counter(dict.fromkeys(statuses, 5000))
    assert Counter(e.kwargs["status"] for e in events) == sent
    assert Counter(e.kwargs["pipeline_id"] for e in events) == {
        pipelines[0]: 6667,
        pipelines[1]: 6667,
        pipelines[2]: 6666,
    }, "the saved pipelines take turns"
    threads = {e.thread for e in events}
    assert len(threads) == 8 and threading.get_ident() not in threads
    assert host.emitted_executions == sent
    assert host.signals_sent["execution-finished"] == 20_000
    assert all(isinstance(e.kwargs["duration_ms"], int) for e in events)


@pytest.mark.parametrize(
    ("n", "weights", "expected"),
    [
        (
            1000,
            {"completed": 0.9, "failed": 0.05, "completed_with_errors": 0.03, "cancelled": 0.02},
            {"completed": 900, "failed": 50, "completed_with_errors": 30, "cancelled": 20},
        ),
        (7, {"completed": 1, "failed": 1}, {"completed": 4, "failed": 3}),
        (10, {"completed": 2, "failed": 1, "cancelled": 0}, {"completed": 7, "failed": 3}),
        (0, {"completed": 1}, {}),
    ],
)
def test_weights_are_apportioned_exactly(
    hosts: Callable[..., SimHost],
    recorder: Recorder,
    n: int,
    weights: dict[str, float],
    expected: dict[str, int],
) -> None:
    host = hosts()
    host.start()
    sent = host.run_executions(n, weights, threads=3)
    assert sent == expected
    assert Counter(e.kwargs["status"] for e in recorder.of("execution-finished")) == expected


def test_weighted_statuses_are_spread_over_the_run(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts()
    host.start()
    host.run_executions(100, {"completed": 9, "failed": 1})
    order = "".join(e.kwargs["status"][0] for e in recorder.of("execution-finished"))
    assert order.count("f") == 10 and "ff" not in order
    assert "f" in order[:20] and "f" in order[-20:]


def test_a_receiver_error_on_a_worker_thread_reaches_the_caller(
    hosts: Callable[..., SimHost],
) -> None:
    def broken(sender: object, **kwargs: Any) -> None:
        raise LookupError("receiver bug")

    host = hosts()
    host.start()
    signals.execution_finished.connect(broken, sender=host.app, weak=False)
    try:
        with pytest.raises(LookupError, match="receiver bug"):
            host.run_executions(40, threads=4)
    finally:
        signals.execution_finished.disconnect(broken)
    with pytest.raises(ValueError, match="threads"):
        host.run_executions(1, threads=0)
    with pytest.raises(ValueError, match="statuses"):
        host.run_executions(1, {"completed": 0})


# Restart -----------------------------------------------------------------------------------


def test_restart_carries_the_state_into_a_new_start(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    first = hosts(recorder)
    made = _populate(first)
    first.start()
    first.tick()
    first.run_executions(10, ("completed", "failed"))
    first.run_for(7200, step=3600)

    second = first.restart()
    assert recorder.names().count("on_shutdown") == 1
    assert not second.running and second.clock is first.clock
    assert second.started_at == first.clock.now() == START + timedelta(hours=2)
    assert second.state == first.state and second.state is not first.state
    assert second.emitted_executions == {"completed": 5, "failed": 5}

    recorder.events.clear()
    second.start()
    synced = recorder.synced()
    for module in MODULES:
        assert synced[module] == list(first.state.modules[module].values())
    new = second.save_connection("rest")
    assert new not in first.state.modules["connections"], "a copy, not a shared state"
    assert new not in made.values(), "ids keep counting across restarts"
    assert second.app.started_at == second.started_at != first.app.started_at


def test_restart_without_time_passing_still_names_a_new_start(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    first = hosts(recorder)
    first.start()
    second = first.restart()
    third = second.restart()  # never started: still a start of its own
    starts = [first.started_at, second.started_at, third.started_at]
    assert starts == sorted(set(starts)), "each start has its own started_at"
    assert second.started_at - first.started_at >= timedelta(seconds=1)
    assert third.started_at == first.clock.now()


def test_a_crash_skips_on_shutdown(hosts: Callable[..., SimHost], recorder: Recorder) -> None:
    crashed = hosts(recorder)
    crashed.start()
    crashed.restart(shutdown=False).start()
    assert "on_shutdown" not in recorder.names()
    assert crashed.running, "a crashed process's host is still up until shut down"


# Signals ----------------------------------------------------------------------------------


def test_every_signal_carries_the_secret_extras(
    hosts: Callable[..., SimHost], recorder: Recorder
) -> None:
    host = hosts(recorder)
    host.create_user("admin@example.com")
    app = host.start()
    user = host.create_user()
    host.delete_user(user["id"])
    connection = host.save_connection("modbus")
    host.delete_connection(connection)
    pipeline = host.save_pipeline(["trigger.webhook", "system.uns.publish"])
    host.run_executions(3, ("completed", "failed"))
    host.delete_pipeline(pipeline)
    host.delete_organization(host.save_organization())
    host.delete_data_model(host.save_data_model())
    host.set_uns(topic_count=1)
    host.set_license("expired")

    signalled = [e for e in recorder.events if e.kind == "signal"]
    assert {e.name for e in signalled} == {signal.name for signal in signals.ALL}
    for event in signalled:
        assert event.sender is app
        assert set(event.kwargs) >= SECRET_KEYS, event.name
        assert SECRET_MARKER in repr({k: event.kwargs[k] for k in SECRET_KEYS})
    assert host.signals_sent == Counter(e.name for e in signalled)


# Hooks that raise ---------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["on_startup", "on_tick", "on_user_created", "on_shutdown"])
def test_a_hook_that_raises_propagates_out_of_the_host(
    hosts: Callable[..., SimHost], hook: str
) -> None:
    def fail() -> None:
        raise ArithmeticError(f"{hook} bug")

    host = hosts(SimpleNamespace(**{hook: hookimpl(fail)}))
    actions: dict[str, Callable[[], object]] = {
        "on_startup": host.start,
        "on_tick": host.tick,
        "on_user_created": host.create_user,
        "on_shutdown": host.shutdown,
    }
    if hook != "on_startup":
        host.start()
    with pytest.raises(ArithmeticError, match=f"{hook} bug"):
        actions[hook]()
    assert hook in host.hook_seconds, "timed even when it raised"
    if hook == "on_user_created":
        assert len(host.state.modules["users"]) == 1, "committed before the hook"
    if hook == "on_shutdown":
        assert not host.running
        host.shutdown()  # once: not called again


def test_the_steps_one_at_a_time(
    hosts: Callable[..., SimHost], recorder: Recorder, tmp_path: Path
) -> None:
    """The plugin manager before the start, on_startup without the sync, the sync on its
    own, a tick at a given time, and every hook call seen by the observer."""
    seen: list[tuple[str, float, float]] = []
    host = hosts(hook_observer=lambda hook, wall, cpu: seen.append((hook, wall, cpu)))
    early = Recorder()
    host.plugin_manager.register(early)
    host.save_connection("mqtt")
    app = host.start(sync=False)
    assert app.plugin_manager is host.plugin_manager
    assert recorder.names() == [] and [e.name for e in early.events] == ["on_startup"]
    host.sync()
    assert recorder.names()[:1] == ["inventory-synced:users"]
    assert recorder.synced()["connections"][0]["type"] == "mqtt"
    assert host.tick_at(START + timedelta(hours=1)) == START + timedelta(hours=1)
    assert early.events[-1].kwargs["now"] == START + timedelta(hours=1)
    host.shutdown()
    assert [hook for hook, _, _ in seen] == ["on_startup", "on_tick", "on_shutdown"]
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in seen)
    twin = dataclasses.replace(app)
    assert twin != app and len({app, twin}) == 2, "an app is equal only to itself"
