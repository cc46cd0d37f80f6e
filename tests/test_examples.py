"""The example third-party collector: registered through the plugin-owned hook, its
section in real reports, and nothing in it that the privacy guard would drop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from e2e_support import START, Endpoint, phonehome_config, settle, tick

import hookspecs.host
import hookspecs.phonehome
from hookspecs import PROJECT_NAME, signals
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports import schema
from phonehome_plugin.testing.examples import historian
from phonehome_plugin.testing.examples.historian import HistorianCollector
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost
from phonehome_plugin.testing.vocabulary import SECRET_MARKER


@pytest.fixture
def host(endpoint: Endpoint, tmp_path: Path) -> Iterator[SimHost]:
    """A host with phonehome (from its entry point) and the historian as a plugin."""
    config = phonehome_config(endpoint, geoip_url="")
    sim = SimHost(config, tmp_path / "data", clock=SimClock(START), extra_plugins=[historian])
    yield sim
    sim.shutdown()


def test_it_registers_one_collector_through_the_hook() -> None:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs.host)
    pm.add_hookspecs(hookspecs.phonehome)
    pm.register(historian)
    got: list[Any] = []
    pm.hook.phonehome_register_collectors.call_historic(kwargs={"register": got.append})

    [collector] = got
    assert isinstance(collector, HistorianCollector)
    assert collector.name == historian.NAME == "acme.historian"
    assert [signal for signal, _ in collector.receivers()] == [signals.execution_finished]


def test_its_hook_is_optional_on_a_host_without_the_phonehome_spec() -> None:
    """optionalhook: no "unknown hook" error where nothing added phonehome's spec. (That
    a module loads where phonehome is not installed at all is shown by a fresh
    virtualenv holding the contract and a module only: tests/test_packaging.py.)"""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs.host)  # the host's hooks only: no phonehome spec
    pm.register(historian)
    pm.check_pending()


def test_it_counts_executions_per_pipeline_and_ignores_the_extras() -> None:
    collector = HistorianCollector(backends={"influx": 1, "timescale": 2})
    for pipeline in ("p1", "p2", "p1", "p1"):
        collector.on_execution(
            object(),
            pipeline_id=pipeline,
            status="completed",
            credentials={"password": SECRET_MARKER},
        )
    section = collector.collect()
    assert section == {
        "series": 2,
        "points_written": 4,
        "busiest_pipeline_points": 3,
        "backends": {"influx": 1, "timescale": 2},
    }
    assert SECRET_MARKER not in repr(section) and "p1" not in repr(section)


def test_its_section_passes_the_privacy_guard_unchanged() -> None:
    collector = HistorianCollector()
    collector.on_execution(object(), pipeline_id="p1")
    drops = privacy.DropCounter()
    section = collector.collect()
    assert privacy.section(section, drops) == section
    assert drops.take() == {}


def test_its_section_appears_in_every_report(endpoint: Endpoint, host: SimHost) -> None:
    pipelines = [host.save_pipeline(["trigger.manual", "action.http"]) for _ in range(3)]
    host.start()
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    host.run_executions(1000, ("completed", "failed"))
    host.run_for(2 * 3600, step=600)  # one slot at least, whatever the instance's offset
    settle(host)

    reports = endpoint.reports
    triggers = [r["trigger"] for r in reports]
    assert triggers[:2] == ["startup", "first_user"]
    assert triggers[2:] and set(triggers[2:]) == {"periodic"}
    empty = {"series": 0, "points_written": 0, "busiest_pipeline_points": 0}
    assert reports[0]["collectors"] == {"acme.historian": {**empty, "backends": {"influx": 1}}}
    per_pipeline = Counter(pipelines[i % 3] for i in range(1000))
    assert reports[-1]["collectors"]["acme.historian"] == {
        "series": 3,
        "points_written": 1000,
        "busiest_pipeline_points": max(per_pipeline.values()),
        "backends": {"influx": 1},
    }
    for report in reports:
        assert schema.errors(report) == []
        assert report["diagnostics"]["collector_errors"] == {}
        assert report["diagnostics"]["privacy_dropped"] == {}, "nothing of it was dropped"
    assert all(SECRET_MARKER.encode() not in body for body in endpoint.bodies)


def test_it_stops_counting_once_phonehome_shuts_down(endpoint: Endpoint, host: SimHost) -> None:
    host.start()
    tick(host)
    runtime = host.app.plugin_manager.get_plugin("phonehome-runtime")
    assert runtime is not None, "phonehome started"
    [collector] = runtime.registry.collectors.values()
    host.run_executions(5)
    host.shutdown()
    signals.execution_finished.send(host.app, pipeline_id="late", status="completed")
    assert collector.collect()["points_written"] == 5, "its receiver was disconnected"
