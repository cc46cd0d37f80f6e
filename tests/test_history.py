"""The history of delivery outcomes and the kept bodies of sent reports: newest first, and
trimmed so that neither grows unbounded."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phonehome_plugin.state import history
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.history import KEEP, Event, KeptLimits
from phonehome_plugin.state.store import Conn, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def event(n: int, result: str = "sent") -> Event:
    return Event(
        f"r{n}", n, "periodic", 1000.0 + n, result, f"HTTP {200 if result == 'sent' else 503}"
    )


def rows(store: Store) -> int:
    return int(store.run(lambda c: c.execute("SELECT count(*) FROM history").fetchone()[0]))


def test_recent_is_newest_first_and_limited(store: Store) -> None:
    for n in range(5):
        history.record(store, event(n, "failed" if n % 2 else "sent"))
    assert history.recent(store, limit=3) == [event(4), event(3, "failed"), event(2)]


def test_the_history_is_trimmed_to_the_newest_rows(store: Store) -> None:
    for n in range(KEEP + 250):
        history.record(store, event(n))
    assert rows(store) == KEEP
    kept = history.recent(store, limit=KEEP + 10)
    assert len(kept) == KEEP
    assert kept[0] == event(KEEP + 249)
    assert kept[-1] == event(250)


def test_the_history_survives_a_restart(tmp_path: Path, store: Store) -> None:
    history.record(store, event(1))
    store.close()
    again = open_store(tmp_path)
    assert history.recent(again) == [event(1)]
    again.close()


def test_append_belongs_to_the_callers_transaction(store: Store) -> None:
    def settle_then_fail(c: Conn) -> None:
        history.append(c, event(1))
        raise sqlite3.OperationalError("settlement failed after the history row")

    with pytest.raises(sqlite3.OperationalError):
        store.run(settle_then_fail)
    assert history.recent(store) == []
    store.run(lambda c: history.append(c, event(2)))
    assert history.recent(store) == [event(2)]


# The kept bodies of sent reports ----------------------------------------------------------

HOUR = 3600.0
DEFAULTS = KeptLimits()


def keep(
    store: Store, n: int, at: float, size: int = 2000, limits: KeptLimits = DEFAULTS
) -> bytes:
    body = b'{"sequence":%d,"pad":"' % n + b"x" * size + b'"}'
    sent = Event(f"r{n}", n, "periodic", at, "sent", "HTTP 202")
    store.run(lambda c: history.keep(c, sent, body, "https://t.example/r", limits))
    return body


def test_the_default_bounds_keep_at_least_30_days_of_hourly_reports(store: Store) -> None:
    # Hourly for 31 days, each 10 KiB (several times a typical report), with a
    # restart's startup report a day besides.
    for n in range(31 * 24):
        keep(store, n, 1000.0 + n * HOUR, size=10 * 1024)
    kept = history.digests(store)
    assert len(kept) == 31 * 24
    assert KeptLimits().max_reports >= 30 * 24 + 30 and KeptLimits().max_age_days >= 30


def test_each_bound_trims_the_oldest(store: Store) -> None:
    tight = KeptLimits(max_reports=3, max_bytes=10_000, max_age_days=1.0)
    for n in range(5):
        keep(store, n, 1000.0 + n, size=100, limits=tight)
    assert [s.sequence for s in history.kept(store)] == [4, 3, 2], "count"
    for n in range(5, 10):
        keep(store, n, 1000.0 + n, size=4000, limits=tight)
    assert [s.sequence for s in history.kept(store)] == [9, 8], "bytes"
    keep(store, 10, 1000.0 + 1.5 * 86400, size=100, limits=tight)
    assert [s.sequence for s in history.kept(store)] == [10], "age"
    keep(store, 11, 1000.0 + 1.5 * 86400, size=50_000, limits=tight)
    assert [s.sequence for s in history.kept(store)] == [11], "the newest stays, whatever its size"


def test_a_kept_report_is_found_by_sequence_id_or_last_with_the_one_before(store: Store) -> None:
    bodies = {n: keep(store, n, 1000.0 + n) for n in (1, 2, 5)}
    third = history.kept_report(store, "5")
    assert third is not None and third.body == bodies[5]
    assert third.sha256 == hashlib.sha256(bodies[5]).hexdigest()
    assert history.kept_report(store, "r2") == history.kept_before(store, 5)
    assert history.kept_report(store, "last") == third
    assert history.kept_report(store, "3") is None
    assert history.kept_before(store, 1) is None
    assert history.digests(store)["r1"] == (hashlib.sha256(bodies[1]).hexdigest(), len(bodies[1]))
