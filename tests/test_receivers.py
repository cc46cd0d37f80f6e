"""Tests for :mod:`phonehome_plugin.counting.receivers`, driven through the real blinker
signals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from state_walk import strings_in

from hookspecs import signals
from phonehome_plugin.counting import receivers
from phonehome_plugin.counting.inventory import NODES_MAX, Inventory
from phonehome_plugin.counting.riders import Builtin
from phonehome_plugin.counting.tally import ExecutionTally

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "Zq9-very-secret-passw0rd"


class FakeApp:
    """The sender of every signal; only its identity matters."""


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def tally() -> ExecutionTally:
    return ExecutionTally()


@pytest.fixture
def builtins(inventory: Inventory, tally: ExecutionTally) -> list[Builtin]:
    return receivers.builtin_receivers(inventory, tally)


@pytest.fixture
def pairs(builtins: list[Builtin]) -> list[receivers.Pair]:
    return [(own.signal, own.receiver) for own in builtins]


@pytest.fixture
def connected(app: FakeApp, builtins: list[Builtin]) -> Iterator[list[receivers.Pair]]:
    """The built-in receivers connected to the real signals for ``app``."""
    done = list(receivers.connect_all(builtins, app))
    yield done
    receivers.disconnect_all(builtins)


def _secret_extras() -> dict[str, Any]:
    """What a host may pass along beyond the contract's arguments."""
    return {
        "password": SECRET,
        "connection": {"url": f"opc.tcp://admin:{SECRET}@plc:4840", "token": SECRET},
        "workflow": {"script": f"print('{SECRET}')"},
        "user": {"email": "private.person@example.com", "name": "Private Person"},
        "payload": [SECRET, {"nested": SECRET}],
    }


# Wiring ---------------------------------------------------------------------------------


def test_builtin_receivers_cover_every_signal_once(pairs: list[receivers.Pair]) -> None:
    assert [signal for signal, _ in pairs] == list(signals.ALL)
    assert all(callable(receiver) for _, receiver in pairs)


def test_execution_finished_goes_to_the_tally(
    pairs: list[receivers.Pair], tally: ExecutionTally
) -> None:
    assert dict(pairs)[signals.execution_finished] is tally.receiver


def test_connect_all_connects_each_pair_for_the_sender(
    app: FakeApp, pairs: list[receivers.Pair], connected: list[receivers.Pair]
) -> None:
    assert connected == pairs
    for signal, receiver in pairs:
        assert signal.has_receivers_for(app)
        assert receiver in [r for r in signal.receivers_for(app)]


def test_connect_all_is_lazy_until_consumed(
    app: FakeApp, builtins: list[Builtin], inventory: Inventory
) -> None:
    pending = receivers.connect_all(builtins, app)
    signals.organization_saved.send(app, id="o1")
    assert len(inventory.organizations) == 0
    list(pending)
    try:
        signals.organization_saved.send(app, id="o1")
        assert len(inventory.organizations) == 1
    finally:
        receivers.disconnect_all(builtins)


def test_disconnect_all_stops_updates_and_is_safe_twice(
    app: FakeApp,
    builtins: list[Builtin],
    pairs: list[receivers.Pair],
    inventory: Inventory,
    tally: ExecutionTally,
) -> None:
    before = {signal: set(signal.receivers) for signal, _ in pairs}
    list(receivers.connect_all(builtins, app))
    assert all(set(signal.receivers) > before[signal] for signal, _ in pairs)
    signals.connection_saved.send(app, id="c1", type="mqtt")
    receivers.disconnect_all(builtins)
    receivers.disconnect_all(builtins)
    signals.connection_saved.send(app, id="c2", type="mqtt")
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}
    assert tally.totals()["completed"] == 0
    # Gone from every sender, not only ``app``: nothing keeps the receivers alive.
    assert all(set(signal.receivers) == before[signal] for signal, _ in pairs)


@pytest.mark.usefixtures("connected")
def test_signals_from_another_sender_are_ignored(inventory: Inventory) -> None:
    stranger = FakeApp()
    signals.connection_saved.send(stranger, id="c1", type="mqtt")
    signals.inventory_synced.send(stranger, module="organizations", items=[{"id": 1}])
    assert len(inventory.connections) == 0
    assert len(inventory.organizations) == 0


# inventory-synced -----------------------------------------------------------------------


@pytest.mark.usefixtures("connected")
def test_inventory_synced_replaces_what_was_known(app: FakeApp, inventory: Inventory) -> None:
    signals.connection_saved.send(app, id="c1", type="mqtt")
    signals.connection_saved.send(app, id="c2", type="opcua")
    signals.inventory_synced.send(
        app, module="connections", items=[{"id": "c3", "type": "s7"}, {"id": "c4", "type": "s7"}]
    )
    assert inventory.connections.snapshot() == {"total": 2, "by_type": {"s7": 2}}
    signals.connection_deleted.send(app, id="c1")  # known before the sync only
    assert inventory.connections.snapshot() == {"total": 2, "by_type": {"s7": 2}}


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize(
    ("module", "saved", "synced"),
    [
        ("organizations", signals.organization_saved, [{"id": "o9"}]),
        ("data_models", signals.data_model_saved, [{"id": "d9"}]),
    ],
)
def test_inventory_synced_replaces_plain_modules(
    app: FakeApp, inventory: Inventory, module: str, saved: Any, synced: list[dict[str, Any]]
) -> None:
    saved.send(app, id="a")
    saved.send(app, id="b")
    signals.inventory_synced.send(app, module=module, items=synced)
    assert len(getattr(inventory, module)) == 1


@pytest.mark.usefixtures("connected")
def test_inventory_synced_pipelines_and_users(app: FakeApp, inventory: Inventory) -> None:
    signals.pipeline_saved.send(app, id="old", enabled=True, node_types=["a.b"])
    signals.inventory_synced.send(
        app,
        module="pipelines",
        items=[
            {"id": "p1", "enabled": True, "node_types": ["trigger.manual", "action.http"]},
            {"id": "p2", "enabled": False, "node_types": ["trigger.webhook", "action.http"]},
        ],
    )
    assert inventory.pipelines.snapshot() == {
        "total": 2,
        "enabled": 1,
        "nodes_by_type": {"action.http": 2, "trigger.manual": 1, "trigger.webhook": 1},
    }
    signals.inventory_synced.send(
        app,
        module="users",
        items=[
            {"id": 1, "email": "b@example.com", "created_at": T0 + timedelta(hours=1)},
            {"id": 2, "email": "a@example.com", "created_at": T0},
        ],
    )
    assert len(inventory.users) == 2
    assert inventory.users.earliest == (T0, "a@example.com")


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize(
    ("module", "items"),
    [
        ("widgets", [{"id": 1}]),
        (["connections"], [{"id": 1}]),
        ({"connections": 1}, [{"id": 1}]),
        (None, [{"id": 1}]),
        ("connections", None),
        ("connections", "c9"),
        ("connections", {"id": "c9", "type": "s7"}),
    ],
)
def test_inventory_synced_with_garbage_changes_nothing_and_never_raises(
    app: FakeApp, inventory: Inventory, module: Any, items: Any
) -> None:
    signals.connection_saved.send(app, id="c1", type="mqtt")
    signals.inventory_synced.send(app, module=module, items=items)
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}


@pytest.mark.usefixtures("connected")
def test_inventory_synced_without_arguments_is_ignored(app: FakeApp, inventory: Inventory) -> None:
    signals.organization_saved.send(app, id="o1")
    signals.inventory_synced.send(app)
    assert len(inventory.organizations) == 1


# saved / deleted ------------------------------------------------------------------------


SAVED_DELETED = [
    ("organizations", signals.organization_saved, signals.organization_deleted, {}),
    ("data_models", signals.data_model_saved, signals.data_model_deleted, {}),
    ("connections", signals.connection_saved, signals.connection_deleted, {"type": "mqtt"}),
    (
        "pipelines",
        signals.pipeline_saved,
        signals.pipeline_deleted,
        {"enabled": True, "node_types": ["trigger.manual"]},
    ),
]


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize(("module", "saved", "deleted", "args"), SAVED_DELETED)
def test_duplicate_saves_are_one_entity(
    app: FakeApp, inventory: Inventory, module: str, saved: Any, deleted: Any, args: dict[str, Any]
) -> None:
    for _ in range(3):
        saved.send(app, id="x1", **args)
    saved.send(app, id="x2", **args)
    assert len(getattr(inventory, module)) == 2


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize(("module", "saved", "deleted", "args"), SAVED_DELETED)
def test_delete_of_an_unknown_id_changes_nothing(
    app: FakeApp, inventory: Inventory, module: str, saved: Any, deleted: Any, args: dict[str, Any]
) -> None:
    entities = getattr(inventory, module)
    saved.send(app, id="x1", **args)
    snapshot = entities.snapshot() if hasattr(entities, "snapshot") else None
    for unknown in ("nope", 7, None, ["x1"], True):
        deleted.send(app, id=unknown)
    deleted.send(app)
    assert len(entities) == 1
    if snapshot is not None:
        assert entities.snapshot() == snapshot
    deleted.send(app, id="x1")
    deleted.send(app, id="x1")
    assert len(entities) == 0


@pytest.mark.usefixtures("connected")
def test_user_deleted_removes_a_known_user_only(app: FakeApp, inventory: Inventory) -> None:
    receivers.record_user(inventory, {"id": "u1", "email": "a@example.com", "created_at": T0})
    signals.user_deleted.send(app, id="u2")
    assert len(inventory.users) == 1
    signals.user_deleted.send(app, id="u1")
    assert len(inventory.users) == 0
    assert inventory.users.earliest == (T0, "a@example.com")


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize("bad_id", [None, True, 1.5, ["x"], {"id": "x"}, b"x"])
def test_saves_without_a_usable_id_are_ignored(
    app: FakeApp, inventory: Inventory, bad_id: Any
) -> None:
    signals.connection_saved.send(app, id=bad_id, type="mqtt")
    signals.pipeline_saved.send(app, id=bad_id, enabled=True, node_types=["a.b"])
    signals.organization_saved.send(app, id=bad_id)
    signals.data_model_saved.send(app, id=bad_id)
    assert len(inventory.connections) == 0
    assert len(inventory.pipelines) == 0
    assert len(inventory.organizations) == 0
    assert len(inventory.data_models) == 0


@pytest.mark.usefixtures("connected")
def test_connection_type_change_moves_its_count(app: FakeApp, inventory: Inventory) -> None:
    signals.connection_saved.send(app, id="c1", type="mqtt")
    signals.connection_saved.send(app, id="c2", type="mqtt")
    signals.connection_saved.send(app, id="c1", type="modbus")
    assert inventory.connections.snapshot() == {
        "total": 2,
        "by_type": {"modbus": 1, "mqtt": 1},
    }
    signals.connection_saved.send(app, id="c2", type="modbus")
    assert inventory.connections.snapshot() == {"total": 2, "by_type": {"modbus": 2}}


@pytest.mark.usefixtures("connected")
def test_pipeline_node_counts_over_enabled_and_disabled_pipelines(
    app: FakeApp, inventory: Inventory
) -> None:
    signals.pipeline_saved.send(
        app, id="p1", enabled=True, node_types=["trigger.manual", "action.http", "action.http"]
    )
    signals.pipeline_saved.send(
        app, id="p2", enabled=False, node_types=["trigger.webhook", "system.uns.publish"]
    )
    signals.pipeline_saved.send(app, id="p3", enabled=False, node_types=["action.http"])
    assert inventory.pipelines.snapshot() == {
        "total": 3,
        "enabled": 1,
        "nodes_by_type": {
            "action.http": 3,
            "system.uns.publish": 1,
            "trigger.manual": 1,
            "trigger.webhook": 1,
        },
    }
    # Disabling a pipeline keeps its nodes counted; changing its nodes moves them.
    signals.pipeline_saved.send(app, id="p1", enabled=False, node_types=["trigger.manual"])
    signals.pipeline_deleted.send(app, id="p3")
    assert inventory.pipelines.snapshot() == {
        "total": 2,
        "enabled": 0,
        "nodes_by_type": {"system.uns.publish": 1, "trigger.manual": 1, "trigger.webhook": 1},
    }


# Garbage types --------------------------------------------------------------------------


GARBAGE_TYPES = [
    None,
    42,
    ["mqtt"],
    {"type": "mqtt"},
    "",
    "has space",
    "mqtt://broker:1883",
    f"api_key={SECRET}",
    "someone@example.com",
    "/etc/passwd",
    "ABCDEF0123456789ABCDEF0123456789ABCDEF",
]


@pytest.mark.usefixtures("connected")
def test_garbage_connection_types_are_counted_as_other(app: FakeApp, inventory: Inventory) -> None:
    for index, kind in enumerate(GARBAGE_TYPES):
        signals.connection_saved.send(app, id=index, type=kind)
    signals.connection_saved.send(app, id="no-type")
    signals.connection_saved.send(app, id="ok", type="opcua")
    assert inventory.connections.snapshot() == {
        "total": len(GARBAGE_TYPES) + 2,
        "by_type": {"opcua": 1, "other": len(GARBAGE_TYPES) + 1},
    }


@pytest.mark.usefixtures("connected")
def test_garbage_node_types_are_counted_as_other(app: FakeApp, inventory: Inventory) -> None:
    signals.pipeline_saved.send(
        app, id="p1", enabled=True, node_types=["trigger.manual", *GARBAGE_TYPES]
    )
    signals.pipeline_saved.send(app, id="p2", enabled="yes", node_types="trigger.manual")
    assert inventory.pipelines.snapshot() == {
        "total": 2,
        "enabled": 1,
        "nodes_by_type": {"other": len(GARBAGE_TYPES), "trigger.manual": 1},
    }


# UNS and license ------------------------------------------------------------------------


@pytest.mark.usefixtures("connected")
def test_uns_state_is_absolute_and_sanitised(app: FakeApp, inventory: Inventory) -> None:
    signals.uns_state_changed.send(
        app, topic_count=1200, client_count=7, mqtt_mode="embedded", storage_mode="pebble"
    )
    assert inventory.uns == {
        "topic_count": 1200,
        "client_count": 7,
        "mqtt_mode": "embedded",
        "storage_mode": "pebble",
    }
    signals.uns_state_changed.send(
        app, topic_count=5, client_count=0, mqtt_mode="external", storage_mode="timescale"
    )
    assert inventory.uns == {
        "topic_count": 5,
        "client_count": 0,
        "mqtt_mode": "external",
        "storage_mode": "timescale",
    }


@pytest.mark.usefixtures("connected")
def test_uns_garbage_values_become_none_or_other(app: FakeApp, inventory: Inventory) -> None:
    signals.uns_state_changed.send(
        app, topic_count=-1, client_count="7", mqtt_mode="clustered", storage_mode="/var/lib/db"
    )
    assert inventory.uns == {
        "topic_count": None,
        "client_count": None,
        "mqtt_mode": "other",
        "storage_mode": "other",
    }
    signals.uns_state_changed.send(app, topic_count=True, mqtt_mode=["embedded"], storage_mode=3)
    assert inventory.uns == {
        "topic_count": None,
        "client_count": None,
        "mqtt_mode": "other",
        "storage_mode": "other",
    }
    signals.uns_state_changed.send(app)
    assert inventory.uns == dict.fromkeys(
        ("topic_count", "client_count", "mqtt_mode", "storage_mode")
    )


@pytest.mark.usefixtures("connected")
@pytest.mark.parametrize("status", ["trial", "active", "expired"])
def test_license_state(app: FakeApp, inventory: Inventory, status: str) -> None:
    signals.license_changed.send(app, license_id="LIC-2024-0042", status=status)
    assert inventory.license == {"id": "LIC-2024-0042", "status": status}


@pytest.mark.usefixtures("connected")
def test_license_garbage_becomes_none_or_other(app: FakeApp, inventory: Inventory) -> None:
    signals.license_changed.send(app, license_id=f"key {SECRET}", status="ACTIVE")
    assert inventory.license == {"id": None, "status": "other"}
    signals.license_changed.send(app, license_id=12345, status=["active"])
    assert inventory.license == {"id": None, "status": "other"}
    signals.license_changed.send(app)
    assert inventory.license == {"id": None, "status": None}


# Extra arguments ------------------------------------------------------------------------


@pytest.mark.usefixtures("connected")
def test_extra_arguments_full_of_secrets_are_never_stored(
    app: FakeApp, inventory: Inventory, tally: ExecutionTally, pairs: list[receivers.Pair]
) -> None:
    extra = _secret_extras()
    signals.inventory_synced.send(
        app, module="connections", items=[{"id": "c0", "type": "rest", **extra}], **extra
    )
    signals.inventory_synced.send(
        app,
        module="users",
        items=[{"id": "u0", "email": "first@example.com", "created_at": T0, **extra}],
        **extra,
    )
    signals.connection_saved.send(app, id="c1", type="mqtt", **extra)
    signals.connection_deleted.send(app, id="c0", **extra)
    signals.pipeline_saved.send(app, id="p1", enabled=True, node_types=["a.b"], **extra)
    signals.pipeline_deleted.send(app, id="p9", **extra)
    signals.execution_finished.send(
        app, pipeline_id="p1", status="completed", duration_ms=5, **extra
    )
    signals.organization_saved.send(app, id="o1", **extra)
    signals.organization_deleted.send(app, id="o9", **extra)
    signals.data_model_saved.send(app, id="d1", **extra)
    signals.data_model_deleted.send(app, id="d9", **extra)
    signals.uns_state_changed.send(
        app, topic_count=1, client_count=2, mqtt_mode="embedded", storage_mode="pebble", **extra
    )
    signals.license_changed.send(app, license_id="LIC-1", status="active", **extra)
    signals.user_deleted.send(app, id="u9", **extra)

    # Everything that was meant to count did count ...
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"mqtt": 1}}
    assert len(inventory.pipelines) == 1
    assert len(inventory.organizations) == 1
    assert len(inventory.data_models) == 1
    assert tally.totals()["completed"] == 1
    assert inventory.uns["storage_mode"] == "pebble"
    assert inventory.license == {"id": "LIC-1", "status": "active"}
    # ... and nothing else was kept anywhere in the state, once the syncs are read
    # (the worker reads them; until then the host's rows are only referenced).
    inventory.settle()
    strings = strings_in([inventory, tally, pairs])
    assert "pebble" in strings and "first@example.com" in strings  # the walk reaches state
    for text in strings:
        assert SECRET not in text
        assert "private.person@example.com" not in text
        assert "Private Person" not in text


# record_user ----------------------------------------------------------------------------


def test_record_user_counts_users_and_tracks_the_earliest(inventory: Inventory) -> None:
    receivers.record_user(
        inventory,
        {"id": "u2", "email": "b@example.com", "created_at": T0 + timedelta(days=1), "pw": SECRET},
    )
    receivers.record_user(inventory, {"id": "u1", "email": "a@example.com", "created_at": T0})
    receivers.record_user(inventory, {"id": "u1", "email": "a@example.com", "created_at": T0})
    assert len(inventory.users) == 2
    assert inventory.users.earliest == (T0, "a@example.com")
    assert not any(SECRET in text for text in strings_in(inventory))


@pytest.mark.parametrize(
    "user",
    [
        {"id": "u1", "email": "a@example.com", "created_at": T0.replace(tzinfo=None)},
        {"id": "u1", "email": "not-an-email", "created_at": T0},
        {"id": "u1", "created_at": T0},
        {"id": "u1"},
    ],
)
def test_record_user_counts_users_whose_details_are_unusable(
    inventory: Inventory, user: dict[str, Any]
) -> None:
    receivers.record_user(inventory, user)
    assert len(inventory.users) == 1
    assert inventory.users.earliest is None


@pytest.mark.parametrize(
    "user", [None, "u1", 42, ["u1"], {"email": "a@example.com", "created_at": T0}, {"id": None}]
)
def test_record_user_ignores_what_is_not_a_user(inventory: Inventory, user: Any) -> None:
    receivers.record_user(inventory, user)
    assert len(inventory.users) == 0
    assert inventory.users.earliest is None


# Bounded work per signal ----------------------------------------------------------------


@pytest.mark.usefixtures("connected")
def test_a_pipeline_saved_with_a_huge_node_list_is_counted_in_bounded_work(
    app: FakeApp, inventory: Inventory
) -> None:
    node_types = [f"kind.n{i}" for i in range(NODES_MAX)] + ["x" * 10_000_000] * 1_000
    signals.pipeline_saved.send(app, id="p1", enabled=True, node_types=node_types)
    nodes = inventory.pipelines.snapshot()["nodes_by_type"]
    assert len(nodes) == NODES_MAX + 1 and nodes["other"] == 1_000
    signals.connection_saved.send(app, id="c1", type="y" * 10_000_000)
    assert inventory.connections.snapshot() == {"total": 1, "by_type": {"other": 1}}
