"""The plugin end to end: discovered from installed metadata, driven by a simulated
host, reporting to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from e2e_support import GEOIP, Endpoint, make_host, phonehome_config, pin_instance, settle, tick

from phonehome_plugin.reports import schema
from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.simhost import SimHost


def _populate(host: SimHost) -> None:
    host.save_connection("mqtt", "c1")
    host.save_connection("mqtt", "c2")
    host.save_connection("opcua", "c3")
    host.save_pipeline(["trigger.manual", "action.http"], enabled=True, pipeline_id="p1")
    host.save_pipeline(
        ["trigger.webhook", "system.uns.publish", "action.http"], enabled=False, pipeline_id="p2"
    )
    host.save_organization("o1")
    host.save_data_model("d1")
    host.save_data_model("d2")
    host.set_uns(topic_count=2400, client_count=7, mqtt_mode="embedded", storage_mode="pebble")
    host.set_license("trial", "LIC-2026-0042")


def test_startup_report_carries_every_category_after_inventory_sync(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    host = make_host(phonehome_config(endpoint), tmp_path / "data")
    _populate(host)
    host.start()
    tick(host)

    [report] = endpoint.reports
    assert report["trigger"] == "startup"
    assert report["sequence"] == 1
    assert schema.errors(report) == []
    system = report["system"]
    assert (system["version"], system["edition"]) == ("2.3.0", "enterprise")
    assert system["os"] and system["arch"] and system["hostname"]
    assert system["public_ip"] == GEOIP["query"]
    assert report["license"] == {"id": "LIC-2026-0042", "status": "trial"}
    assert report["users"] == {"total": 0, "first_email": None}
    assert report["location"] == {
        "country": "Germany",
        "city": "Munich",
        "region": "Bavaria",
        "isp": "Example Carrier",
    }
    assert report["connections"] == {"total": 3, "by_type": {"mqtt": 2, "opcua": 1}}
    assert report["pipelines"] == {
        "total": 2,
        "enabled": 1,
        "nodes_by_type": {
            "action.http": 2,
            "system.uns.publish": 1,
            "trigger.manual": 1,
            "trigger.webhook": 1,
        },
    }
    assert report["uns"] == {
        "topic_count": 2400,
        "client_count": 7,
        "mqtt_mode": "embedded",
        "storage_mode": "pebble",
    }
    assert report["other"] == {"organizations": 1, "data_models": 2}
    assert report["executions"]["total"] == 0
    assert report["collectors"] == {"acme.counter": {"saves": 0, "by_type": {}}}
    assert "acme.broken" in report["diagnostics"]["collector_errors"]
    headers = endpoint.headers[0]
    assert headers["Idempotency-Key"] == report["report_id"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("maestrohub-phonehome/")
    host.shutdown()


def test_a_life_with_a_restart(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    pin_instance(tmp_path / "data")  # how many slots two hours hold depends on the id
    host = make_host(phonehome_config(endpoint), tmp_path / "data")
    _populate(host)
    host.start()
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    host.tick(60)
    host.save_connection("mqtt", "c1")  # a duplicate save: still one entity
    host.save_connection("s7", "c4")
    host.save_connection("opcua", "c2")  # a type change moves c2 from mqtt to opcua
    host.delete_connection("c-unknown")  # deleting an unknown id changes nothing
    host.delete_pipeline("p2")
    host.delete_data_model("d1")
    emitted = host.run_executions(
        1000, {"completed": 0.9, "failed": 0.05, "completed_with_errors": 0.03, "cancelled": 0.02}
    )
    host.run_for(2 * 3600, step=600)
    settle(host)

    first_user = endpoint.by_trigger("first_user")
    assert len(first_user) == 1
    assert first_user[0]["users"] == {"total": 1, "first_email": "admin@example.com"}
    periodic = endpoint.by_trigger("periodic")
    # One periodic report per hour-long slot: 1 or 2 as the id places the slots; 2 here.
    assert len(periodic) == 2
    latest = periodic[-1]
    assert latest["connections"] == {"total": 4, "by_type": {"mqtt": 1, "opcua": 2, "s7": 1}}
    assert latest["pipelines"] == {
        "total": 1,
        "enabled": 1,
        "nodes_by_type": {"action.http": 1, "trigger.manual": 1},
    }
    assert latest["other"] == {"organizations": 1, "data_models": 1}
    assert latest["executions"]["by_status"] == {**dict(emitted), "unknown": 0}
    assert latest["executions"]["success"] == emitted["completed"]
    assert latest["executions"]["failure"] == emitted["failed"] + emitted["completed_with_errors"]
    assert latest["collectors"]["acme.counter"] == {
        "saves": 3,
        "by_type": {"mqtt": 1, "s7": 1, "opcua": 1},
    }

    second = host.restart()
    second.start()
    tick(second)
    second.create_user("second@example.com")
    more = second.run_executions(500, ("completed", "failed"))
    second.run_for(2 * 3600, step=600)  # always past the next slot and its jitter
    settle(second)
    second.shutdown()

    reports = endpoint.reports
    assert [r["sequence"] for r in reports] == list(range(1, len(reports) + 1))
    assert len({r["report_id"] for r in reports}) == len(reports)
    assert len({r["instance_id"] for r in reports}) == 1
    assert len(endpoint.by_trigger("startup")) == 2
    assert len(endpoint.by_trigger("first_user")) == 1, "first user reported once in a lifetime"
    final = reports[-1]
    lifetime = emitted + more
    assert final["executions"]["by_status"] == {
        s: lifetime.get(s, 0)
        for s in ("completed", "failed", "completed_with_errors", "cancelled")
    } | {"unknown": 0}
    assert final["users"] == {"total": 2, "first_email": "admin@example.com"}
    for report in reports:
        assert schema.errors(report) == []


def test_exact_totals_from_eight_threads(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path / "data")
    host.save_pipeline(["trigger.manual"], pipeline_id="p1")
    host.start()
    tick(host)
    emitted = host.run_executions(
        100_000, ("completed", "failed", "cancelled", "completed_with_errors"), threads=8
    )
    host.run_for(2 * 3600, step=600)  # always past the next slot and its jitter
    settle(host)
    latest = endpoint.by_trigger("periodic")[-1]
    assert latest["executions"]["total"] == 100_000
    assert latest["executions"]["by_status"] == {**dict(emitted), "unknown": 0}
    host.shutdown()


def test_a_modules_receivers_count_while_on_and_stop_at_on_shutdown(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    from hookspecs import signals

    host = make_host(phonehome_config(endpoint), tmp_path / "data")
    host.start()
    tick(host)
    runtime = host.app.plugin_manager.get_plugin("phonehome-runtime")
    assert isinstance(runtime, Runtime)
    counter: Any = runtime.registry.collectors["acme.counter"]
    before = set(signals.connection_saved.receivers)
    host.save_connection("mqtt", "c1")
    assert counter.saves == {"mqtt": 1}
    host.shutdown()
    signals.connection_saved.send(host.app, id="c2", type="s7")
    assert counter.saves == {"mqtt": 1}, "called after on_shutdown"
    assert len(signals.connection_saved.receivers) < len(before)
    # Nor does the plugin keep it: its own receiver, called by hand, carries no rider.
    own = next(b for b in runtime._builtins if b.signal is signals.connection_saved)
    own.receiver(host.app, id="c3", type="s7")
    assert counter.saves == {"mqtt": 1}, "still a rider of the plugin's receiver"


class InventoryFaultError(Exception):
    """The installation's inventory cannot be written (the test's fault point)."""


def test_at_shutdown_the_counts_are_saved_even_when_the_inventory_is_not(
    endpoint: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last fold saves the execution counts on their own, before the inventory's
    changes: those are values the host syncs again at its next start, and taking them
    may outlast the shutdown wait; the counts exist nowhere else."""
    from phonehome_plugin.state import entities
    from phonehome_plugin.state.backends import open_store

    data = tmp_path / "data"
    host = make_host(phonehome_config(endpoint), data)
    _populate(host)
    host.start()
    tick(host)
    host.run_executions(7, ("failed",))
    host.sync()  # a whole inventory for the last fold to take

    def fails(*args: Any) -> None:
        raise InventoryFaultError

    monkeypatch.setattr(entities, "apply", fails)
    host.shutdown()
    store = open_store(data)
    try:
        assert store.counters("exec.") == {"failed": 7}
    finally:
        store.close()


def test_telemetry_off_leaves_no_trace(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    host = make_host(phonehome_config(endpoint, enabled=False), data)
    _populate(host)
    threads_before = {t.name for t in threading.enumerate()}
    host.start()
    host.create_user("admin@example.com")
    host.run_executions(100)
    host.run_for(3 * 3600, step=600)
    from hookspecs import signals

    connected = {
        signal.name: list(signal.receivers.values()) for signal in signals.ALL if signal.receivers
    }
    assert connected == {}, "a receiver stayed connected"
    assert host.app.plugin_manager.get_plugin("phonehome-runtime") is None
    assert {t.name for t in threading.enumerate()} - threads_before == set()
    host.shutdown()
    assert list(data.iterdir()) == []
    assert endpoint.reports == []
    assert endpoint.server.connections == 0, "not even a location lookup"


def test_broken_config_costs_telemetry_not_the_host(
    endpoint: Endpoint, tmp_path: Path, caplog: object
) -> None:
    import logging

    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)
    config = phonehome_config(endpoint, interval="hourly")
    host = make_host(config, tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="phonehome_plugin"):
        host.start()
        host.run_for(2 * 3600, step=600)
        host.shutdown()
    lines = [
        r.getMessage() for r in caplog.records if "modules.phonehome.interval" in r.getMessage()
    ]
    assert len(lines) == 1
    assert "hourly" in lines[0]
    assert endpoint.reports == []


# dict[str, Any]: spread into blinker's send(), whose keyword-only `_async_wrapper`
# a narrower value type would be checked against.
SECRETS: dict[str, Any] = {
    "password": "hunter2-Pa55word!",
    "api_key": "AKIAIOSFODNN7EXAMPLE",
    "token": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "dsn": "postgres://historian:s3cr3t-pw@db.plant.internal:5432/uns",
    "workflow": {"nodes": [{"type": "action.http", "body": "SELECT * FROM recipes WHERE line=7"}]},
    "operator_email": "night.shift.operator@plant.example",
}


def test_nothing_but_the_allowlist_reaches_a_report_or_the_disk(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    from hookspecs import signals

    data = tmp_path / "data"
    host = make_host(phonehome_config(endpoint), data)
    _populate(host)
    host.start()
    app = host.app
    signals.connection_saved.send(app, id="c9", type="mqtt", **SECRETS)
    signals.pipeline_saved.send(app, id="p9", enabled=True, node_types=["action.http"], **SECRETS)
    signals.execution_finished.send(
        app, pipeline_id="p9", status="completed", duration_ms=5, **SECRETS
    )
    signals.uns_state_changed.send(
        app,
        topic_count=1,
        client_count=1,
        mqtt_mode="external",
        storage_mode="timescale",
        **SECRETS,
    )
    signals.license_changed.send(app, license_id="LIC-1", status="active", **SECRETS)
    signals.inventory_synced.send(
        app, module="organizations", items=[{"id": "o1", "name": SECRETS["dsn"], **SECRETS}]
    )
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    host.run_for(2 * 3600, step=600)  # always past the next slot and its jitter
    settle(host)
    host.shutdown()

    assert len(endpoint.reports) >= 3
    sent = b"\n".join(endpoint.bodies)
    stored = b"\n".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    needles = [
        "hunter2",
        "AKIAIOSFODNN7",
        "ghp_16C7e42F",
        "s3cr3t-pw",
        "historian:",
        "SELECT",
        "recipes",
        "night.shift",
        "sim-secret",
    ]
    for needle in needles:
        assert needle.encode() not in sent, f"{needle!r} reached a report"
        assert needle.encode() not in stored, f"{needle!r} reached the data dir"
