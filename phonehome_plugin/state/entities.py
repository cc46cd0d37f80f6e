"""The installation's entities in its shared state: what every process counted.

A process sees only the changes made in it (the host emits a ``*-saved`` signal in
the process that made the change), so each one carries its own changes here, and
reports count from these rows: the installation's totals, whichever process builds
the report. One row per entity: ``(module, key, value)``, where ``key`` is a digest
of the host's local id (ids are never reported, nor kept here as they are) and
``value`` the sanitised JSON the counting layer made of what it may count. The UNS
and license state, one value each, are kept under ``inventory.uns`` and
``inventory.license``.

Everything here runs inside a transaction the caller holds (``c``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from phonehome_plugin.state.store import UPSERT_KV, Conn

UNS_KEY = "inventory.uns"
LICENSE_KEY = "inventory.license"
_UPSERT = (
    "INSERT INTO entities (module, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (module, key) DO UPDATE SET value = excluded.value"
)

Rows = Sequence[tuple[str, str | None]]
"""``(key, value)`` pairs of one module; a value of None: the entity is gone."""


def apply(c: Conn, module: str, replaced: bool, rows: Rows) -> None:
    """Store one module's changes: all of its entities when ``replaced`` (a sync in
    any process replaces what every process knew of that module), else the ones named."""
    if replaced:
        c.execute("DELETE FROM entities WHERE module = ?", (module,))
    gone = [(module, key) for key, value in rows if value is None]
    kept = [(module, key, value) for key, value in rows if value is not None]
    if gone and not replaced:
        c.executemany("DELETE FROM entities WHERE module = ? AND key = ?", gone)
    if kept:
        c.executemany(_UPSERT, kept)


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
