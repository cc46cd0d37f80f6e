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

import hashlib
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar

from phonehome_plugin.guard import privacy

S = TypeVar("S")
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


DELETED: Any = object()
"""In :meth:`Entities.take_changes`: the entity under that key is gone."""


@dataclass(frozen=True, eq=False)
class Pending:
    """One module's sync as the host handed it over: its rows, unread, and how to read
    one row's value. Read once, on the worker (:meth:`Entities.settle`)."""

    rows: Sequence[Any]
    value_of: Callable[[Mapping[str, Any]], Any]

    def read(self) -> list[tuple[Hashable, Any]]:
        """``(key, value)`` of each row that is a mapping with a usable id. A host that
        changed the rows meanwhile costs the rows it changed, never the worker."""
        parsed: list[tuple[Hashable, Any]] = []
        try:
            for row in list(self.rows):
                if isinstance(row, Mapping) and (key := entity_id(row.get("id"))) is not None:
                    parsed.append((key, self.value_of(row)))
        except Exception:  # the rows changed under us (the host's, by reference)
            pass
        return parsed


class Entities:
    """A set of entities keyed by id, each with an optional aggregated value.

    What changed since the worker last took it is kept too (:meth:`take_changes`):
    the keys saved or deleted one by one, or that the whole set was replaced (a
    sync), so that the worker can carry this process's changes into the
    installation's shared state. Keeping it costs a set insertion per change.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._items: dict[Hashable, Any] = {}
        self._dirty: set[Hashable] = set()
        self._replaced = False
        self._pending: Pending | None = None
        """A sync handed over by the host's thread, not yet read (see :meth:`replace_later`)."""
        self._since: list[tuple[Hashable, Any]] = []
        """Saves and deletes (:data:`DELETED`) made after the pending sync, in order."""
        self._superseded: list[Pending] = []
        """Syncs replaced by a newer one before they were read, to be freed on the worker."""

    def __len__(self) -> int:
        self.settle()
        return len(self._items)

    def replace(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        with self.lock:
            self._pending, self._since, self._superseded = None, [], []
            self._clear()
            for key, value in items:
                self._put(key, value)
            self._replaced = True
            self._dirty.clear()

    def replace_later(
        self, rows: Sequence[Any], value_of: Callable[[Mapping[str, Any]], Any]
    ) -> None:
        """Replace the set by ``rows`` (the host's mappings, read later: see :meth:`settle`).

        O(1) for the host's thread, whatever the number of rows: the rows are kept by
        reference and read on the worker, where saves and deletes made meanwhile are
        replayed on top of them, in order, as if the sync had been read at once."""
        with self.lock:
            if self._pending is not None:
                # A sync not read yet: its rows are freed on the worker, not here
                # (freeing 100,000 of the host's mappings is no O(1) matter).
                self._superseded.append(self._pending)
            self._pending, self._since = Pending(rows, value_of), []
            self._replaced = True
            self._dirty.clear()

    def settle(self) -> None:
        """Read a pending sync now (on the worker; every reader calls it first). The
        rows are read outside the lock, so the host's saves never wait for them."""
        with self.lock:
            pending = self._pending
            superseded, self._superseded = self._superseded, []
        del superseded  # freed here, on the worker
        if pending is None:
            return
        parsed = pending.read()
        with self.lock:
            if self._pending is not pending:
                return  # a newer sync came meanwhile; it is read next
            self._pending = None
            self._clear()
            for key, value in parsed:
                self._put(key, value)
            for key, value in self._since:
                if value is DELETED:
                    if key in self._items:
                        self._remove(key)
                else:
                    self._put(key, value)
            self._since = []

    def save(self, key: Hashable, value: Any = None) -> None:
        with self.lock:
            self._put(key, value)
            self._dirty.add(key)
            if self._pending is not None:
                self._since.append((key, value))

    def delete(self, key: Hashable) -> None:
        with self.lock:
            if key in self._items:
                self._remove(key)
            self._dirty.add(key)  # gone here; another process may still hold it
            if self._pending is not None:
                self._since.append((key, DELETED))

    def take_changes(self) -> tuple[bool, list[tuple[Hashable, Any]], set[Hashable]]:
        """``(True, every entity, the keys changed since the sync)`` when the set was
        replaced since the last take, else ``(False, the changed entities, {})`` with
        :data:`DELETED` for those gone."""
        self.settle()
        with self.lock:
            if self._replaced:
                self._replaced = False
                fresh, self._dirty = self._dirty, set()
                return True, list(self._items.items()), fresh
            keys, self._dirty = self._dirty, set()
            return False, [(key, self._items.get(key, DELETED)) for key in keys], set()

    def give_back(self, replaced: bool, changes: list[tuple[Hashable, Any]]) -> None:
        """Undo a :meth:`take_changes` whose changes could not be stored: they go
        with the next take (with the values then current)."""
        with self.lock:
            if replaced:
                self._replaced = True
            elif not self._replaced:
                self._dirty.update(key for key, _ in changes)

    def items(self) -> list[tuple[Hashable, Any]]:
        self.settle()
        with self.lock:
            return list(self._items.items())

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
        self.settle()
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
        self.settle()
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
    """Users by id (each with its creation time), remembering the earliest
    ``(created_at, email)`` ever seen."""

    def __init__(self) -> None:
        super().__init__()
        self.earliest: tuple[datetime, str] | None = None

    def _put(self, key: Hashable, value: Any) -> None:
        # Only the creation time per user (the installation's state needs no more):
        # no email is kept but the earliest one.
        super()._put(key, None if value is None else value[0])
        if value is not None and (self.earliest is None or value < self.earliest):
            self.earliest = value


def _user_of(row: Mapping[str, Any]) -> tuple[datetime, str] | None:
    return user_value(row.get("created_at"), row.get("email"))


def _type_of(row: Mapping[str, Any]) -> str:
    return privacy.bucket(row.get("type"))


def _pipeline_of(row: Mapping[str, Any]) -> tuple[bool, Counter[str]]:
    return pipeline_value(row.get("enabled"), row.get("node_types"))


def _nothing(row: Mapping[str, Any]) -> None:
    return None


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
        self._stored: dict[str, dict[str, Any]] = {}
        """The UNS and license states last handed to the shared state."""

    def sync(self, module: Any, items: Any) -> bool:
        """Replace one module's state; False when the module or items are not understood.

        Costs the host's thread O(1) whatever the number of items: they are read on
        the worker (:meth:`Entities.replace_later`, :meth:`settle`)."""
        if not isinstance(items, list | tuple):
            return False
        parsers: dict[str, tuple[Entities, Callable[[Mapping[str, Any]], Any]]] = {
            "users": (self.users, _user_of),
            "connections": (self.connections, _type_of),
            "pipelines": (self.pipelines, _pipeline_of),
            "organizations": (self.organizations, _nothing),
            "data_models": (self.data_models, _nothing),
        }
        if not isinstance(module, str) or module not in parsers:  # a list would raise TypeError
            return False
        entities, value_of = parsers[module]
        entities.replace_later(items, value_of)
        return True

    def clear(self) -> None:
        """Forget everything (after shutdown, once saved): every entity, the syncs not
        read, the UNS and license states."""
        for entities in self.modules().values():
            entities.replace(())
            entities.take_changes()
        self.users.earliest = None
        self.uns, self.license = {}, {}
        self._stored.clear()

    def settle(self) -> None:
        """Read every sync still pending (worker side): see :meth:`Entities.settle`."""
        for entities in self.modules().values():
            entities.settle()

    def modules(self) -> dict[str, Entities]:
        """The entity sets by the module names of the host contract."""
        return {
            "users": self.users,
            "connections": self.connections,
            "pipelines": self.pipelines,
            "organizations": self.organizations,
            "data_models": self.data_models,
        }

    def take_changes(self) -> Changes:
        """What changed in this process since the last take, for the shared state;
        :meth:`give_back` when it could not be stored."""
        taken = Changes()
        for name, entities in self.modules().items():
            replaced, changes, fresh = entities.take_changes()
            if replaced or changes:
                taken.modules[name] = (replaced, changes)
            if fresh:
                taken.fresh[name] = {entity_key(key) for key in fresh}
        for key, state in (("uns", self.uns), ("license", self.license)):
            if state and state is not self._stored.get(key):
                taken.states[key] = state
        self._stored.update(taken.states)
        return taken

    def give_back(self, taken: Changes) -> None:
        modules = self.modules()
        for name, (replaced, changes) in taken.modules.items():
            modules[name].give_back(replaced, changes)
        for key in taken.states:
            self._stored.pop(key, None)

    @classmethod
    def from_state(
        cls, modules: Mapping[str, Iterable[tuple[str, str]]], states: Mapping[str, str]
    ) -> Inventory:
        """The installation's inventory from its shared state (see :meth:`Changes.rows`)."""
        inventory = cls()
        for name, entities in inventory.modules().items():
            rows = modules.get(name, ())
            entities.replace((key, _decode(name, value)) for key, value in rows)
        for key, attribute in (("uns", "uns"), ("license", "license")):
            raw = states.get(key)
            if raw is not None:
                setattr(inventory, attribute, json.loads(raw))
        return inventory

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


class Counted:
    """One module of the installation, counted (:class:`InstallationCounts`): as much
    of :class:`Entities` as a report reads, its length."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __len__(self) -> int:
        return self.total


class CountedWith(Counted, Generic[S]):
    """A module counted with its report section (connections, pipelines): what
    :meth:`TypedEntities.snapshot` or :meth:`Pipelines.snapshot` would answer, kept."""

    def __init__(self, total: int, counts: S) -> None:
        super().__init__(total)
        self.counts = counts

    def snapshot(self) -> S:
        return self.counts


class InstallationCounts:
    """The whole installation's inventory as a report reads it, from the counts its
    shared state keeps (:func:`phonehome_plugin.state.entities.counts`), never from
    its entities one by one: the same fields as :class:`Inventory` for
    :func:`phonehome_plugin.reports.shape.build`."""

    def __init__(
        self, counts: Mapping[str, Mapping[str, Mapping[str, int]]], states: Mapping[str, str]
    ) -> None:
        def total(module: str) -> int:
            return int(counts.get(module, {}).get("total", {}).get("", 0))

        def facet(module: str, name: str) -> dict[str, int]:
            return dict(sorted(counts.get(module, {}).get(name, {}).items()))

        self.users = Counted(total("users"))
        self.organizations = Counted(total("organizations"))
        self.data_models = Counted(total("data_models"))
        connections: TypeCounts = {
            "total": total("connections"),
            "by_type": facet("connections", "type"),
        }
        self.connections = CountedWith(connections["total"], connections)
        pipelines: PipelineCounts = {
            "total": total("pipelines"),
            "enabled": facet("pipelines", "enabled").get("", 0),
            "nodes_by_type": facet("pipelines", "node"),
        }
        self.pipelines = CountedWith(pipelines["total"], pipelines)
        self.uns: dict[str, Any] = json.loads(states["uns"]) if "uns" in states else {}
        self.license: dict[str, Any] = json.loads(states["license"]) if "license" in states else {}


@dataclass
class Changes:
    """One process's inventory changes, as :meth:`Inventory.take_changes` took them."""

    modules: dict[str, tuple[bool, list[tuple[Hashable, Any]]]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    fresh: dict[str, set[str]] = field(default_factory=dict)
    """Of a replaced module: the shared state's keys of the entities changed since the
    sync (a later value than the sync's, dated by the fold, not by the sync)."""

    def __bool__(self) -> bool:
        return bool(self.modules or self.states)

    def rows(self) -> dict[str, tuple[bool, list[tuple[str, str | None]]]]:
        """Each module's changes as the shared state keeps them: a digest of the
        entity's id (never the id itself), and its counted value as JSON (None: gone)."""
        return {
            name: (
                replaced,
                [
                    (entity_key(key), None if value is DELETED else _encode(name, value))
                    for key, value in changes
                ],
            )
            for name, (replaced, changes) in self.modules.items()
        }


def entity_key(key: Hashable) -> str:
    """The shared state's key of a local id: a digest, the same in every process."""
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def _encode(module: str, value: Any) -> str:
    if module == "connections":
        return json.dumps(value)
    if module == "pipelines":
        enabled, nodes = value
        return json.dumps([bool(enabled), dict(nodes)])
    return "null"  # users (their count only; the first email is kept apart), the rest


def _decode(module: str, raw: str) -> Any:
    value = json.loads(raw)
    if module == "pipelines":
        return bool(value[0]), Counter({str(k): int(n) for k, n in value[1].items()})
    if module == "connections":
        return str(value)
    return None
