"""Built-in signal receivers: they keep :class:`~.inventory.Inventory` and the tally current.

Each receiver reads only the keyword arguments the contract names and takes
``**extra`` for the rest, which it never looks at: the host passes whole objects
along, and nothing in them may reach a report. Each has a board for riders:
third-party receivers of its signal, called inside it (see :mod:`.riders`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hookspecs import signals
from phonehome_plugin.counting.inventory import (
    Entities,
    Inventory,
    entity_id,
    pipeline_value,
    user_value,
)
from phonehome_plugin.counting.riders import Builtin, Receiver, rideable
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.guard import privacy

Pair = tuple[Any, Receiver]

UNS_MODES = ("embedded", "external")
LICENSE_STATUSES = ("trial", "active", "expired")


def builtin_receivers(inventory: Inventory, tally: ExecutionTally) -> list[Builtin]:
    """Every receiver the plugin connects while telemetry is on, one a signal, each
    with its signal and the board of its riders."""
    inv = inventory
    return [
        _with_riders(signals.inventory_synced, _synced(inv)),
        _with_riders(signals.user_deleted, _deleter(inv.users)),
        _with_riders(signals.connection_saved, _connection_saved(inv)),
        _with_riders(signals.connection_deleted, _deleter(inv.connections)),
        _with_riders(signals.pipeline_saved, _pipeline_saved(inv)),
        _with_riders(signals.pipeline_deleted, _deleter(inv.pipelines)),
        # The hottest signal's receiver takes its riders itself, without a frame more.
        Builtin(signals.execution_finished, tally.receiver, tally.board),
        _with_riders(signals.organization_saved, _saver(inv.organizations)),
        _with_riders(signals.organization_deleted, _deleter(inv.organizations)),
        _with_riders(signals.data_model_saved, _saver(inv.data_models)),
        _with_riders(signals.data_model_deleted, _deleter(inv.data_models)),
        _with_riders(signals.uns_state_changed, _uns_changed(inv)),
        _with_riders(signals.license_changed, _license_changed(inv)),
    ]


def _with_riders(signal: Any, own: Receiver) -> Builtin:
    return Builtin(signal, *rideable(own))


def record_user(inventory: Inventory, user: Any) -> None:
    """Add a user from ``on_user_created`` (a mapping with id, email, created_at)."""
    try:
        key = entity_id(user.get("id"))
        value = user_value(user.get("created_at"), user.get("email"))
    except AttributeError:
        return
    if key is not None:
        inventory.users.save(key, value)


def _synced(inv: Inventory) -> Receiver:
    def on_inventory_synced(
        sender: Any, module: Any = None, items: Any = None, **extra: Any
    ) -> None:
        inv.sync(module, items)

    return on_inventory_synced


def _saver(entities: Entities) -> Receiver:
    def on_saved(sender: Any, id: Any = None, **extra: Any) -> None:
        key = entity_id(id)
        if key is not None:
            entities.save(key)

    return on_saved


def _deleter(entities: Entities) -> Receiver:
    def on_deleted(sender: Any, id: Any = None, **extra: Any) -> None:
        key = entity_id(id)
        if key is not None:
            entities.delete(key)

    return on_deleted


def _connection_saved(inv: Inventory) -> Receiver:
    def on_connection_saved(sender: Any, id: Any = None, type: Any = None, **extra: Any) -> None:
        key = entity_id(id)
        if key is not None:
            inv.connections.save(key, privacy.bucket(type))

    return on_connection_saved


def _pipeline_saved(inv: Inventory) -> Receiver:
    def on_pipeline_saved(
        sender: Any,
        id: Any = None,
        enabled: Any = None,
        node_types: Any = None,
        **extra: Any,
    ) -> None:
        key = entity_id(id)
        if key is not None:
            inv.pipelines.save(key, pipeline_value(enabled, node_types))

    return on_pipeline_saved


def _uns_changed(inv: Inventory) -> Receiver:
    def on_uns_state_changed(
        sender: Any,
        topic_count: Any = None,
        client_count: Any = None,
        mqtt_mode: Any = None,
        storage_mode: Any = None,
        **extra: Any,
    ) -> None:
        inv.uns = {
            "topic_count": privacy.count(topic_count),
            "client_count": privacy.count(client_count),
            "mqtt_mode": mqtt_mode if mqtt_mode in UNS_MODES else _unknown(mqtt_mode),
            "storage_mode": _known(storage_mode),
        }

    return on_uns_state_changed


def _license_changed(inv: Inventory) -> Receiver:
    def on_license_changed(
        sender: Any, license_id: Any = None, status: Any = None, **extra: Any
    ) -> None:
        inv.license = {
            "id": privacy.identifier(license_id),
            "status": status if status in LICENSE_STATUSES else _unknown(status),
        }

    return on_license_changed


def _known(value: Any) -> str | None:
    return None if value is None else privacy.bucket(value)


def _unknown(value: Any) -> str | None:
    return None if value is None else privacy.OTHER


def connect_all(builtins: list[Builtin], sender: object) -> Iterator[Pair]:
    """Connect each receiver strongly for ``sender`` (the host's ``app``: blinker needs
    nothing of it but its identity); yields what was connected."""
    for signal, receiver, _ in builtins:
        signal.connect(receiver, sender=sender, weak=False)
        yield signal, receiver


def disconnect_all(builtins: list[Builtin]) -> None:
    """Undo :func:`connect_all`; safe to call twice.

    Disconnected from every sender: blinker's per-sender disconnect leaves the
    receiver in ``signal.receivers``, which would keep it (and its inventory)
    alive and keep the signal's dispatch off its no-receiver fast path. Their
    riders are the registry's to take off (:meth:`.collectors.Registry.disconnect`).
    """
    for signal, receiver, _ in builtins:
        signal.disconnect(receiver)
