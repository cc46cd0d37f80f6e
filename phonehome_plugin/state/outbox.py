"""The durable outbox: every report is stored here before any send is tried.

A report leaves the outbox only after a 2xx answer (or as a counted loss: a
final 4xx, or eviction). The outbox is bounded by count, bytes and age; when a
bound is passed, the oldest periodic reports go first and the first-user report
last, and every eviction is counted.

Sending goes through :meth:`Outbox.lease`: the sender takes one due report at a
time, and the lease (a not-before time a little ahead on the host's clock) keeps
the other processes of the installation from sending the same report at the same
time. A process that dies mid-send leaves the lease to run out; the report is
then due again. Each outcome is settled in one transaction (:meth:`Outbox.sent`,
:meth:`Outbox.rejected`, :meth:`Outbox.failed`), so a crash never leaves a report
both delivered and pending, nor a count half made.

Between failed series the whole outbox waits behind one gate, a host-clock time
kept in the store (so it survives restarts): an unreachable endpoint costs one
series per backoff period, however many reports are waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import history
from phonehome_plugin.state.store import Conn, Store, add_counters

DAY = 86400.0
GATE_KEY = "delivery.not_before"
"""kv: host-clock epoch seconds before which no report is sent (0 when open)."""
FAILURES_KEY = "delivery.consecutive_failures"
"""kv: failed series in a row, the exponent of the backoff between series."""

# Eviction order: periodic reports are the most replaceable, the first-user
# report (once in the life of the installation) the least.
_EVICTION_ORDER = (
    "ORDER BY CASE trigger WHEN 'periodic' THEN 0 WHEN 'startup' THEN 1 ELSE 2 END, created_at"
)
_SET_TWO = (
    "INSERT INTO kv (key, value) VALUES (?, ?), (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_COLUMNS = "report_id, sequence, trigger, created_at, body, attempts, not_before"
_DUE = "(not_before <= ? OR not_before > ?)"
"""Due at ``now`` (first parameter), or held back beyond the horizon (the second:
``now + horizon``) by a clock that was ahead."""


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


def _entry(row: Any) -> Entry:
    return Entry(
        str(row[0]),
        int(row[1]),
        str(row[2]),
        float(row[3]),
        bytes(row[4]),
        int(row[5]),
        float(row[6]),
    )


class Outbox:
    """Outbox operations on a :class:`~.store.Store`; ``now`` is always the host's clock."""

    def __init__(self, store: Store, limits: OutboxLimits, horizon: float = 2 * DAY) -> None:
        """``horizon``: the longest wait the sender ever sets (seconds). A report or the
        gate held back further than that from a ``now`` was held back by a clock that
        was ahead at the time: it is due, so that one wrong tick cannot hold every
        report until the wrong date comes."""
        self.store = store
        self.limits = limits
        self.horizon = horizon

    def put(self, entry: Entry, now: float) -> int:
        """Store ``entry`` and enforce the bounds; returns how many reports were evicted."""
        return self.store.run(lambda c: self.put_in(c, entry, now))

    def put_in(self, c: Conn, entry: Entry, now: float) -> int:
        """:meth:`put`, inside a transaction already open on ``c``."""
        c.execute(
            f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (report_id) DO NOTHING",
            (
                entry.report_id,
                entry.sequence,
                entry.trigger,
                entry.created_at,
                entry.body,
                entry.attempts,
                entry.not_before,
            ),
        )
        return self._evict(c, now)

    def _evict(self, c: Conn, now: float) -> int:
        """Enforce age, count and bytes; counts what went, in the caller's transaction."""
        limits = self.limits
        gone = self._expire(c, now)
        while True:
            count, size = c.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox"
            ).fetchone()
            if (count <= limits.max_reports and size <= limits.max_bytes) or count <= 1:
                break
            c.execute(
                "DELETE FROM outbox WHERE report_id = "
                f"(SELECT report_id FROM outbox {_EVICTION_ORDER} LIMIT 1)"
            )
            gone += 1
        add_counters(c, {"delivery.dropped": gone, "delivery.evicted": gone})
        return gone

    def _expire(self, c: Conn, now: float) -> int:
        cutoff = now - self.limits.max_age_days * DAY
        return int(c.execute("DELETE FROM outbox WHERE created_at < ?", (cutoff,)).rowcount)

    def due(self, now: float, limit: int = 16) -> list[Entry]:
        """Reports whose not-before time has come, oldest first (the gate aside)."""
        rows = self.store.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE {_DUE} ORDER BY sequence LIMIT ?",
                (now, now + self.horizon, limit),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    def pending(self) -> list[Entry]:
        """Every stored report, in sequence order (for export and status)."""
        rows = self.store.run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY sequence").fetchall()
        )
        return [_entry(row) for row in rows]

    def gate(self) -> float:
        """Host-clock time before which the sender tries nothing (0 when open)."""
        return float(self.store.get(GATE_KEY) or 0.0)

    def next_due(self, now: float | None = None) -> float | None:
        """When the sender may next try a report (host clock), or None when empty;
        given ``now``, a time beyond the horizon from it is ``now`` (see ``__init__``)."""

        def work(c: Conn) -> float | None:
            earliest = c.execute("SELECT min(not_before) FROM outbox").fetchone()[0]
            if earliest is None:
                return None
            due = max(float(earliest), _gate(c))
            if now is not None and due > now + self.horizon:
                return now
            return due

        return self.store.run(work)

    def size(self) -> tuple[int, int]:
        """How many reports are stored, and their bytes."""
        row = self.store.run(
            lambda c: c.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox"
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    # The sender's side ---------------------------------------------------------------

    def lease(self, now: float, hold: float) -> Entry | None:
        """The oldest report due at ``now``, held back from others until ``now + hold``.

        None when nothing is due or the gate is closed. Reports past the age bound
        are dropped (and counted) on the way.
        """

        def work(c: Conn) -> Entry | None:
            expired = self._expire(c, now)
            add_counters(c, {"delivery.dropped": expired, "delivery.evicted": expired})
            if now < _gate(c) <= now + self.horizon:
                return None
            row = c.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE {_DUE} ORDER BY sequence LIMIT 1",
                (now, now + self.horizon),
            ).fetchone()
            if row is None:
                return None
            entry = _entry(row)
            c.execute(
                "UPDATE outbox SET not_before = ? WHERE report_id = ?",
                (now + hold, entry.report_id),
            )
            return entry

        return self.store.run(work)

    def release(self, entry: Entry) -> None:
        """Give a leased report back untouched (its send was cancelled, not failed)."""
        self.store.run(
            lambda c: c.execute(
                "UPDATE outbox SET not_before = ? WHERE report_id = ?",
                (entry.not_before, entry.report_id),
            )
        )

    def sent(self, entry: Entry, event: history.Event, counts: Mapping[str, int]) -> None:
        """A 2xx: forget the report, open the gate, record it."""

        def work(c: Conn) -> None:
            c.execute("DELETE FROM outbox WHERE report_id = ?", (entry.report_id,))
            _open_gate(c)
            add_counters(c, counts)
            history.append(c, event)

        self.store.run(work)

    def logged(self, entry: Entry, event: history.Event) -> None:
        """Mode ``log``: the report was logged instead of sent; forget and record it."""

        def work(c: Conn) -> None:
            c.execute("DELETE FROM outbox WHERE report_id = ?", (entry.report_id,))
            history.append(c, event)

        self.store.run(work)

    def rejected(self, entry: Entry, event: history.Event, counts: Mapping[str, int]) -> None:
        """A final answer: forget the report as a counted loss; the endpoint is up."""
        self.sent(entry, event, {**counts, "delivery.dropped": 1, "delivery.rejected": 1})

    def failed(
        self,
        entry: Entry,
        event: history.Event,
        counts: Mapping[str, int],
        until: Callable[[int], float],
    ) -> tuple[int, float]:
        """A failed series: keep the report, close the gate until ``until(failures)``.

        Returns the failures in a row (this one included) and the not-before time.
        """

        def work(c: Conn) -> tuple[int, float]:
            row = c.execute("SELECT value FROM kv WHERE key = ?", (FAILURES_KEY,)).fetchone()
            failures = (int(row[0]) if row else 0) + 1
            when = until(failures)
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, not_before = ? WHERE report_id = ?",
                (when, entry.report_id),
            )
            c.execute(
                _SET_TWO,
                (FAILURES_KEY, str(failures), GATE_KEY, repr(when)),
            )
            add_counters(c, {**counts, "delivery.failed": 1})
            history.append(c, event)
            return failures, when

        return self.store.run(work)


def _gate(c: Conn) -> float:
    row = c.execute("SELECT value FROM kv WHERE key = ?", (GATE_KEY,)).fetchone()
    return float(row[0]) if row else 0.0


def _open_gate(c: Conn) -> None:
    c.execute(_SET_TWO, (FAILURES_KEY, "0", GATE_KEY, "0"))
