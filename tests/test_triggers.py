"""Building reports from the state: totals, first email, privacy options, counters carried once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import NEXT_SLOT, Endpoint, make_host, phonehome_config, settle, tick

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.reports.system import host_facts, machine_facts
from phonehome_plugin.reports.triggers import Reporter
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Outbox
from phonehome_plugin.state.owner import LEASE
from phonehome_plugin.state.store import Store


def test_first_email_outlives_the_first_user(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    first = host.create_user("admin@example.com")
    host.clock.advance(10)
    host.create_user("second@example.com")
    host.delete_user(first["id"])
    tick(host, NEXT_SLOT)
    latest = endpoint.reports[-1]
    assert latest["users"] == {"total": 1, "first_email": "admin@example.com"}
    host.shutdown()


def test_an_earlier_user_learned_of_later_becomes_the_first_email(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """The first email is the earliest-created user ever known, not the first one heard
    of: a user created before the stored one and learned of only at a later sync (here
    restored into the installation while the host was down) replaces it."""
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    heard_first = host.create_user("later@example.com")
    settle(host)
    assert endpoint.reports[-1]["users"]["first_email"] == "later@example.com"
    later = host.restart()
    earlier = heard_first["created_at"] - timedelta(days=30)
    later.state.modules["users"]["usr-restored"] = {
        "id": "usr-restored",
        "email": "earlier@example.com",
        "created_at": earlier,
    }
    later.start()  # the users module syncs both
    tick(later)
    first_start, second_start = endpoint.by_trigger("startup")
    assert first_start["users"] == {"total": 0, "first_email": None}
    assert second_start["users"] == {"total": 2, "first_email": "earlier@example.com"}
    tick(later, NEXT_SLOT)
    assert endpoint.reports[-1]["users"]["first_email"] == "earlier@example.com"
    assert len(endpoint.by_trigger("first_user")) == 1  # the first-user report stays one
    later.shutdown()


@pytest.mark.parametrize("first", ["admin@localhost", "josé@münchen.de"])
def test_any_address_the_host_accepted_is_the_first_email_as_it_is(
    endpoint: Endpoint, tmp_path: Path, first: str
) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    host.create_user(first)
    host.clock.advance(10)
    host.create_user("second@example.com")
    settle(host)
    tick(host, NEXT_SLOT)
    host.shutdown()
    after_first = endpoint.reports[1:]
    assert [r["trigger"] for r in after_first][:1] == ["first_user"]
    assert {r["users"]["first_email"] for r in after_first} == {first}


def test_a_user_created_before_the_first_tick_is_reported_after_the_startup(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    host.create_user("admin@example.com")  # before the host's first tick
    settle(host)
    assert endpoint.reports == [], "nothing before the start's first report"
    tick(host)
    host.shutdown()
    assert [(r["sequence"], r["trigger"]) for r in endpoint.reports] == [
        (1, "startup"),
        (2, "first_user"),
    ]


def test_after_a_long_downtime_the_startup_report_covers_its_slot(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    config = phonehome_config(endpoint, geoip_url="")
    host = make_host(config, tmp_path)
    host.start()
    tick(host)
    tick(host, NEXT_SLOT)
    before = len(endpoint.reports)
    host.shutdown()
    host.clock.advance(5 * 3600)  # down for longer than the interval
    later = host.restart(shutdown=False)
    later.start()
    tick(later)
    after = [r["trigger"] for r in endpoint.reports[before:]]
    assert after == ["startup"], "no periodic report of the same counts beside it"
    tick(later, NEXT_SLOT)
    later.shutdown()
    assert [r["trigger"] for r in endpoint.reports[before:]] == ["startup", "periodic"]


def _wrong_tick(host: Any, now: datetime) -> None:
    """One ``on_tick`` with a wrong ``now`` (the host's clock jumped), then settle."""
    host.app.plugin_manager.hook.on_tick(app=host.app, now=now)
    settle(host)


@pytest.mark.parametrize("jump", [timedelta(days=365), timedelta(days=3)])
def test_one_tick_from_a_clock_far_ahead_costs_at_most_the_report_it_touched(
    endpoint: Endpoint, tmp_path: Path, jump: timedelta
) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    endpoint.status = 503  # and the report of the wrong tick fails: the backoff is far ahead
    _wrong_tick(host, host.clock.now() + jump)
    endpoint.status = 202
    before = len(endpoint.reports)
    for _ in range(3):  # three sane hours
        tick(host, NEXT_SLOT)
    host.shutdown()
    later = endpoint.reports[before:]
    periodic = [r for r in later if r["trigger"] == "periodic"]
    assert len(periodic) >= 2, [r["trigger"] for r in later]
    # What the wrong tick built is delivered too (once), not held until its date.
    accepted = endpoint.server.accepted
    assert all(n == 1 for n in accepted.values()), accepted
    assert set(accepted) == {r["report_id"] for r in endpoint.reports}


def test_a_startup_stamped_by_a_clock_ahead_does_not_suppress_later_ones(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    store = open_store(tmp_path)
    future = (host.clock.now() + timedelta(days=365)).timestamp()
    store.set("startup.recent", json.dumps([future, future, future]))
    store.close()
    host.start()
    tick(host)
    host.shutdown()
    assert [r["trigger"] for r in endpoint.reports] == ["startup"]


def test_since_previous_report_counts_only_what_is_new(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    host.run_executions(30, ("completed", "failed", "cancelled"))
    tick(host)
    host.run_executions(7, ("completed",))
    tick(host, NEXT_SLOT)
    startup, periodic = endpoint.reports[0], endpoint.reports[-1]
    assert startup["executions"]["since_previous_report"]["total"] == 30
    assert periodic["executions"]["total"] == 37
    assert periodic["executions"]["since_previous_report"] == {
        "total": 7,
        "success": 7,
        "failure": 0,
        "success_rate": 1.0,
    }
    host.shutdown()


def test_privacy_hash_and_omit(endpoint: Endpoint, tmp_path: Path) -> None:
    privacy = {"email": "hash", "hostname": "omit", "public_ip": "hash"}
    host = make_host(phonehome_config(endpoint, privacy=privacy), tmp_path)
    host.start()
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    tick(host, NEXT_SLOT)
    host.shutdown()
    emails = {r["users"]["first_email"] for r in endpoint.reports[1:]}
    [digest] = emails
    assert digest.startswith("hmac-sha256:") and "admin" not in digest
    assert all(r["system"]["hostname"] is None for r in endpoint.reports)
    ips = {r["system"]["public_ip"] for r in endpoint.reports}
    assert len(ips) == 1 and "203.0.113.7" not in ips.pop()


def test_delivery_counts_ride_along_once(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    endpoint.status = 400  # final: the report is dropped and counted
    tick(host)
    endpoint.status = 202
    tick(host, NEXT_SLOT)
    tick(host, NEXT_SLOT)
    host.shutdown()
    first_after, second_after = endpoint.reports[1], endpoint.reports[2]
    assert first_after["diagnostics"]["delivery"]["rejected"] == 1
    assert first_after["diagnostics"]["delivery"]["dropped"] == 1
    assert second_after["diagnostics"]["delivery"]["rejected"] == 0


# One trigger, one report, whatever fails between its steps ----------------------------


START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _reporter(store: Store, registry: Registry | None = None) -> Reporter:
    settings = Settings(endpoint="http://127.0.0.1:9/v1/reports", geoip_url="")
    return Reporter(
        settings=settings,
        store=store,
        outbox=Outbox(store, settings.outbox),
        inventory=Inventory(),
        tally=ExecutionTally(),
        registry=registry or Registry(),
        host=host_facts("1.4.0", "core"),
        started_at=START,
        machine=machine_facts,
    )


class FaultError(Exception):
    """Stands for the database failing at the point a test chose."""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Store]:
    store = open_store(tmp_path)
    assert not store.memory
    yield store
    store.close()


def _outbox(store: Store) -> list[tuple[str, int, str]]:
    return [
        (e.report_id, e.sequence, e.trigger) for e in Outbox(store, Settings().outbox).pending()
    ]


def test_a_fault_after_storing_leaves_nothing_and_the_rebuild_is_the_same_report(
    state: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reporter = _reporter(state)
    reporter.tally.receiver(None, status="completed")
    stored = reporter.outbox.put_in

    def then_fail(c: Any, entry: Any, now: float) -> int:
        stored(c, entry, now)
        raise FaultError  # after the report is in the outbox, before the transaction commits

    monkeypatch.setattr(reporter.outbox, "put_in", then_fail)
    with pytest.raises(FaultError):
        reporter.startup(START)
    # Nothing of the trigger committed: no report, no sequence used, no counts taken.
    assert _outbox(state) == []
    assert state.counters("exec_reported.") == {}
    assert not reporter.startup_settled()
    [(first_id,)] = state.run(lambda c: c.execute("SELECT report_id FROM claims").fetchall())

    monkeypatch.setattr(reporter.outbox, "put_in", stored)
    built = reporter.startup(START)
    assert built is not None
    assert _outbox(state) == [(first_id, 1, "startup")]
    assert built["report_id"] == first_id and built["sequence"] == 1
    assert state.counters("exec_reported.") == {"completed": 1}
    assert reporter.startup_settled()


def test_a_commit_whose_outcome_is_unknown_is_read_back_not_built_again(
    state: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reporter = _reporter(state)
    settle = state.settle

    def committed_then_lost(*args: Any) -> Any:
        settle(*args)
        raise FaultError  # the COMMIT went through; the answer to it was lost

    monkeypatch.setattr(state, "settle", committed_then_lost)
    with pytest.raises(FaultError):
        reporter.startup(START)
    monkeypatch.setattr(state, "settle", settle)
    assert reporter.startup(START) is None  # read back: done, so not built again
    assert reporter.startup(START + timedelta(minutes=5)) is None
    [(_, sequence, trigger)] = _outbox(state)
    assert (sequence, trigger) == (1, "startup")


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "rolled-back"])
def test_a_fold_whose_outcome_is_unknown_counts_once(
    state: Store, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    reporter = _reporter(state)
    receiver = reporter.tally.receiver
    for _ in range(3):
        receiver(None, status="completed")
    run = state.run

    def lost(work: Any) -> Any:
        if committed:
            run(work)  # the COMMIT went through; the answer to it was lost
        raise FaultError

    monkeypatch.setattr(state, "run", lost)
    with pytest.raises(FaultError):
        reporter.fold(START)
    monkeypatch.setattr(state, "run", run)
    receiver(None, status="failed")
    reporter.fold(START)  # read back first: the lost fold's counts ride again if needed
    reporter.fold(START)
    assert state.counters("exec.") == {"completed": 3, "failed": 1}


def test_a_counts_only_fold_leaves_the_inventory_for_the_next_fold(state: Store) -> None:
    reporter = _reporter(state)
    for _ in range(2):
        reporter.tally.receiver(None, status="completed")
    reporter.inventory.sync("connections", [{"id": "c1", "type": "mqtt"}])
    reporter.fold(START, inventory=False)
    assert state.counters("exec.") == {"completed": 2}
    assert reporter.installation_inventory().connections.total == 0, "taken already"
    reporter.fold(START)
    assert reporter.installation_inventory().connections.total == 1
    assert state.counters("exec.") == {"completed": 2}, "counted once"


class TakesOver:
    """A collector of one process during whose ``collect()`` another node's process
    takes the same trigger over (it saw the claim unchanged for a lease on its own
    clock: the first one stalled mid-build)."""

    name = "acme.stall"

    def __init__(self) -> None:
        self.other: Reporter | None = None
        self.claimed: str | None = None

    def collect(self) -> dict[str, int]:
        if self.other is not None:
            # Claimed, not yet settled: the new owner is still building too.
            assert self.other._claim(self.other._startup_key(), START) is None  # seen
            self.claimed = self.other._claim(self.other._startup_key(), LATER)
            self.other = None
        return {"stalls": 1}


LATER = START + timedelta(seconds=LEASE + 1)


def test_a_process_whose_claim_was_taken_over_mid_build_stores_nothing(
    state: Store, tmp_path: Path
) -> None:
    registry = Registry()
    stall = TakesOver()
    registry.register(stall)
    slow = _reporter(state, registry)
    slow.owner = "a-process-of-another-node"  # whose life cannot be looked at
    other_store = open_store(tmp_path)
    try:
        other = stall.other = _reporter(other_store)
        assert slow.startup(START) is None  # lost its claim while building: stores nothing
        assert _outbox(state) == []
        assert not slow.startup_settled()
        # The new owner settles it: the one report, under the id the first claim fixed.
        built = other.startup(LATER)
        assert built is not None and built["report_id"] == stall.claimed
        assert _outbox(state) == [(stall.claimed, 1, "startup")]
        assert slow.startup_settled()
    finally:
        registry.disconnect()
        other_store.close()


def test_under_email_omit_no_email_is_kept_in_the_state(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """What is never reported is not stored either: the first user's creation time is
    kept (for the first-user report and its ties), its email not."""
    from e2e_support import make_host, phonehome_config, settle

    config = phonehome_config(endpoint, geoip_url="", privacy={"email": "omit"})
    host = make_host(config, tmp_path)
    host.start()
    host.tick()
    host.create_user("first.admin@example.com")
    settle(host)
    host.shutdown()
    [first] = endpoint.by_trigger("first_user")
    assert first["users"]["first_email"] is None
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"first.admin@example.com" not in path.read_bytes(), path.name
