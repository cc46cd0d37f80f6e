"""What the installation holds right now: users, connections, pipelines, ...

Built from each module's ``inventory-synced`` baseline and kept current by the
saved/deleted signals. Aggregates (counts by type) are maintained on every
change, so building a report costs O(types), not O(entities). Only ids (as
dictionary keys, never reported) and allowlisted, sanitised values are kept.

Bounded work per signal argument. Each item of a sync and each saved entity
costs a bounded amount of work and memory: its strings are looked at only
when short (see :mod:`.privacy`: a 10 MB email or type is refused by its
length), and a pipeline's ``node_types`` is read up to :data:`NODES_MAX`
entries. A sync costs that much per item, so it is linear in the items the
host sends, which is the size of the installation.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypedDict

from phonehome_plugin.guard import privacy

NODES_MAX = 10_000
"""Node types of one pipeline counted by type; any more count as ``other`` unread."""


class TypeCounts(TypedDict):
    """A :meth:`TypedEntities.snapshot`: the report's ``connections`` section."""

    total: int
    by_type: dict[str, int]


class PipelineCounts(TypedDict):
    """A :meth:`Pipelines.snapshot`: the report's ``pipelines`` section."""

    total: int
    enabled: int
    nodes_by_type: dict[str, int]


def entity_id(raw: Any) -> Hashable | None:
    """The id of an entity as a dictionary key (strings and ints only)."""
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        return raw
    return None


class Entities:
    """A set of entities keyed by id, each with an optional aggregated value."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._items: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._items)

    def replace(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        with self.lock:
            self._clear()
            for key, value in items:
                self._put(key, value)

    def save(self, key: Hashable, value: Any = None) -> None:
        with self.lock:
            self._put(key, value)

    def delete(self, key: Hashable) -> None:
        with self.lock:
            if key in self._items:
                self._remove(key)

    def _clear(self) -> None:
        self._items.clear()

    def _put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value

    def _remove(self, key: Hashable) -> None:
        del self._items[key]


class TypedEntities(Entities):
    """Entities with one type each (connections), counted by type."""

    def __init__(self) -> None:
        super().__init__()
        self.by_type: Counter[str] = Counter()

    def _clear(self) -> None:
        super()._clear()
        self.by_type.clear()

    def _put(self, key: Hashable, value: Any) -> None:
        if key in self._items:
            self._remove(key)
        super()._put(key, value)
        self.by_type[value] += 1

    def _remove(self, key: Hashable) -> None:
        kind = self._items.pop(key)
        self.by_type[kind] -= 1
        if not self.by_type[kind]:
            del self.by_type[kind]

    def snapshot(self) -> TypeCounts:
        with self.lock:
            return {"total": len(self._items), "by_type": dict(sorted(self.by_type.items()))}


class Pipelines(Entities):
    """Pipelines with their enabled flag and node counts by type (over all pipelines)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = 0
        self.nodes: Counter[str] = Counter()

    def _clear(self) -> None:
        super()._clear()
        self.enabled = 0
        self.nodes.clear()

    def _put(self, key: Hashable, value: Any) -> None:
        if key in self._items:
            self._remove(key)
        super()._put(key, value)
        enabled, nodes = value
        self.enabled += enabled
        self.nodes.update(nodes)

    def _remove(self, key: Hashable) -> None:
        enabled, nodes = self._items.pop(key)
        self.enabled -= enabled
        self.nodes.subtract(nodes)
        for kind in nodes:
            if not self.nodes[kind]:
                del self.nodes[kind]

    def snapshot(self) -> PipelineCounts:
        with self.lock:
            return {
                "total": len(self._items),
                "enabled": self.enabled,
                "nodes_by_type": dict(sorted(self.nodes.items())),
            }


def pipeline_value(enabled: Any, node_types: Any) -> tuple[bool, Counter[str]]:
    """The sanitised part of a pipeline that is counted: enabled flag and node types.

    At most :data:`NODES_MAX` node types are read; the rest still count, as
    ``other``, so the total stays right while the work stays bounded.
    """
    nodes: Counter[str] = Counter()
    if isinstance(node_types, list | tuple):
        nodes.update(privacy.bucket(kind) for kind in itertools.islice(node_types, NODES_MAX))
        unread = len(node_types) - NODES_MAX
        if unread > 0:
            nodes[privacy.OTHER] += unread
    return enabled is True, nodes


class Users(Entities):
    """Users by id, remembering the earliest ``(created_at, email)`` ever seen."""

    def __init__(self) -> None:
        super().__init__()
        self.earliest: tuple[datetime, str] | None = None

    def _put(self, key: Hashable, value: Any) -> None:
        super()._put(key, None)
        if value is not None and (self.earliest is None or value < self.earliest):
            self.earliest = value


def user_value(created_at: Any, email: Any) -> tuple[datetime, str] | None:
    """``(created_at, email)`` when both are well formed and comparable, else None."""
    if (
        isinstance(created_at, datetime)
        and created_at.tzinfo is not None
        and privacy.is_email(email)
    ):
        return created_at, email
    return None


class Inventory:
    """Every module's entities, plus the UNS and license state."""

    def __init__(self) -> None:
        self.users = Users()
        self.connections = TypedEntities()
        self.pipelines = Pipelines()
        self.organizations = Entities()
        self.data_models = Entities()
        self.uns: dict[str, Any] = {}
        self.license: dict[str, Any] = {}

    def sync(self, module: Any, items: Any) -> bool:
        """Replace one module's state; False when the module or items are not understood."""
        if not isinstance(items, list | tuple):
            return False
        rows = [item for item in items if isinstance(item, Mapping)]
        parsers: dict[str, tuple[Entities, Callable[[Mapping[str, Any]], Any]]] = {
            "users": (self.users, lambda r: user_value(r.get("created_at"), r.get("email"))),
            "connections": (self.connections, lambda r: privacy.bucket(r.get("type"))),
            "pipelines": (
                self.pipelines,
                lambda r: pipeline_value(r.get("enabled"), r.get("node_types")),
            ),
            "organizations": (self.organizations, lambda r: None),
            "data_models": (self.data_models, lambda r: None),
        }
        if not isinstance(module, str) or module not in parsers:  # a list would raise TypeError
            return False
        entities, value_of = parsers[module]
        entities.replace(
            (key, value_of(row)) for row in rows if (key := entity_id(row.get("id"))) is not None
        )
        return True

    def after_fork(self) -> None:
        """Replace locks a fork may have copied while held by a thread that is gone."""
        for entities in (
            self.users,
            self.connections,
            self.pipelines,
            self.organizations,
            self.data_models,
        ):
            entities.lock = threading.Lock()
