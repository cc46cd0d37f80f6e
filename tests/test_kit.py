"""The testing kit (:mod:`phonehome_plugin.testing.kit`): a module author's collector,
end to end, with one call per step and the author's mistakes as the test's failures."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import START

from hookspecs import Collector, hookimpl, signals
from phonehome_plugin.reports import schema
from phonehome_plugin.testing.examples import historian
from phonehome_plugin.testing.kit import Harness
from phonehome_plugin.testing.simclock import SimClock

EMPTY = {"series": 0, "points_written": 0, "busiest_pipeline_points": 0, "backends": {"influx": 1}}


class Writes:
    """A module counting executions, the way docs/modules.md writes one."""

    name = "acme.writes"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writes = 0

    def receivers(self) -> list[tuple[Any, Callable[..., None]]]:
        return [(signals.execution_finished, self.on_execution)]

    def on_execution(self, sender: object, **extra: Any) -> None:
        with self._lock:
            self.writes += 1

    def collect(self) -> dict[str, Any]:
        with self._lock:
            return {"writes": self.writes, "label": "fast", "note": "passw0rd-1"}


class Module:
    """A MaestroHub module registering what ``register_with`` registers."""

    def __init__(self, register_with: Callable[[Callable[[Collector], None]], None]) -> None:
        self.register_with = register_with

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Callable[[Collector], None]) -> None:
        self.register_with(register)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Harnesses on the suite's clock, without entry points unless asked; all closed."""
    made: list[Harness] = []

    def make(*plugins: object, **kwargs: Any) -> Harness:
        kwargs.setdefault("load_entrypoints", False)
        kwargs.setdefault("clock", SimClock(START))
        made.append(Harness(tmp_path / f"data{len(made)}", plugins=plugins, **kwargs))
        return made[-1]

    yield make
    for made_one in made:
        made_one.close()


def test_start_sends_the_startup_report_with_the_section(harness: Callable[..., Harness]) -> None:
    kit = harness(historian)
    assert kit.reports == []
    kit.start()
    [report] = kit.reports
    assert report["trigger"] == "startup"
    assert schema.errors(report) == []
    assert kit.last_report == report
    assert kit.section("acme.historian") == EMPTY
    assert kit.dropped() == {}


def test_next_report_moves_host_time_to_the_next_report(harness: Callable[..., Harness]) -> None:
    module = Module(lambda register: register(Writes()))
    kit = harness(module)
    kit.start()
    kit.host.run_executions(7)
    before = kit.host.clock.now()
    report = kit.next_report()
    assert report["trigger"] == "periodic"
    assert kit.reports[-1] == report
    took = (kit.host.clock.now() - before).total_seconds()
    assert 0 < took <= 3600 + 300 + 300, "at most an interval, its jitter and a step"
    # The guard's work shows: the secret-looking value is dropped and counted.
    assert kit.section("acme.writes", report) == {"writes": 7, "label": "fast"}
    assert kit.dropped(report) == {"collector_value": 1}


def test_entry_points_bring_phonehome_and_the_installed_modules(
    harness: Callable[..., Harness], acme_distribution: Path
) -> None:
    kit = harness(load_entrypoints=True)
    kit.start()
    assert kit.section("acme.counter") == {"saves": 0, "by_type": {}}
    with pytest.raises(AssertionError, match=r"'acme.broken'.*collect\(\) raised RuntimeError"):
        kit.section("acme.broken")


def test_a_missing_section_fails_with_the_reason(harness: Callable[..., Harness]) -> None:
    class Broken:
        name = "acme.broken"

        def collect(self) -> dict[str, int]:
            return {"ratio": 1 // 0}

    kit = harness(Module(lambda register: register(Broken())))
    kit.start()
    with pytest.raises(AssertionError) as failed:
        kit.section("acme.broken")
    assert str(failed.value).startswith(
        "no section 'acme.broken' in the startup report: collect() raised ZeroDivisionError"
    )
    with pytest.raises(AssertionError, match=r"'acme\.unknown' in the startup report: it was not"):
        kit.section("acme.unknown")


def test_a_refused_registration_is_the_authors_test_failure(
    harness: Callable[..., Harness],
) -> None:
    """``register()`` raising in the module's own code reaches the module's test as the
    very exception, from start(); the module is left out and the rest still works."""
    kit = harness(historian, Module(lambda register: register(object())))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a str `name` and a callable `collect") as raised:
        kit.start()
    assert any("failed to register" in note for note in raised.value.__notes__)
    kit.tick()  # raised once: the host runs on
    assert kit.section("acme.historian") == EMPTY


def test_a_late_module_s_refused_registration_fails_the_next_step(
    harness: Callable[..., Harness],
) -> None:
    kit = harness(historian)
    kit.start()
    duplicate = Module(lambda register: register(historian.HistorianCollector()))
    kit.host.plugin_manager.register(duplicate)  # never raises into the host ...
    with pytest.raises(ValueError, match="already registered"):
        kit.tick()  # ... but into the author's test
    kit.tick()


def test_start_says_when_telemetry_is_off(harness: Callable[..., Harness]) -> None:
    kit = harness(historian, config={"enabled": False})
    with pytest.raises(AssertionError, match="phonehome did not start: telemetry is off"):
        kit.start()


def test_settle_needs_a_started_host(harness: Callable[..., Harness]) -> None:
    kit = harness(historian)
    with pytest.raises(AssertionError, match="start"):
        kit.settle()
    with pytest.raises(AssertionError, match="no report received yet"):
        kit.last_report  # noqa: B018  # the property's failure is the point


def test_settle_fails_the_test_when_the_plugin_hangs(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = harness(historian)
    kit.start()
    runtime = kit.runtime()
    assert runtime is not None
    monkeypatch.setattr(runtime.worker, "wait_idle", lambda timeout: False)
    with pytest.raises(AssertionError, match=r"did not settle within 0\.5 s"):
        kit.settle(0.5)


def test_close_shuts_the_host_down_and_stops_the_receiver(
    harness: Callable[..., Harness],
) -> None:
    kit = harness(historian)
    kit.start()
    kit.close()
    kit.close()
    assert not kit.host.running
    assert kit.runtime() is None
    with pytest.raises(RuntimeError, match="not running"):
        kit.host.tick()
    with pytest.raises(OSError):  # the receiver's port is closed
        socket.create_connection(("127.0.0.1", int(kit.receiver.url.split(":")[2].split("/")[0])))
