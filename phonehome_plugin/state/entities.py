"""The installation's entities in its shared state: what every process counted.

A process sees only the changes made in it (the host emits a ``*-saved`` signal in
the process that made the change), so each one carries its own changes here, and
reports count from these rows: the installation's totals, whichever process builds
the report. One row per entity: ``(module, key, value, at)``, where ``key`` is a digest
of the host's local id (ids are never reported, nor kept here as they are) and
``value`` the sanitised JSON the counting layer made of what it may count, ``at``
when that value was known (host clock; see :func:`apply`). The UNS
and license state, one value each, are kept under ``inventory.uns`` and
``inventory.license``.

What a report counts is kept beside the rows, in ``entity_counts`` (``module, facet,
name, n``: each module's total, connections by type, pipelines enabled and their
nodes by type), changed by :func:`apply` in the same transaction as the rows. So a
report reads a few dozen counts (:func:`counts`), never the rows: its cost does not
grow with the installation. Counts missing from a state made before them
(:data:`BUILT_KEY` unset) are built from the rows once, by the first writer; a
reader before that counts the rows itself.

Everything here runs inside a transaction the caller holds (``c``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TypeVar

from phonehome_plugin.state.store import UPSERT_KV, Conn, get_in

T = TypeVar("T")

UNS_KEY = "inventory.uns"
LICENSE_KEY = "inventory.license"
_UPSERT = (
    "INSERT INTO entities (module, key, value, at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (module, key) DO UPDATE SET value = excluded.value, at = excluded.at "
    "WHERE entities.at <= excluded.at"
)

_MOVE_ON = "UPDATE entities SET at = ? WHERE module = ? AND key = ? AND at < ?"
"""A row whose value is unchanged: only the moment it was known moves on."""

BUILT_KEY = "entity_counts.built"
"""kv: set once ``entity_counts`` holds the counts of every row."""
_ADD_COUNT = (
    "INSERT INTO entity_counts (module, facet, name, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (module, facet, name) DO UPDATE SET n = entity_counts.n + excluded.n"
)
_KEYS_AT_ONCE = 500
"""Keys looked up in one statement (well under either backend's parameter limit)."""
_ROWS_AT_ONCE = 500
"""Rows one statement writes or deletes at most. A fork waits for the statement in
progress (see .forksafe): a whole sync of 100,000 pipelines written in one made a fork
wait up to 100 ms; one of these takes a few milliseconds."""
_DELETE_KNOWN_BEFORE = (
    "DELETE FROM entities WHERE module = ? AND key IN "
    f"(SELECT key FROM entities WHERE module = ? AND at < ? LIMIT {_ROWS_AT_ONCE}) "
    "RETURNING value"
)

Rows = Sequence[tuple[str, str | None]]
"""``(key, value)`` pairs of one module; a value of None: the entity is gone."""
Facet = tuple[str, str]
"""``(facet, name)`` of a count: ``("total", "")``, ``("type", kind)``,
``("enabled", "")``, ``("node", kind)``."""
Counts = dict[str, dict[str, dict[str, int]]]
"""module -> facet -> name -> n, as :func:`counts` reads them."""


def facets(module: str, value: str) -> Counter[Facet]:
    """What one entity adds to the counts, from its stored value (the JSON the counting
    layer made: a connection's type; a pipeline's ``[enabled, {node type: n}]``)."""
    found: Counter[Facet] = Counter({("total", ""): 1})
    if module == "connections":
        found["type", str(json.loads(value))] += 1
    elif module == "pipelines":
        enabled, nodes = json.loads(value)
        if enabled:
            found["enabled", ""] += 1
        for kind, n in nodes.items():
            found["node", str(kind)] += int(n)
    return found


def apply(c: Conn, module: str, replaced: bool, rows: Rows, at: float) -> None:
    """Store one module's changes, known as of ``at`` (host clock, epoch seconds).

    Each row keeps the moment its value was known, and a value never gives way to
    one known earlier: two processes' changes of one entity end as the later one.

    ``replaced``: ``rows`` are all of the module's entities at ``at`` (a sync, in any
    process). Rows known before ``at`` and not among them are gone; rows known since
    (another process's changes, folded meanwhile, that this process's sync could not
    have seen) stay. A sync that reaches the state late (its process could not reach
    it for a while) so never undoes what others carried over in the meantime; ``at``
    should be a moment the sync surely came after. Else only the entities named."""
    _ensure_counts(c)
    delta: Counter[Facet] = Counter()
    # Part by part, so that no statement, nor the work between two, grows with the
    # module: a fork waits for the statement in progress, and a transaction gives way
    # to it only at the next one (see .forksafe).
    for part in _parts(rows):
        _apply_part(c, module, replaced, part, at, delta)
    if replaced:
        # Every entity the sync names is known as of ``at`` now (or later, from
        # another process): a row still known only from before is one it did not name.
        while True:
            deleted = c.execute(_DELETE_KNOWN_BEFORE, (module, module, at)).fetchall()
            for (value,) in deleted:
                delta.subtract(facets(module, str(value)))
            if len(deleted) < _ROWS_AT_ONCE:
                break
    _add_counts(c, module, delta)


def _apply_part(
    c: Conn, module: str, replaced: bool, rows: Rows, at: float, delta: Counter[Facet]
) -> None:
    """:func:`apply` for at most :data:`_ROWS_AT_ONCE` of its rows; adds to ``delta``
    what they change in the counts. A row whose value is the one stored only has its
    moment moved on: a sync of an unchanged installation rewrites nothing else."""
    # The values these rows replace, as the statements below will find them (a row
    # known later than ``at`` stays, and so do its counts).
    known = _known(c, module, [key for key, _ in rows])
    written: list[tuple[str, str, str, float]] = []
    moved: list[tuple[float, str, str, float]] = []
    gone: list[tuple[str, str, float]] = []
    for key, value in rows:
        old = known.get(key)
        if old is not None and old[1] > at:
            continue
        if value is None:
            if not replaced:  # a sync names what exists: apply deletes the rest after
                if old is not None:
                    delta.subtract(facets(module, old[0]))
                known.pop(key, None)
                gone.append((module, key, at))
            continue
        if old is not None and old[0] == value:
            if old[1] < at:
                moved.append((at, module, key, at))
        else:
            if old is not None:
                delta.subtract(facets(module, old[0]))
            delta.update(facets(module, value))
            written.append((module, key, value, at))
        known[key] = (value, at)
    if gone:
        c.executemany("DELETE FROM entities WHERE module = ? AND key = ? AND at <= ?", gone)
    if moved:
        c.executemany(_MOVE_ON, moved)
    if written:
        c.executemany(_UPSERT, written)


def _parts(rows: Sequence[T]) -> list[Sequence[T]]:
    """``rows`` in slices of at most :data:`_ROWS_AT_ONCE`, one statement each."""
    return [rows[start : start + _ROWS_AT_ONCE] for start in range(0, len(rows), _ROWS_AT_ONCE)]


def _known(c: Conn, module: str, keys: list[str]) -> dict[str, tuple[str, float]]:
    """The stored value and moment of each of ``keys`` that has a row."""
    found: dict[str, tuple[str, float]] = {}
    unique = sorted(set(keys))
    for start in range(0, len(unique), _KEYS_AT_ONCE):
        part = unique[start : start + _KEYS_AT_ONCE]
        marks = ", ".join("?" * len(part))
        for key, value, at in c.execute(
            f"SELECT key, value, at FROM entities WHERE module = ? AND key IN ({marks})",
            (module, *part),
        ).fetchall():
            found[str(key)] = (str(value), float(at))
    return found


def _add_counts(c: Conn, module: str, delta: Counter[Facet]) -> None:
    changed = [(module, facet, name, n) for (facet, name), n in sorted(delta.items()) if n]
    if not changed:
        return
    c.executemany(_ADD_COUNT, changed)
    c.executemany(
        "DELETE FROM entity_counts WHERE module = ? AND facet = ? AND name = ? AND n = 0",
        [(m, facet, name) for m, facet, name, n in changed if n < 0],
    )


def _ensure_counts(c: Conn) -> None:
    """Build ``entity_counts`` from the rows if it never was (a state made before the
    counts): from the rows as they are before the caller's changes, which it adds."""
    if get_in(c, BUILT_KEY) is not None:
        return
    c.execute("DELETE FROM entity_counts")
    for module, found in _counted(c).items():
        _add_counts(c, module, found)
    c.execute(UPSERT_KV, (BUILT_KEY, "1"))


def _counted(c: Conn) -> dict[str, Counter[Facet]]:
    """Every module's counts, from its rows one by one (where none are kept yet)."""
    found: dict[str, Counter[Facet]] = {}
    for module, value in c.execute("SELECT module, value FROM entities").fetchall():
        found.setdefault(str(module), Counter()).update(facets(str(module), str(value)))
    return found


def counts(c: Conn) -> Counts:
    """Every module's counts (see the module docstring); from the rows themselves while
    the counts were never built (a reader of a state made before them)."""
    found: Counts = {}
    if get_in(c, BUILT_KEY) is None:
        for module, counted in _counted(c).items():
            for (facet, name), n in counted.items():
                found.setdefault(module, {}).setdefault(facet, {})[name] = n
        return found
    for module, facet, name, n in c.execute(
        "SELECT module, facet, name, n FROM entity_counts"
    ).fetchall():
        found.setdefault(str(module), {}).setdefault(str(facet), {})[str(name)] = int(n)
    return found


def states(c: Conn) -> dict[str, str]:
    """The stored UNS and license states, by their kv keys."""
    return {
        str(key): str(value)
        for key, value in c.execute(
            "SELECT key, value FROM kv WHERE key IN (?, ?)", (UNS_KEY, LICENSE_KEY)
        ).fetchall()
    }


def set_states(c: Conn, states: Mapping[str, str]) -> None:
    """Store the UNS or license state (``UNS_KEY``/``LICENSE_KEY`` to its JSON)."""
    for key, value in states.items():
        c.execute(UPSERT_KV, (key, value))


def load(c: Conn) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Every module's ``(key, value)`` rows, and the stored UNS and license states."""
    modules: dict[str, list[tuple[str, str]]] = {}
    for module, key, value in c.execute("SELECT module, key, value FROM entities").fetchall():
        modules.setdefault(str(module), []).append((str(key), str(value)))
    states = {
        str(key): str(value)
        for key, value in c.execute(
            "SELECT key, value FROM kv WHERE key IN (?, ?)", (UNS_KEY, LICENSE_KEY)
        ).fetchall()
    }
    return modules, states
