"""The local record of every delivery attempt's outcome, for ``phonehome history``.

Kept to the most recent :data:`KEEP` rows (by ``id``, in insertion order: writers
are serialised), so it never grows without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from phonehome_plugin.state.store import Conn, Store

KEEP = 1000


@dataclass(frozen=True)
class Event:
    """What happened to one report at one time (host clock, epoch seconds)."""

    report_id: str
    sequence: int
    trigger: str
    at: float
    result: str
    detail: str


def record(store: Store, event: Event) -> None:
    """Append ``event`` and trim the history to the newest :data:`KEEP` rows."""
    store.run(lambda c: append(c, event))


def append(c: Conn, event: Event) -> None:
    """:func:`record` inside a transaction already open on ``c``."""
    c.execute(
        "INSERT INTO history (report_id, sequence, trigger, at, result, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (event.report_id, event.sequence, event.trigger, event.at, event.result, event.detail),
    )
    c.execute("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?", (KEEP,))


def recent(store: Store, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events, newest first."""
    rows = store.run(
        lambda c: c.execute(
            "SELECT report_id, sequence, trigger, at, result, detail FROM history "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    )
    return [Event(*row) for row in rows]
