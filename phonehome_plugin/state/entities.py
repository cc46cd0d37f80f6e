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

Everything here runs inside a transaction the caller holds (``c``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from phonehome_plugin.state.store import UPSERT_KV, Conn

UNS_KEY = "inventory.uns"
LICENSE_KEY = "inventory.license"
_UPSERT = (
    "INSERT INTO entities (module, key, value, at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (module, key) DO UPDATE SET value = excluded.value, at = excluded.at "
    "WHERE entities.at <= excluded.at"
)

Rows = Sequence[tuple[str, str | None]]
"""``(key, value)`` pairs of one module; a value of None: the entity is gone."""


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
    if replaced:
        c.execute("DELETE FROM entities WHERE module = ? AND at < ?", (module, at))
    gone = [(module, key, at) for key, value in rows if value is None]
    kept = [(module, key, value, at) for key, value in rows if value is not None]
    if gone and not replaced:
        c.executemany("DELETE FROM entities WHERE module = ? AND key = ? AND at <= ?", gone)
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
