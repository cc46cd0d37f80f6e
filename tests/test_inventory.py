"""Tests for :mod:`phonehome_plugin.counting.inventory`: the installation's current entities."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from state_walk import strings_in

from phonehome_plugin.counting.inventory import (
    NODES_MAX,
    Entities,
    Inventory,
    Pipelines,
    TypedEntities,
    Users,
    entity_id,
    pipeline_value,
    user_value,
)
from phonehome_plugin.guard.privacy import _identifier

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-Passw0rd-do-not-keep"


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


# entity_id ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["c-1", "", 0, 42, -7, 2**70])
def test_entity_id_keeps_strings_and_ints(raw: str | int) -> None:
    assert entity_id(raw) == raw


@pytest.mark.parametrize("raw", [None, True, False, 1.0, b"c-1", ["c-1"], ("c",), {"id": 1}])
def test_entity_id_refuses_everything_else(raw: Any) -> None:
    assert entity_id(raw) is None


# Entities -------------------------------------------------------------------------------


def test_entities_save_is_idempotent_and_delete_of_unknown_changes_nothing() -> None:
    entities = Entities()
    entities.save("a")
    entities.save("a")
    entities.save("b")
    assert len(entities) == 2
    entities.delete("zzz")
    assert len(entities) == 2
    entities.delete("a")
    entities.delete("a")
    assert len(entities) == 1


def test_entities_replace_drops_what_was_known() -> None:
    entities = Entities()
    for key in ("a", "b", "c"):
        entities.save(key)
    entities.replace([("x", None), ("y", None), ("x", None)])
    assert len(entities) == 2
    entities.delete("a")
    assert len(entities) == 2
    entities.delete("x")
    assert len(entities) == 1


# TypedEntities (connections) ------------------------------------------------------------


def test_typed_entities_count_by_type() -> None:
    connections = TypedEntities()
    connections.save("c1", "mqtt")
    connections.save("c2", "mqtt")
    connections.save("c3", "opcua")
    assert connections.snapshot() == {"total": 3, "by_type": {"mqtt": 2, "opcua": 1}}


def test_typed_entities_duplicate_save_is_one_entity() -> None:
    connections = TypedEntities()
    for _ in range(3):
        connections.save("c1", "modbus")
    assert connections.snapshot() == {"total": 1, "by_type": {"modbus": 1}}


def test_typed_entities_type_change_moves_the_count() -> None:
    connections = TypedEntities()
    connections.save("c1", "mqtt")
    connections.save("c2", "mqtt")
    connections.save("c1", "s7")
    assert connections.snapshot() == {"total": 2, "by_type": {"mqtt": 1, "s7": 1}}
    connections.save("c2", "s7")
    # A type nobody has any more disappears instead of lingering at zero.
    assert connections.snapshot() == {"total": 2, "by_type": {"s7": 2}}


def test_typed_entities_delete() -> None:
    connections = TypedEntities()
    connections.save("c1", "mqtt")
    connections.save("c2", "rest")
    connections.delete("unknown")
    assert connections.snapshot() == {"total": 2, "by_type": {"mqtt": 1, "rest": 1}}
    connections.delete("c1")
    assert connections.snapshot() == {"total": 1, "by_type": {"rest": 1}}


def test_typed_entities_replace_resets_counts() -> None:
    connections = TypedEntities()
    connections.save("c1", "mqtt")
    connections.replace([("c2", "opcua"), ("c3", "opcua"), ("c2", "pubsub")])
    assert connections.snapshot() == {"total": 2, "by_type": {"opcua": 1, "pubsub": 1}}


def test_typed_entities_snapshot_is_sorted_and_a_copy() -> None:
    connections = TypedEntities()
    for key, kind in (("1", "s7"), ("2", "mqtt"), ("3", "opcua")):
        connections.save(key, kind)
    snapshot = connections.snapshot()
    assert list(snapshot["by_type"]) == ["mqtt", "opcua", "s7"]
    snapshot["by_type"]["mqtt"] = 99
    assert connections.snapshot()["by_type"]["mqtt"] == 1


# Pipelines ------------------------------------------------------------------------------


def test_pipeline_nodes_are_counted_over_enabled_and_disabled_pipelines() -> None:
    pipelines = Pipelines()
    pipelines.save("p1", pipeline_value(True, ["trigger.manual", "action.http", "action.http"]))
    pipelines.save("p2", pipeline_value(False, ["trigger.webhook", "action.http"]))
    pipelines.save("p3", pipeline_value(False, []))
    assert pipelines.snapshot() == {
        "total": 3,
        "enabled": 1,
        "nodes_by_type": {"action.http": 3, "trigger.manual": 1, "trigger.webhook": 1},
    }


def test_pipeline_update_replaces_its_previous_counts() -> None:
    pipelines = Pipelines()
    pipelines.save("p1", pipeline_value(True, ["trigger.manual", "action.http"]))
    pipelines.save("p1", pipeline_value(False, ["trigger.manual", "system.uns.publish"]))
    pipelines.save("p1", pipeline_value(False, ["trigger.manual", "system.uns.publish"]))
    assert pipelines.snapshot() == {
        "total": 1,
        "enabled": 0,
        "nodes_by_type": {"system.uns.publish": 1, "trigger.manual": 1},
    }


def test_pipeline_delete_removes_its_counts_and_unknown_delete_changes_nothing() -> None:
    pipelines = Pipelines()
    pipelines.save("p1", pipeline_value(True, ["a.b", "a.b"]))
    pipelines.save("p2", pipeline_value(True, ["a.b", "c.d"]))
    before = pipelines.snapshot()
    pipelines.delete("nope")
    assert pipelines.snapshot() == before
    pipelines.delete("p2")
    assert pipelines.snapshot() == {"total": 1, "enabled": 1, "nodes_by_type": {"a.b": 2}}
    pipelines.delete("p1")
    assert pipelines.snapshot() == {"total": 0, "enabled": 0, "nodes_by_type": {}}


def test_pipeline_replace_resets_counts() -> None:
    pipelines = Pipelines()
    pipelines.save("p1", pipeline_value(True, ["a.b"]))
    pipelines.replace([("p9", pipeline_value(False, ["x.y"]))])
    assert pipelines.snapshot() == {"total": 1, "enabled": 0, "nodes_by_type": {"x.y": 1}}


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False), ([True], False)],
)
def test_pipeline_value_enabled_only_when_exactly_true(enabled: Any, expected: bool) -> None:
    assert pipeline_value(enabled, [])[0] is expected


@pytest.mark.parametrize("node_types", [None, "trigger.manual", {"trigger.manual": 1}, 3, {"a.b"}])
def test_pipeline_value_ignores_node_types_that_are_not_a_list(node_types: Any) -> None:
    assert pipeline_value(True, node_types) == (True, Counter())


def test_pipeline_value_buckets_garbage_node_types_as_other() -> None:
    _, nodes = pipeline_value(
        True,
        [
            "trigger.manual",
            None,
            3,
            "has space",
            f"password={SECRET}",
            ["x"],
            "a/b",
            "trigger.manual",
        ],
    )
    assert nodes == Counter({"trigger.manual": 2, "other": 6})


# Users ----------------------------------------------------------------------------------


def test_user_value_needs_an_aware_datetime_and_an_email() -> None:
    assert user_value(T0, "alice@example.com") == (T0, "alice@example.com")
    assert user_value(T0.replace(tzinfo=None), "alice@example.com") is None
    assert user_value(T0.isoformat(), "alice@example.com") is None
    assert user_value(T0, "not an email") is None
    assert user_value(T0, "admin@localhost") == (T0, "admin@localhost")
    assert user_value(T0, None) is None
    assert user_value(None, None) is None


def test_user_value_accepts_any_aware_timezone() -> None:
    cet = T0.astimezone(timezone(timedelta(hours=1)))
    assert user_value(cet, "a@example.com") == (cet, "a@example.com")


def test_users_remember_the_earliest_ever_seen() -> None:
    users = Users()
    users.save("u2", (T0 + timedelta(days=1), "bob@example.com"))
    users.save("u1", (T0, "alice@example.com"))
    users.save("u3", (T0 + timedelta(days=2), "carol@example.com"))
    users.save("u4", None)
    assert len(users) == 4
    assert users.earliest == (T0, "alice@example.com")
    users.delete("u1")
    users.replace([("u9", (T0 + timedelta(days=9), "zed@example.com"))])
    # The earliest user the installation has known stays, even once deleted.
    assert len(users) == 1
    assert users.earliest == (T0, "alice@example.com")


def test_users_compare_creation_times_across_timezones() -> None:
    users = Users()
    later_in_utc = datetime(2024, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=-5)))
    users.save("u1", (later_in_utc, "a@example.com"))
    users.save("u2", (T0 + timedelta(hours=1), "b@example.com"))
    assert users.earliest == (T0 + timedelta(hours=1), "b@example.com")


def test_users_keep_no_value_per_user() -> None:
    users = Users()
    users.save("u1", (T0, "alice@example.com"))
    users.save("u2", (T0 + timedelta(days=1), "bob@example.com"))
    assert "bob@example.com" not in strings_in(users)


# Inventory.sync -------------------------------------------------------------------------


def test_sync_replaces_each_module(inventory: Inventory) -> None:
    inventory.connections.save("old", "mqtt")
    inventory.pipelines.save("old", pipeline_value(True, ["a.b"]))
    inventory.organizations.save("old")
    inventory.data_models.save("old")
    inventory.users.save("old", None)

    assert inventory.sync("connections", [{"id": "c1", "type": "opcua"}, {"id": 2, "type": "s7"}])
    assert inventory.sync("pipelines", [{"id": "p1", "enabled": False, "node_types": ["x.y"]}])
    assert inventory.sync("organizations", [{"id": "o1"}, {"id": "o2"}, {"id": "o1"}])
    assert inventory.sync("data_models", [])
    assert inventory.sync(
        "users",
        [
            {"id": "u1", "email": "alice@example.com", "created_at": T0},
            {"id": "u2", "email": "bob@example.com", "created_at": T0 - timedelta(days=1)},
        ],
    )

    assert inventory.connections.snapshot() == {"total": 2, "by_type": {"opcua": 1, "s7": 1}}
    assert inventory.pipelines.snapshot() == {
        "total": 1,
        "enabled": 0,
        "nodes_by_type": {"x.y": 1},
    }
    assert len(inventory.organizations) == 2
    assert len(inventory.data_models) == 0
    assert len(inventory.users) == 2
    assert inventory.users.earliest == (T0 - timedelta(days=1), "bob@example.com")


def test_sync_accepts_a_tuple_of_items(inventory: Inventory) -> None:
    assert inventory.sync("organizations", ({"id": "o1"},))
    assert len(inventory.organizations) == 1


@pytest.mark.parametrize("items", [None, "abc", {"id": "x"}, 3, {"a", "b"}])
def test_sync_with_items_that_are_not_a_list_changes_nothing(
    inventory: Inventory, items: Any
) -> None:
    inventory.connections.save("c1", "mqtt")
    assert inventory.sync("connections", items) is False
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}


@pytest.mark.parametrize(
    "module", ["Connections", "widgets", "", None, 3, ["connections"], {"m": 1}, {"connections"}]
)
def test_sync_of_an_unknown_module_changes_nothing(inventory: Inventory, module: Any) -> None:
    inventory.connections.save("c1", "mqtt")
    assert inventory.sync(module, [{"id": "c2", "type": "s7"}]) is False
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}


def test_sync_skips_rows_that_are_not_mappings_or_lack_a_usable_id(inventory: Inventory) -> None:
    rows = [
        {"id": "c1", "type": "mqtt"},
        "c2",
        None,
        ["c3", "mqtt"],
        {"type": "mqtt"},
        {"id": None, "type": "mqtt"},
        {"id": 1.5, "type": "mqtt"},
        {"id": True, "type": "mqtt"},
        {"id": ["c4"], "type": "mqtt"},
    ]
    assert inventory.sync("connections", rows) is True
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}


def test_sync_buckets_garbage_connection_types_as_other(inventory: Inventory) -> None:
    rows = [
        {"id": 1, "type": "mqtt"},
        {"id": 2, "type": None},
        {"id": 3},
        {"id": 4, "type": 17},
        {"id": 5, "type": "Bearer abcdef"},
        {"id": 6, "type": ["mqtt"]},
        {"id": 7, "type": "x" * 65},
    ]
    inventory.sync("connections", rows)
    assert inventory.connections.snapshot() == {"total": 7, "by_type": {"mqtt": 1, "other": 6}}


def test_sync_never_keeps_extra_fields(inventory: Inventory) -> None:
    extra = {
        "password": SECRET,
        "config": {"url": f"mqtt://admin:{SECRET}@broker:1883"},
        "name": "Plant 7 line B",
        "owner": {"email": "owner@example.com"},
    }
    inventory.sync("connections", [{"id": "c1", "type": "mqtt", **extra}])
    inventory.sync("pipelines", [{"id": "p1", "enabled": True, "node_types": ["a.b"], **extra}])
    inventory.sync("organizations", [{"id": "o1", **extra}])
    inventory.sync("data_models", [{"id": "d1", **extra}])
    inventory.sync(
        "users", [{"id": "u1", "email": "alice@example.com", "created_at": T0, **extra}]
    )
    # The host's rows are read on the worker (the host's thread only hands them over);
    # once read, nothing of them is kept but what is counted.
    inventory.settle()
    strings = strings_in(inventory)
    assert "mqtt" in strings  # the walk reaches what is kept
    assert "alice@example.com" in strings  # the one personal value kept, as first email
    for text in strings:
        assert SECRET not in text
        assert "Plant 7" not in text
        assert "owner@example.com" not in text


def test_a_sync_costs_the_hosts_thread_the_same_at_any_size(inventory: Inventory) -> None:
    rows: list[dict[str, object]] = [{"id": f"p{n}", "enabled": True} for n in range(10_000)]
    assert inventory.sync("pipelines", rows)
    # Nothing was read yet: the rows are the host's, by reference, until the worker
    # reads them; saves and deletes made meanwhile apply on top, in order.
    rows.append({"id": "late", "enabled": False})  # the host's list, changed after
    inventory.pipelines.save("p1", pipeline_value(False, ["a.b"]))
    inventory.pipelines.delete("p2")
    inventory.pipelines.save("extra", pipeline_value(True, []))
    snapshot = inventory.pipelines.snapshot()  # reads the sync, then replays
    assert snapshot["total"] == 10_000 + 1 - 1 + 1
    assert snapshot["enabled"] == 10_000 - 2 + 1
    assert snapshot["nodes_by_type"] == {"a.b": 1}


def test_a_newer_sync_wins_over_one_still_pending(inventory: Inventory) -> None:
    inventory.sync("connections", [{"id": "c1", "type": "mqtt"}])
    inventory.sync("connections", [{"id": "c2", "type": "s7"}])
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"s7": 1}}
    replaced, changes, fresh = inventory.connections.take_changes()
    assert replaced and changes == [("c2", "s7")] and fresh == set()


def test_after_fork_replaces_every_lock(inventory: Inventory) -> None:
    groups = [
        inventory.users,
        inventory.connections,
        inventory.pipelines,
        inventory.organizations,
        inventory.data_models,
    ]
    for entities in groups:
        assert entities.lock.acquire(timeout=1)  # held by a thread the fork left behind
    inventory.after_fork()
    done = threading.Event()

    def use_everything() -> None:
        inventory.connections.save("c", "mqtt")
        inventory.pipelines.save("p", pipeline_value(True, []))
        inventory.users.save("u", None)
        inventory.organizations.save("o")
        inventory.data_models.save("d")
        done.set()

    worker = threading.Thread(target=use_everything, daemon=True)
    worker.start()
    assert done.wait(5), "a lock copied while held was not replaced"
    assert all(len(entities) == 1 for entities in groups)


# Bounded work per signal argument -------------------------------------------------------


def test_pipeline_value_reads_at_most_nodes_max_node_types_and_counts_the_rest_as_other() -> None:
    many = [f"kind.n{i}" for i in range(NODES_MAX + 5_000)]
    _, nodes = pipeline_value(True, many)
    assert len(nodes) == NODES_MAX + 1, "distinct types per pipeline are bounded"
    assert sum(nodes.values()) == len(many), "every node still counts"
    assert nodes["other"] == 5_000
    assert nodes["kind.n0"] == 1 and "kind.n" + str(NODES_MAX) not in nodes


def test_pipeline_value_of_nodes_max_node_types_counts_each_by_type() -> None:
    exactly = [f"kind.n{i}" for i in range(NODES_MAX)]
    assert pipeline_value(True, exactly)[1] == Counter(exactly)


def test_huge_strings_in_a_sync_are_refused_by_their_length_and_never_cached(
    inventory: Inventory,
) -> None:
    huge = "x" * 10_000_000
    cached = _identifier.cache_info().currsize
    assert inventory.sync("connections", [{"id": "c1", "type": huge}])
    assert inventory.sync(
        "users", [{"id": "u1", "email": huge + "@example.com", "created_at": T0}]
    )
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"other": 1}}
    assert len(inventory.users) == 1 and inventory.users.earliest is None
    assert _identifier.cache_info().currsize == cached


def test_clear_keeps_nothing_the_host_gave(inventory: Inventory) -> None:
    inventory.sync("connections", [{"id": "c-secret-id", "type": "mqtt"}])
    inventory.sync("connections", [{"id": "c-other-id", "type": "s7"}])  # one unread
    inventory.pipelines.save("p1", pipeline_value(True, ["acme.node-type"]))
    inventory.users.save("u1", (T0, "first@example.com"))
    inventory.clear()
    for text in strings_in(inventory):
        assert not any(s in text for s in ("secret-id", "other-id", "acme.node", "first@"))
    assert len(inventory.connections) == 0 and inventory.users.earliest is None
