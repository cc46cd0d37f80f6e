"""The history of delivery outcomes: newest first, and trimmed so it never grows unbounded."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phonehome_plugin.state import history
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.history import KEEP, Event
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
