"""The durable outbox: every report is stored here before any send is tried.

A report leaves the outbox only after a 2xx answer (or as a counted loss: a
final 4xx, or eviction). The outbox is bounded by count, bytes and age; when a
bound is passed, the oldest periodic reports go first and the first-user report
last, and every eviction is counted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from phonehome_plugin.config import OutboxLimits
from phonehome_plugin.store import Store

DAY = 86400.0
# Eviction order: periodic reports are the most replaceable, the first-user
# report (once in the life of the installation) the least.
_EVICTION_ORDER = (
    "ORDER BY CASE trigger WHEN 'periodic' THEN 0 WHEN 'startup' THEN 1 ELSE 2 END, created_at"
)


@dataclass(frozen=True)
class Entry:
    """One stored report; ``body`` is the exact JSON the sender POSTs (before gzip)."""

    report_id: str
    sequence: int
    trigger: str
    created_at: float
    body: bytes
    attempts: int = 0
    not_before: float = 0.0


class Outbox:
    """Outbox operations on a :class:`~.store.Store`; ``now`` is always the host's clock."""

    def __init__(self, store: Store, limits: OutboxLimits) -> None:
        self.store = store
        self.limits = limits

    def put(self, entry: Entry, now: float) -> int:
        """Store ``entry`` and enforce the bounds; returns how many reports were evicted."""

        def work(c: sqlite3.Connection) -> int:
            c.execute(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.report_id, entry.sequence, entry.trigger, entry.created_at,
                    entry.body, entry.attempts, entry.not_before,
                ),
            )
            return self._evict(c, now)

        evicted = self.store.run(work)
        if evicted:
            self.store.add({"delivery.dropped": evicted, "delivery.evicted": evicted})
        return evicted

    def _evict(self, c: sqlite3.Connection, now: float) -> int:
        limits = self.limits
        gone = c.execute(
            "DELETE FROM outbox WHERE created_at < ?", (now - limits.max_age_days * DAY,)
        ).rowcount
        while True:
            count, size = c.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox").fetchone()
            if count <= limits.max_reports and size <= limits.max_bytes or count <= 1:
                return gone
            c.execute(
                f"DELETE FROM outbox WHERE report_id = (SELECT report_id FROM outbox {_EVICTION_ORDER} LIMIT 1)"
            )
            gone += 1

    def due(self, now: float, limit: int = 16) -> list[Entry]:
        """Reports whose not-before time has come, oldest first."""
        rows = self.store.run(
            lambda c: c.execute(
                "SELECT report_id, sequence, trigger, created_at, body, attempts, not_before "
                "FROM outbox WHERE not_before <= ? ORDER BY sequence LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [Entry(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    def pending(self) -> list[Entry]:
        """Every stored report, in sequence order (for export and status)."""
        return self.due(float("inf"), limit=1_000_000)

    def remove(self, report_id: str) -> bool:
        """Forget a delivered (or finally rejected) report; False if it was already gone."""
        return bool(
            self.store.run(
                lambda c: c.execute("DELETE FROM outbox WHERE report_id=?", (report_id,)).rowcount
            )
        )

    def defer(self, report_id: str, not_before: float) -> None:
        """Count a failed attempt and hold the report back until ``not_before``."""
        self.store.run(
            lambda c: c.execute(
                "UPDATE outbox SET attempts = attempts + 1, not_before = ? WHERE report_id=?",
                (not_before, report_id),
            )
        )

    def next_due(self) -> float | None:
        """The earliest not-before time of any stored report, or None when empty."""
        row = self.store.run(lambda c: c.execute("SELECT min(not_before) FROM outbox").fetchone())
        return None if row[0] is None else float(row[0])

    def size(self) -> tuple[int, int]:
        """How many reports are stored, and their bytes."""
        row = self.store.run(
            lambda c: c.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox").fetchone()
        )
        return int(row[0]), int(row[1])
