"""The installation's entities in its shared state (:mod:`phonehome_plugin.state.entities`),
on each backend: one process's changes by key, a sync replacing a module, the UNS and
license states, and nothing of a local id kept as it is."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_support import Opener

from phonehome_plugin.counting.inventory import InstallationCounts, Inventory, pipeline_value
from phonehome_plugin.state import entities
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import Store


@pytest.fixture
def opener(any_opener: Opener) -> Opener:
    return any_opener


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def _fold(store: Store, inventory: Inventory, at: float = 0.0) -> None:
    """What the worker does with one process's changes, known as of ``at``."""
    rows = inventory.take_changes().rows()

    def work(c: object) -> None:
        for module, (replaced, module_rows) in rows.items():
            entities.apply(c, module, replaced, module_rows, at)  # type: ignore[arg-type]

    store.run(work)


def _installation(store: Store) -> InstallationCounts:
    """The installation as reports count it, checked against its rows one by one."""
    counted = InstallationCounts(store.run(entities.counts), {})
    modules, _ = store.run(entities.load)
    assert _summary(counted) == _summary(Inventory.from_state(modules, {}))
    return counted


def _summary(inventory: Inventory | InstallationCounts) -> tuple[object, ...]:
    return (
        len(inventory.users),
        len(inventory.organizations),
        len(inventory.data_models),
        inventory.connections.snapshot(),
        inventory.pipelines.snapshot(),
    )


def test_changes_of_two_processes_add_up_by_key(opener: Opener) -> None:
    one, two = opener(), opener()
    first, second = Inventory(), Inventory()
    first.connections.save("c1", "mqtt")
    first.connections.save("c2", "opcua")
    second.connections.save("c3", "s7")
    second.connections.save("c1", "mqtt")  # the same entity, known to both
    first.pipelines.save("p1", pipeline_value(True, ["trigger.manual", "action.http"]))
    _fold(one, first)
    _fold(two, second)
    whole = _installation(one)
    assert whole.connections.snapshot() == {
        "total": 3,
        "by_type": {"mqtt": 1, "opcua": 1, "s7": 1},
    }
    assert whole.pipelines.snapshot() == {
        "total": 1,
        "enabled": 1,
        "nodes_by_type": {"action.http": 1, "trigger.manual": 1},
    }
    # A delete in either process removes it for the installation.
    second.connections.delete("c2")
    _fold(two, second)
    assert _installation(one).connections.snapshot()["total"] == 2


def test_a_sync_in_any_process_replaces_the_module(store: Store) -> None:
    saved, synced = Inventory(), Inventory()
    saved.connections.save("old", "mqtt")
    _fold(store, saved, at=10.0)
    synced.sync("connections", [{"id": "n1", "type": "s7"}, {"id": "n2", "type": "s7"}])
    _fold(store, synced, at=20.0)  # the sync came after "old" was saved: it is gone
    assert _installation(store).connections.snapshot() == {"total": 2, "by_type": {"s7": 2}}


def test_a_late_sync_undoes_nothing_another_process_changed_since(opener: Opener) -> None:
    one, two = opener(), opener()
    early, other = Inventory(), Inventory()
    early.sync("connections", [{"id": "n1", "type": "s7"}])  # at its start, 100
    other.connections.save("n2", "mqtt")  # saved at 150, carried over at 160
    other.connections.save("n1", "opcua")  # changed after the early sync too
    _fold(two, other, at=160.0)
    _fold(one, early, at=100.0)  # reaches the state only now (it was unreachable)
    assert _installation(one).connections.snapshot() == {
        "total": 2,
        "by_type": {"mqtt": 1, "opcua": 1},
    }


BIG = 2 * entities._ROWS_AT_ONCE + 17
"""More rows than two parts hold: every boundary of the part-wise work is crossed."""


def test_a_sync_larger_than_a_part_replaces_the_module_whole(store: Store) -> None:
    first, second = Inventory(), Inventory()
    first.sync("connections", [{"id": f"c{i}", "type": "mqtt"} for i in range(BIG)])
    _fold(store, first, at=10.0)
    assert _installation(store).connections.snapshot() == {"total": BIG, "by_type": {"mqtt": BIG}}
    # Half of them again, of another type; the rest are gone.
    second.sync("connections", [{"id": f"c{i}", "type": "s7"} for i in range(0, BIG, 2)])
    _fold(store, second, at=20.0)
    kept = len(range(0, BIG, 2))
    assert _installation(store).connections.snapshot() == {"total": kept, "by_type": {"s7": kept}}


class Recording:
    """A transaction's connection that records each statement, and how many rows each
    ``executemany`` writes."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.batches: list[int] = []
        self.sql: list[str] = []

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        self.batches.append(1)
        self.sql.append(sql)
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        self.batches.append(len(rows))
        self.sql.append(sql)
        return self.conn.executemany(sql, rows)


def _pipelines(prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "enabled": True, "node_types": ["a.b"]} for i in range(BIG)]


def _record_fold(store: Store, inventory: Inventory, at: float) -> Recording:
    """:func:`_fold`, through a :class:`Recording` of the transaction's connection (of
    its last attempt, should it have run more than once)."""
    rows = inventory.take_changes().rows()
    seen: list[Recording] = []

    def work(c: Any) -> None:
        recording = Recording(c)
        seen.append(recording)
        for module, (replaced, module_rows) in rows.items():
            entities.apply(recording, module, replaced, module_rows, at)

    store.run(work)
    return seen[-1]


def test_no_statement_of_a_whole_sync_grows_with_the_module(store: Store) -> None:
    """A fork waits for the statement in progress, and a transaction gives way to it
    only at its next statement: neither may grow with the installation."""
    first, second = Inventory(), Inventory()
    first.sync("pipelines", _pipelines("p"))
    _fold(store, first, at=10.0)
    second.sync("pipelines", _pipelines("q"))  # every one new, every old one gone
    recorded = _record_fold(store, second, 20.0)
    assert max(recorded.batches) <= entities._ROWS_AT_ONCE
    # The rows the sync replaces are deleted a part at a time too (each returns its
    # values, for the counts): three statements for BIG rows, the last one short.
    deletes = [sql for sql in recorded.sql if sql == entities._DELETE_KNOWN_BEFORE]
    assert len(deletes) == -(-BIG // entities._ROWS_AT_ONCE)
    assert _installation(store).pipelines.snapshot()["total"] == BIG


def test_a_sync_of_an_unchanged_module_only_moves_its_moments_on(store: Store) -> None:
    first, second, later = Inventory(), Inventory(), Inventory()
    first.sync("pipelines", _pipelines("p"))
    _fold(store, first, at=10.0)
    before = _installation(store).pipelines.snapshot()
    second.sync("pipelines", _pipelines("p"))
    recorded = _record_fold(store, second, 20.0)
    assert entities._UPSERT not in recorded.sql and entities._MOVE_ON in recorded.sql
    assert _installation(store).pipelines.snapshot() == before
    # Moved on: a deletion another process made between the two syncs gives way to
    # the later sync that named the pipeline.
    later.pipelines.delete("p3")
    _fold(store, later, at=15.0)
    assert _installation(store).pipelines.snapshot() == before


def test_no_local_id_and_no_email_is_kept_as_it_is(store: Store) -> None:
    from datetime import UTC, datetime

    inventory = Inventory()
    inventory.users.save("user-7f3a", (datetime(2026, 1, 1, tzinfo=UTC), "alice@example.com"))
    inventory.connections.save("conn-secret-id", "mqtt")
    _fold(store, inventory)
    rows = store.run(lambda c: c.execute("SELECT module, key, value FROM entities").fetchall())
    text = repr(rows)
    assert "user-7f3a" not in text and "conn-secret-id" not in text
    assert "alice" not in text
    counted = repr(store.run(lambda c: c.execute("SELECT * FROM entity_counts").fetchall()))
    assert "user-7f3a" not in counted and "conn-secret-id" not in counted
    assert "alice" not in counted
    assert len(_installation(store).users) == 1  # counted, nothing more


def test_changes_that_could_not_be_stored_go_next_time() -> None:
    inventory = Inventory()
    inventory.connections.save("c1", "mqtt")
    taken = inventory.take_changes()
    assert taken and not inventory.take_changes()
    inventory.give_back(taken)
    again = inventory.take_changes()
    assert again.modules == {"connections": (False, [("c1", "mqtt")])}


def test_states_are_taken_once_per_change() -> None:
    inventory = Inventory()
    inventory.uns = {"topic_count": 4}
    assert inventory.take_changes().states == {"uns": {"topic_count": 4}}
    assert not inventory.take_changes()
    inventory.uns = {"topic_count": 5}
    assert inventory.take_changes().states == {"uns": {"topic_count": 5}}
    assert Counter(inventory.take_changes().states) == Counter()


_OPS = st.lists(
    st.tuples(
        st.integers(0, 1),  # which process
        st.sampled_from(["save", "delete", "sync", "fold"]),
        st.integers(0, 5),  # which entity
        st.sampled_from(["mqtt", "s7", "opcua"]),
        st.floats(0.0, 100.0),  # the fold's moment: folds reach the state in any order
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_the_kept_counts_are_always_the_rows_counted(
    ops: list[tuple[int, str, int, str, float]],
) -> None:
    store = open_store(None)
    processes = [Inventory(), Inventory()]
    for who, op, n, kind, at in ops:
        inventory = processes[who]
        if op == "save":
            inventory.connections.save(f"c{n}", kind)
            inventory.pipelines.save(f"p{n}", pipeline_value(n % 2 == 0, [kind] * n))
        elif op == "delete":
            inventory.connections.delete(f"c{n}")
            inventory.pipelines.delete(f"p{n}")
        elif op == "sync":
            inventory.sync("connections", [{"id": f"c{i}", "type": kind} for i in range(n)])
        else:
            _fold(store, inventory, at)
    _installation(store)  # asserts the counts against the rows
    store.close()


def test_a_state_from_before_the_counts_is_counted_from_its_rows_then_built(
    store: Store,
) -> None:
    process = Inventory()
    for n in range(3):
        process.connections.save(f"c{n}", "mqtt")
    _fold(store, process)
    store.run(lambda c: c.execute("DELETE FROM entity_counts"))
    store.run(lambda c: c.execute("DELETE FROM kv WHERE key = ?", (entities.BUILT_KEY,)))
    assert _installation(store).connections.snapshot()["total"] == 3  # from the rows
    process.connections.save("c9", "s7")
    _fold(store, process)  # the first write builds the counts, then adds its own
    assert store.get(entities.BUILT_KEY) == "1"
    assert _installation(store).connections.snapshot() == {
        "total": 4,
        "by_type": {"mqtt": 3, "s7": 1},
    }
