"""The worker's triggers, on the host's clock: startup, first user, periodic, crash loops."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from e2e_support import (
    START,
    Endpoint,
    make_host,
    phonehome_config,
    pin_instance,
    settle,
    tick,
)

from phonehome_plugin.reports import schedule
from phonehome_plugin.testing.simhost import SimHost

HOUR = 3600


@pytest.fixture
def config(endpoint: Endpoint) -> dict[str, object]:
    return phonehome_config(endpoint, geoip_url="")


def _hours(host: SimHost, hours: float, step: float = 600) -> None:
    for _ in range(int(hours * HOUR / step)):
        tick(host, step)


def test_the_startup_report_waits_for_the_first_tick(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    host = make_host(config, tmp_path)
    host.save_connection("mqtt", "c1")
    host.start()
    host.save_connection("opcua", "c2")  # after the sync, before the first tick
    settle(host)
    assert endpoint.reports == []
    tick(host)
    [report] = endpoint.reports
    assert report["trigger"] == "startup"
    assert report["connections"]["total"] == 2
    host.shutdown()


def test_first_user_report_is_immediate_and_once(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    host.clock.advance(30)
    host.create_user("admin@example.com")
    host.create_user("second@example.com")
    settle(host)  # no tick needed: the user's creation wakes the worker
    [first] = endpoint.by_trigger("first_user")
    assert first["generated_at"] == "2026-03-02T08:00:30.000Z"
    assert first["users"]["first_email"] == "admin@example.com"
    _hours(host, 1)
    assert len(endpoint.by_trigger("first_user")) == 1
    host.shutdown()


def test_no_first_user_report_where_users_already_existed(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    host = make_host(config, tmp_path)
    host.create_user("founder@example.com")  # before the plugin ran: synced at startup
    host.start()
    tick(host)
    host.create_user("later@example.com")  # at the same instant: the order is by email then
    host.clock.advance(60)
    host.create_user("another@example.com")
    settle(host)
    assert endpoint.by_trigger("first_user") == []
    assert endpoint.reports[-1]["users"]["first_email"] == "founder@example.com"
    host.shutdown()


def test_one_periodic_report_per_slot_at_a_stable_offset(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    pin_instance(tmp_path)  # how many slots a day holds depends on the id
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    _hours(host, 24)
    periodic = endpoint.by_trigger("periodic")
    instance = periodic[0]["instance_id"]
    offset = schedule.offset(instance, HOUR)
    slots = [schedule.slot_of(_epoch(r["generated_at"]), HOUR, offset) for r in periodic]
    assert len(slots) == len(set(slots)), "two reports in one slot"
    assert slots == list(range(slots[0], slots[0] + len(slots))), "a slot was skipped"
    # 23 to 25 as the id places the slots; the pinned id's day holds 24.
    assert len(periodic) == 24
    host.shutdown()


def test_restarts_neither_reset_nor_double_the_cadence(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    pin_instance(tmp_path)  # where the slots fall among the restarts depends on the id
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    for _ in range(6):
        _hours(host, 0.5)
        host = host.restart()
        host.start()
        tick(host)
    _hours(host, 0.5)
    host.shutdown()
    periodic = endpoint.by_trigger("periodic")
    spans = (_epoch(periodic[-1]["generated_at"]) - _epoch(periodic[0]["generated_at"])) / HOUR
    assert len(periodic) == round(spans) + 1
    assert len(endpoint.by_trigger("startup")) == 7, "a start every 30 min is within the limit"


def test_a_crash_looping_host_sends_a_few_startups_and_counts_the_rest(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    host = make_host(config, tmp_path)
    crashed = []
    try:
        for _ in range(8):
            host.start()
            tick(host)
            host.clock.advance(120)
            crashed.append(host)
            host = host.restart(shutdown=False)
        host.clock.advance(2 * HOUR)
        host.start()
        tick(host)
    finally:
        for gone in [*crashed, host]:
            gone.shutdown()  # the "crashed" ones only now, so they leave nothing running
    startups = endpoint.by_trigger("startup")
    assert len(startups) == schedule.STARTUP_LIMIT + 1
    # The count rides along in whichever report comes next (a periodic one may).
    suppressed = sum(r["diagnostics"]["suppressed_startups"] for r in endpoint.reports)
    assert suppressed == 8 - schedule.STARTUP_LIMIT


def test_the_notice_is_logged_once_per_installation_before_anything_is_sent(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    host = host.restart()
    host.start()
    tick(host)
    host.shutdown()
    notices = [r for r in caplog.records if "telemetry is on" in r.getMessage()]
    assert len(notices) == 1
    assert "enabled: false" in notices[0].getMessage()
    assert endpoint.server.requests, "reports were sent"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_every_schedule_decision_uses_the_host_clock(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    _hours(host, 3)
    for report in endpoint.reports:
        at = _epoch(report["generated_at"])
        assert START.timestamp() <= at <= (START + timedelta(hours=3)).timestamp()
    host.shutdown()


def test_a_startup_claimed_by_a_process_that_died_is_taken_over_after_the_lease(
    endpoint: Endpoint, config: dict[str, object], tmp_path: Path
) -> None:
    from phonehome_plugin.reports import shape
    from phonehome_plugin.state import owner
    from phonehome_plugin.state.backends import open_store

    store = open_store(tmp_path)
    # Another process of this host start claimed the startup report, then died.
    assert store.claim(f"startup:{shape.iso(START)}", "dead-worker", START.timestamp())
    store.close()
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    tick(host, owner.LEASE / 2)
    assert endpoint.by_trigger("startup") == [], "the lease of the other process still runs"
    tick(host, owner.LEASE)
    assert len(endpoint.by_trigger("startup")) == 1
    tick(host, 600)
    assert len(endpoint.by_trigger("startup")) == 1


def test_a_process_whose_state_file_cannot_be_used_reports_nothing_and_joins_later(
    endpoint: Endpoint,
    config: dict[str, object],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same as for PostgreSQL (tests/test_postgres.py): no state of its own, which
    would report as an installation of its own; counts kept; one log line."""
    blocker = tmp_path / "data"
    blocker.write_text("the data dir is a file: it cannot be used")
    host = make_host(config, blocker / "dir")
    host.start()
    host.run_executions(7)
    tick(host)
    host.create_user("first@example.com")
    tick(host, 5)
    assert endpoint.reports == []
    said = [r for r in caplog.records if "cannot use" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    blocker.unlink()  # the operator fixes the data dir
    tick(host, 600)  # past the first retry (10 s of host clock)
    triggers = [r["trigger"] for r in endpoint.reports]
    assert triggers[:2] == ["startup", "first_user"]
    assert endpoint.reports[0]["executions"]["total"] == 7
    assert len({r["instance_id"] for r in endpoint.reports}) == 1
    host.shutdown()
