"""The outbox on a real SQLite file: bounds, eviction order, age (and what an export must
write first), leases, the gate, the drain rate, and the bodies kept of every outcome."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import history
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import (
    DAY,
    DRAIN_BURST,
    FAILURES_KEY,
    GATE_KEY,
    PACE_KEY,
    Entry,
    Outbox,
    Pace,
)
from phonehome_plugin.state.store import Store

NOW = 1_772_438_400.0  # 2026-03-02T08:00:00Z


class Maker:
    """Entries with increasing sequences, as the reporter makes them."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)

    def __call__(self, trigger: str = "periodic", at: float = NOW, size: int = 10) -> Entry:
        sequence = next(self._sequence)
        return Entry(f"r{sequence:04d}", sequence, trigger, at, b"x" * size)


@pytest.fixture
def make() -> Maker:
    return Maker()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def outbox_with(store: Store, **limits: Any) -> Outbox:
    return Outbox(store, OutboxLimits(**limits))


def totals(store: Store) -> tuple[int, int]:
    """The outbox's running totals, as its bounds read them."""
    found = store.counters("outbox.")
    return found.get("count", 0), found.get("bytes", 0)


def ids(outbox: Outbox) -> list[str]:
    return [entry.report_id for entry in outbox.pending()]


def event(entry: Entry, result: str = "sent") -> history.Event:
    return history.Event(entry.report_id, entry.sequence, entry.trigger, NOW, result, "test")


def test_the_default_bounds_are_256_reports_8_mib_and_7_days() -> None:
    assert OutboxLimits() == OutboxLimits(256, 8 * 1024 * 1024, 7.0)


def test_a_stored_report_is_kept_byte_for_byte_across_a_restart(
    tmp_path: Path, make: Maker
) -> None:
    first = open_store(tmp_path)
    entry = Entry("r1", 1, "startup", NOW, '{"ünïcode": "ok"}'.encode())
    assert Outbox(first, OutboxLimits()).put(entry, NOW) == 0
    first.close()
    again = open_store(tmp_path)
    assert Outbox(again, OutboxLimits()).pending() == [entry]
    again.close()


def test_the_same_report_stored_twice_is_one_report(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry = make()
    outbox.put(entry, NOW)
    outbox.put(entry, NOW)
    assert outbox.size() == (1, 10)


def test_the_count_bound_evicts_the_oldest_periodic_first(store: Store, make: Maker) -> None:
    outbox = outbox_with(store, max_reports=3)
    first_user = make("first_user", NOW - 50)
    startup = make("startup", NOW - 40)
    older, newer = make("periodic", NOW - 30), make("periodic", NOW - 20)
    for entry in (first_user, startup, older, newer):
        outbox.put(entry, NOW)
    assert ids(outbox) == [first_user.report_id, startup.report_id, newer.report_id]
    assert store.counters("delivery.") == {"dropped": 1, "evicted": 1}


def test_eviction_goes_periodic_then_startup_and_first_user_last(
    store: Store, make: Maker
) -> None:
    outbox = outbox_with(store, max_reports=10)
    first_user = make("first_user", NOW - 100)
    startups = [make("startup", NOW - 90 + i) for i in range(2)]
    periodics = [make("periodic", NOW - 80 + i) for i in range(3)]
    for entry in (first_user, *startups, *periodics):
        outbox.put(entry, NOW)
    # Walk the bound down one report at a time (storing a report again runs the
    # eviction without adding anything) and watch who goes.
    gone: list[str] = []
    for keep in range(5, 0, -1):
        before = set(ids(outbox))
        outbox_with(store, max_reports=keep).put(first_user, NOW)
        gone += sorted(before - set(ids(outbox)))
    assert gone == [p.report_id for p in periodics] + [s.report_id for s in startups]
    assert ids(outbox) == [first_user.report_id]
    assert store.counters("delivery.") == {"dropped": 5, "evicted": 5}


def test_the_byte_bound_evicts_until_the_rest_fits(store: Store, make: Maker) -> None:
    outbox = outbox_with(store, max_bytes=1024)
    entries = [make(size=400, at=NOW + i) for i in range(4)]
    for entry in entries:
        outbox.put(entry, NOW + 10)
    assert ids(outbox) == [entries[2].report_id, entries[3].report_id]
    assert outbox.size() == (2, 800)


def test_one_report_larger_than_the_byte_bound_is_still_kept(store: Store, make: Maker) -> None:
    outbox = outbox_with(store, max_bytes=1024)
    big = make("first_user", size=5000)
    outbox.put(big, NOW)
    assert ids(outbox) == [big.report_id]


def test_reports_past_the_age_bound_are_dropped_on_put_and_on_lease(
    store: Store, make: Maker
) -> None:
    outbox = outbox_with(store, max_age_days=7.0)
    old = make("periodic", NOW - 7 * DAY - 1)
    fresh = make("periodic", NOW - 7 * DAY + 60)
    outbox.put(old, NOW - 7 * DAY)  # fresh when stored
    outbox.put(fresh, NOW - 7 * DAY + 60)
    assert len(ids(outbox)) == 2
    outbox.put(make("periodic", NOW), NOW)  # a week later: the oldest is too old
    assert old.report_id not in ids(outbox)
    assert store.counters("delivery.") == {"dropped": 1, "evicted": 1}
    # Leasing at a later time drops what has aged since, before anything is sent.
    leased = outbox.lease(NOW + 120, hold=300)
    assert leased is not None and leased.report_id != fresh.report_id
    assert fresh.report_id not in ids(outbox)
    assert store.counters("delivery.") == {"dropped": 2, "evicted": 2}


def test_a_startup_or_first_user_report_no_export_wrote_outlives_the_age_bound(
    store: Store, make: Maker
) -> None:
    outbox = outbox_with(store, max_age_days=7.0)
    startup, first_user = make("startup", NOW - 9 * DAY), make("first_user", NOW - 9 * DAY)
    outbox.put(startup, NOW - 9 * DAY)
    outbox.put(first_user, NOW - 9 * DAY)
    outbox.put(make("periodic", NOW - 8 * DAY), NOW - 8 * DAY)
    outbox.put(make("periodic", NOW), NOW)
    assert outbox.lease(NOW + 1, hold=0) is not None
    assert [e.trigger for e in outbox.pending()] == ["startup", "first_user", "periodic"]

    outbox.mark_exported([startup.report_id, "no-such-report"], NOW, "/tmp/x.jsonl")
    assert outbox.unexported() == [first_user, *outbox.pending()[2:]]
    outbox.put(make("periodic", NOW + 1), NOW + 1)
    assert [e.trigger for e in outbox.pending()] == ["first_user", "periodic", "periodic"]
    assert store.run(lambda c: c.execute("SELECT count(*) FROM exports").fetchone()[0]) == 0, (
        "the mark of a report that has gone goes too"
    )


def test_eviction_spares_what_no_export_wrote_until_all_else_has_gone(
    store: Store, make: Maker
) -> None:
    outbox = outbox_with(store, max_reports=3)
    startup, first_user = make("startup"), make("first_user")
    exported_startup = make("startup")
    for entry in (startup, first_user, exported_startup):
        outbox.put(entry, NOW)
    outbox.mark_exported([exported_startup.report_id, first_user.report_id], NOW, "f")
    periodic = make("periodic")
    outbox.put(periodic, NOW)  # one too many: a periodic report goes first (this one)
    assert periodic.report_id not in ids(outbox)
    outbox.put(make("startup"), NOW)  # then the startup report an export wrote
    assert exported_startup.report_id not in ids(outbox)
    outbox.put(make("startup"), NOW)  # then the first-user report an export wrote
    assert first_user.report_id not in ids(outbox)
    assert startup.report_id in ids(outbox)


RANK = {"periodic": 0, "startup": 1, "first_user": 2}


@settings(max_examples=60, deadline=None)
@given(
    puts=st.lists(
        st.tuples(st.sampled_from(sorted(RANK)), st.integers(1, 700)), min_size=1, max_size=30
    ),
    max_reports=st.integers(1, 6),
)
def test_bounds_hold_and_each_eviction_takes_the_least_valuable_report(
    puts: list[tuple[str, int]], max_reports: int
) -> None:
    store = open_store(None)
    outbox = outbox_with(store, max_reports=max_reports, max_bytes=2048)
    make = Maker()
    evicted = 0
    for n, (trigger, size) in enumerate(puts):
        before = {e.report_id: e for e in outbox.pending()}
        entry = make(trigger, NOW + n, size)
        evicted += outbox.put(entry, NOW + n)
        after = {e.report_id: e for e in outbox.pending()}
        count, size_now = outbox.size()
        assert count == len(after)
        assert totals(store) == (count, size_now), "the running totals are the table's"
        assert count <= 1 or (count <= max_reports and size_now <= 2048)
        gone = [e for rid, e in {**before, entry.report_id: entry}.items() if rid not in after]
        # Whatever went was worth less than all that stayed: lower rank, or older.
        for lost in gone:
            for kept in after.values():
                assert (RANK[kept.trigger], kept.created_at) > (
                    RANK[lost.trigger],
                    lost.created_at,
                )
    assert store.counters("delivery.").get("evicted", 0) == evicted == len(puts) - outbox.size()[0]


# Leases, the gate and settling ----------------------------------------------------------


def test_a_lease_hands_out_the_oldest_due_report_once(
    tmp_path: Path, store: Store, make: Maker
) -> None:
    outbox = outbox_with(store)
    first, second = make(), make()
    outbox.put(second, NOW)
    outbox.put(first, NOW)
    other = open_store(tmp_path)  # another process of the installation
    other_outbox = outbox_with(other)
    got = outbox.lease(NOW, hold=300)
    assert got == first
    assert other_outbox.lease(NOW, hold=300) == second
    assert other_outbox.lease(NOW + 299, hold=300) is None
    # The holder died: after the hold the report is due again, for anyone.
    again = other_outbox.lease(NOW + 300, hold=300)
    assert again is not None and again.report_id == first.report_id
    other.close()


def test_a_released_lease_is_due_again_at_once(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry = make()
    outbox.put(entry, NOW)
    leased = outbox.lease(NOW, hold=300)
    assert leased is not None
    outbox.release(leased)
    assert outbox.pending() == [entry]
    assert outbox.next_due() == 0.0


def test_sent_forgets_the_report_counts_and_records_in_one_go(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry = make()
    outbox.put(entry, NOW)
    outbox.sent(entry, event(entry), {"delivery.retried": 2})
    assert outbox.pending() == []
    assert store.counters("delivery.") == {"retried": 2}
    assert [e.result for e in history.recent(store)] == ["sent"]


def test_every_outcome_keeps_the_exact_body_with_its_endpoint_and_sha256(
    store: Store, make: Maker
) -> None:
    outbox = Outbox(store, OutboxLimits(), endpoint="https://t.example/r")
    failed, sent, logged = make(size=30), make(size=40), make(size=50)
    for entry in (failed, sent, logged):
        outbox.put(entry, NOW)
    outbox.failed(failed, event(failed, "failed"), {}, lambda failures: NOW + 60)
    outbox.sent(sent, event(sent), {})
    outbox.logged(logged, event(logged, "logged"))
    kept = {s.report_id: s for s in history.kept(store)}
    assert {rid: (s.result, s.endpoint, s.body) for rid, s in kept.items()} == {
        failed.report_id: ("failed", "https://t.example/r", failed.body),
        sent.report_id: ("sent", "https://t.example/r", sent.body),
        logged.report_id: ("logged", "", logged.body),
    }
    assert kept[sent.report_id].sha256 == hashlib.sha256(sent.body).hexdigest()
    # The same report sent after it failed: one body, its latest outcome.
    outbox.sent(failed, event(failed), {})
    assert history.kept_report(store, str(failed.sequence)) == history.Sent(
        failed.report_id,
        failed.sequence,
        "periodic",
        NOW,
        "https://t.example/r",
        "sent",
        "test",
        hashlib.sha256(failed.body).hexdigest(),
        failed.body,
    )


# The drain rate -------------------------------------------------------------------------


def test_a_paced_outbox_leases_a_burst_per_window_and_says_when_the_next_is_due(
    store: Store, make: Maker
) -> None:
    outbox = Outbox(store, OutboxLimits(), pace=Pace(burst=3, window=60.0))
    for _ in range(8):
        outbox.put(make(), NOW)
    leased = [outbox.lease(NOW, hold=300) for _ in range(4)]
    assert [e is not None for e in leased] == [True, True, True, False]
    assert outbox.next_due(NOW) == NOW + 60
    assert outbox.lease(NOW + 59, hold=300) is None
    assert outbox.lease(NOW + 60, hold=300) is not None, "a new window"
    # Another process of the installation shares the window (it lives in the store).
    other = Outbox(store, OutboxLimits(), pace=Pace(burst=3, window=60.0))
    assert other.lease(NOW + 61, hold=300) is not None
    assert other.lease(NOW + 62, hold=300) is not None
    assert other.lease(NOW + 63, hold=300) is None
    # A clock set back starts a window of its own instead of waiting for the old one.
    assert outbox.lease(NOW - 3600, hold=300) is not None


def test_an_unpaced_outbox_leases_all_that_is_due(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    for _ in range(3 * DRAIN_BURST):
        outbox.put(make(), NOW)
    assert all(outbox.lease(NOW, hold=300) for _ in range(3 * DRAIN_BURST))
    assert store.get(PACE_KEY) is None


def test_rejected_forgets_the_report_as_a_counted_loss(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry = make()
    outbox.put(entry, NOW)
    outbox.rejected(entry, event(entry, "rejected"), {})
    assert outbox.pending() == []
    assert store.counters("delivery.") == {"dropped": 1, "rejected": 1}


def test_failed_keeps_the_report_and_closes_the_gate(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry, later = make(), make()
    outbox.put(entry, NOW)
    outbox.put(later, NOW)
    leased = outbox.lease(NOW, hold=300)
    assert leased == entry
    asked: list[int] = []

    def until(failures: int) -> float:
        asked.append(failures)
        return NOW + 100 * failures

    assert outbox.failed(entry, event(entry, "failed"), {}, until) == (1, NOW + 100)
    kept = outbox.pending()
    assert [(e.report_id, e.attempts, e.not_before) for e in kept] == [
        (entry.report_id, 1, NOW + 100),
        (later.report_id, 0, 0.0),
    ]
    # The gate holds back every report, not only the one that failed.
    assert outbox.lease(NOW + 99, hold=300) is None
    assert outbox.next_due() == NOW + 100
    assert outbox.gate() == NOW + 100
    assert store.counters("delivery.") == {"failed": 1}
    # A second failure in a row doubles nothing here but counts on.
    leased = outbox.lease(NOW + 100, hold=300)
    assert leased == Entry(entry.report_id, 1, "periodic", NOW, entry.body, 1, NOW + 100)
    assert outbox.failed(leased, event(leased, "failed"), {}, until)[0] == 2
    assert asked == [1, 2]
    # One success opens the gate and resets the run of failures.
    leased = outbox.lease(NOW + 200, hold=300)
    assert leased is not None
    outbox.sent(leased, event(leased), {})
    assert store.get(FAILURES_KEY) == "0" and store.get(GATE_KEY) == "0"
    assert outbox.lease(NOW + 200, hold=300) == later


def test_the_gate_survives_a_restart(tmp_path: Path, make: Maker) -> None:
    first = open_store(tmp_path)
    outbox = outbox_with(first)
    entry = make()
    outbox.put(entry, NOW)
    outbox.failed(entry, event(entry, "failed"), {}, lambda failures: NOW + 600)
    first.close()
    again = open_store(tmp_path)
    reopened = outbox_with(again)
    assert reopened.lease(NOW + 599, hold=300) is None
    assert reopened.next_due() == NOW + 600
    assert reopened.lease(NOW + 600, hold=300) is not None
    again.close()


def test_next_due_is_none_when_empty(store: Store) -> None:
    assert outbox_with(store).next_due() is None


def test_settling_is_one_transaction(store: Store, make: Maker) -> None:
    outbox = outbox_with(store)
    entry = make()
    outbox.put(entry, NOW)

    def broken(failures: int) -> float:
        raise sqlite3.OperationalError("disk vanished mid-way")

    with pytest.raises(sqlite3.OperationalError):
        outbox.failed(entry, event(entry, "failed"), {"delivery.retried": 1}, broken)
    # Nothing of the half-done settlement remains.
    assert outbox.pending() == [entry]
    assert store.counters("delivery.") == {}
    assert history.recent(store) == []


# On both backends -------------------------------------------------------------------------


def test_marks_retention_pace_and_kept_bodies_hold_on_each_backend(any_store: Store) -> None:
    make = Maker()
    outbox = Outbox(
        any_store,
        OutboxLimits(max_reports=4, max_age_days=7.0),
        endpoint="https://t.example/r",
        pace=Pace(burst=2, window=60.0),
    )
    startup, first_user = make("startup", NOW - 9 * DAY), make("first_user", NOW - 9 * DAY)
    outbox.put(startup, NOW - 9 * DAY)
    outbox.put(first_user, NOW - 9 * DAY)
    for n in range(4):
        outbox.put(make("periodic", NOW + n), NOW + n)
    assert [e.trigger for e in outbox.pending()][:2] == ["startup", "first_user"]
    outbox.mark_exported([startup.report_id], NOW, "f")
    assert outbox.unexported()[0].report_id == first_user.report_id
    outbox.put(make("periodic", NOW + 5), NOW + 5)
    assert startup.report_id not in ids(outbox), "exported, it ages out"
    leased = [outbox.lease(NOW + 10, hold=300) for _ in range(3)]
    assert leased[2] is None and outbox.next_due(NOW + 10) == NOW + 70
    first = leased[0]
    assert first is not None
    outbox.sent(first, event(first), {})
    [kept] = history.kept(any_store)
    assert (kept.body, kept.endpoint) == (first.body, "https://t.example/r")
    assert kept.sha256 == hashlib.sha256(first.body).hexdigest()
    assert history.digests(any_store) == {first.report_id: (kept.sha256, len(first.body))}
    assert totals(any_store) == outbox.size()


def test_totals_missing_from_an_older_state_are_counted_before_any_eviction(
    any_store: Store,
) -> None:
    make = Maker()
    outbox = outbox_with(any_store, max_reports=3)
    for n in range(3):
        outbox.put(make(at=NOW + n), NOW + n)
    any_store.run(lambda c: c.execute("DELETE FROM counters WHERE name LIKE 'outbox.%'"))
    outbox.put(make(at=NOW + 3), NOW + 3)
    assert ids(outbox) == ["r0002", "r0003", "r0004"]
    assert totals(any_store) == outbox.size() == (3, 30)
    # Totals that say less than the table holds: the next put still evicts what it must.
    any_store.run(lambda c: c.execute("DELETE FROM counters WHERE name LIKE 'outbox.%'"))
    entry = outbox.lease(NOW + 4, hold=300)
    assert entry is not None
    outbox.sent(entry, event(entry), {})
    assert totals(any_store) == outbox.size() == (2, 20)
