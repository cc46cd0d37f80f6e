"""The durable outbox: every report is stored here before any send is tried.

A report leaves the outbox only after a 2xx answer (or as a counted loss: a
final 4xx, or eviction). The outbox is bounded by count, bytes and age; when a
bound is passed, the oldest periodic reports go first and the first-user report
last, and every eviction is counted.

Reports for air-gapped sites (mode ``offline``): a startup or first-user report
that ``phonehome export`` has not written yet is never dropped for its age, and is
evicted for count or bytes only once every periodic and every exported report has
gone: it is the one report of its kind. :meth:`Outbox.mark_exported` records what an
export wrote (the ``exports`` table), so that the next export writes only the new
reports (:meth:`Outbox.unexported`).

Every report that goes through delivery (sent, refused, failed, logged) has its
exact body kept in the history (:func:`.history.keep`), in the transaction that
settles it, with the endpoint it went to.

Going back to mode ``send`` after a long time offline: the sender drains the
backlog at a bounded rate (:class:`Pace`, which the worker sets): at most
:data:`DRAIN_BURST` reports per :data:`DRAIN_WINDOW` seconds of host clock across
the installation (the window is kept in the store), so that the receiver never sees
a burst of hundreds of reports from one installation. Normal operation (a startup,
a first-user and a periodic report at once) is well within it.

Sending goes through :meth:`Outbox.lease`: the sender takes one due report at a
time, and the lease (a not-before time a little ahead on the host's clock) keeps
the other processes of the installation from sending the same report at the same
time. A process that dies mid-send leaves the lease to run out; the report is
then due again. Each outcome is settled in one transaction (:meth:`Outbox.sent`,
:meth:`Outbox.rejected`, :meth:`Outbox.failed`), so a crash never leaves a report
both delivered and pending, nor a count half made.

The outbox's count and bytes are kept as running totals (:data:`TOTALS`, in the
``counters`` table, changed in the transaction of every insert and delete), so
that enforcing the bounds reads two rows, not the whole table: a put costs the
same with 10 reports queued or 10,000. Totals that are missing (a state from before
them) are counted once, and counted again before anything is evicted on their word.

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
from phonehome_plugin.state.store import UPSERT_KV, Conn, Store, add_counters

DAY = 86400.0
GATE_KEY = "delivery.not_before"
"""kv: host-clock epoch seconds before which no report is sent (0 when open)."""
FAILURES_KEY = "delivery.consecutive_failures"
"""kv: failed series in a row, the exponent of the backoff between series."""
PACE_KEY = "delivery.window"
"""kv: ``"<start> <count>"``: host-clock start of the current drain window, and the
reports leased in it."""
BACKLOG = 8
"""Reports settled in a row, the outbox then empty, after which the state file is
compacted in full (:meth:`Outbox._settled`). The usual cycle, one report queued and
sent, never reaches it, and so never pays for a checkpoint of its own."""
TOTALS = ("outbox.count", "outbox.bytes")
"""counters: how many reports the outbox holds, and their bytes (see the module
docstring)."""
_SIZE = "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox"
"""The outbox counted row by row (:meth:`Outbox.size`, and :data:`TOTALS` set anew)."""
DRAIN_BURST = 10
"""Reports leased at most per :data:`DRAIN_WINDOW`, across the installation."""
DRAIN_WINDOW = 60.0
"""Seconds of host clock of one drain window."""


@dataclass(frozen=True)
class Pace:
    """At most ``burst`` reports leased per ``window`` seconds of host clock."""

    burst: int = DRAIN_BURST
    window: float = DRAIN_WINDOW


_EXPORTED = "report_id IN (SELECT report_id FROM exports)"
# Eviction order: periodic reports are the most replaceable, then the reports an
# export has written (startup before first-user), then the startup reports no
# export wrote, and the first-user report (once in the life of the installation)
# last of all.
_EVICTION_ORDER = (
    "ORDER BY CASE WHEN trigger = 'periodic' THEN 0 "
    f"WHEN {_EXPORTED} THEN (CASE trigger WHEN 'startup' THEN 1 ELSE 2 END) "
    "WHEN trigger = 'startup' THEN 3 ELSE 4 END, created_at"
)
_AGES_OUT = f"(trigger = 'periodic' OR {_EXPORTED})"
"""Reports the age bound applies to: a startup or first-user report no export wrote
stays (an air-gapped site exports by hand, and may do so rarely)."""
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

    def __init__(
        self,
        store: Store,
        limits: OutboxLimits,
        horizon: float = 2 * DAY,
        endpoint: str = "",
        kept: history.KeptLimits | None = None,
        pace: Pace | None = None,
    ) -> None:
        """``horizon``: the longest wait the sender ever sets (seconds). A report or the
        gate held back further than that from a ``now`` was held back by a clock that
        was ahead at the time: it is due, so that one wrong tick cannot hold every
        report until the wrong date comes. ``endpoint`` (credentials masked) is
        recorded with every kept body; ``kept`` bounds the kept bodies; ``pace`` bounds
        the rate of leases (None: unbounded, for tools that drain on purpose)."""
        self.store = store
        self.limits = limits
        self.horizon = horizon
        self.endpoint = endpoint
        self.kept = kept or history.KeptLimits()
        self.pace = pace
        self._in_a_row = 0

    def put(self, entry: Entry, now: float) -> int:
        """Store ``entry`` and enforce the bounds; returns how many reports were evicted."""
        return self.store.run(lambda c: self.put_in(c, entry, now))

    def put_in(self, c: Conn, entry: Entry, now: float) -> int:
        """:meth:`put`, inside a transaction already open on ``c``."""
        _totals(c)  # counted before the insert, if they were missing, so it adds once
        added = c.execute(
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
        ).rowcount
        if added == 1:
            add_counters(c, {TOTALS[0]: 1, TOTALS[1]: len(entry.body)})
        return self._evict(c, now)

    def _evict(self, c: Conn, now: float) -> int:
        """Enforce age, count and bytes; counts what went, in the caller's transaction."""
        limits = self.limits
        gone = self._expire(c, now)
        count, size = _totals(c)
        if not _within(limits, count, size):
            count, size = _recount(c)  # nothing is evicted on the word of a running total
        while not _within(limits, count, size):
            removed = c.execute(
                "DELETE FROM outbox WHERE report_id = "
                f"(SELECT report_id FROM outbox {_EVICTION_ORDER} LIMIT 1) "
                "RETURNING length(body)"
            ).fetchall()
            if not removed:
                break
            count, size = count - 1, size - int(removed[0][0])
            _less(c, removed)
            gone += 1
        add_counters(c, {"delivery.dropped": gone, "delivery.evicted": gone})
        # A mark whose report has gone (sent, evicted) tells nothing any more.
        c.execute("DELETE FROM exports WHERE report_id NOT IN (SELECT report_id FROM outbox)")
        return gone

    def _expire(self, c: Conn, now: float) -> int:
        cutoff = now - self.limits.max_age_days * DAY
        removed = c.execute(
            f"DELETE FROM outbox WHERE created_at < ? AND {_AGES_OUT} RETURNING length(body)",
            (cutoff,),
        ).fetchall()
        _less(c, removed)
        return len(removed)

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
        given ``now``, a time beyond the horizon from it is ``now`` (see ``__init__``).
        A full drain window holds it back to the window's end."""
        return self.store.run(lambda c: self.next_due_in(c, now))

    def next_due_in(self, c: Conn, now: float | None = None) -> float | None:
        """:meth:`next_due`, inside a transaction already open on ``c``."""
        earliest = c.execute("SELECT min(not_before) FROM outbox").fetchone()[0]
        if earliest is None:
            return None
        due = max(float(earliest), _gate(c))
        pace = self.pace
        start, count = _window(c)
        if pace is not None and count >= pace.burst and (now is None or start <= now):
            due = max(due, start + pace.window)
        if now is not None and due > now + self.horizon:
            return now
        return due

    # Export (mode offline) -----------------------------------------------------------

    def unexported(self) -> list[Entry]:
        """The stored reports no export has written yet, in sequence order."""
        rows = self.store.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE NOT {_EXPORTED} ORDER BY sequence"
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    def mark_exported(self, report_ids: list[str], at: float, target: str) -> None:
        """Record that an export to ``target`` wrote ``report_ids`` at ``at`` (epoch
        seconds); a report no longer stored is not marked."""

        def work(c: Conn) -> None:
            c.executemany(
                "INSERT INTO exports (report_id, at, target) "
                "SELECT report_id, ?, ? FROM outbox WHERE report_id = ? "
                "ON CONFLICT (report_id) DO UPDATE SET at = excluded.at, target = excluded.target",
                [(at, target, report_id) for report_id in report_ids],
            )

        self.store.run(work)

    def size(self) -> tuple[int, int]:
        """How many reports are stored, and their bytes."""
        row = self.store.run(lambda c: c.execute(_SIZE).fetchone())
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
            pace = self.pace
            start, count = _window(c)
            if pace is not None and not 0 <= now - start < pace.window:
                start, count = now, 0  # a new window (or a clock set back)
            if pace is not None and count >= pace.burst:
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
            if pace is not None:
                c.execute(UPSERT_KV, (PACE_KEY, f"{start!r} {count + 1}"))
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

    def sent(self, entry: Entry, event: history.Event, counts: Mapping[str, int]) -> float | None:
        """A 2xx: forget the report, open the gate, record it and keep its body. Returns
        :meth:`next_due` at the event's time, read in the same transaction."""

        def work(c: Conn) -> float | None:
            _forget(c, entry)
            _open_gate(c)
            add_counters(c, counts)
            history.append(c, event)
            history.keep(c, event, entry.body, self.endpoint, self.kept)
            return self.next_due_in(c, event.at)

        due = self.store.run(work)
        self._settled(emptied=due is None)
        return due

    def logged(self, entry: Entry, event: history.Event) -> None:
        """Mode ``log``: the report was logged instead of sent; forget and record it
        (its body is kept too, with no endpoint: it went nowhere)."""

        def work(c: Conn) -> bool:
            _forget(c, entry)
            history.append(c, event)
            history.keep(c, event, entry.body, "", self.kept)
            return c.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None

        self._settled(emptied=self.store.run(work))

    def _settled(self, emptied: bool) -> None:
        """After a report left the outbox: compact the state file, in full when this
        emptied the outbox after :data:`BACKLOG` reports or more settled in a row (a
        drained backlog then leaves the file at its floor, not up to a ``-wal`` of
        :data:`~.sqlite.WAL_LIMIT` and a few hundred KiB of free pages above it)."""
        self._in_a_row += 1
        full = emptied and self._in_a_row >= BACKLOG
        if emptied:
            self._in_a_row = 0
        self.store.compact(full=full)

    def rejected(
        self, entry: Entry, event: history.Event, counts: Mapping[str, int]
    ) -> float | None:
        """A final answer: forget the report as a counted loss; the endpoint is up.
        Returns :meth:`next_due`, as :meth:`sent` does."""
        return self.sent(entry, event, {**counts, "delivery.dropped": 1, "delivery.rejected": 1})

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
            # What left for the endpoint, though it did not take it (yet).
            history.keep(c, event, entry.body, self.endpoint, self.kept)
            return failures, when

        return self.store.run(work)


def _gate(c: Conn) -> float:
    row = c.execute("SELECT value FROM kv WHERE key = ?", (GATE_KEY,)).fetchone()
    return float(row[0]) if row else 0.0


def _open_gate(c: Conn) -> None:
    c.execute(_SET_TWO, (FAILURES_KEY, "0", GATE_KEY, "0"))


def _window(c: Conn) -> tuple[float, int]:
    """The drain window's start and the reports leased in it (``(0.0, 0)`` if none)."""
    row = c.execute("SELECT value FROM kv WHERE key = ?", (PACE_KEY,)).fetchone()
    try:
        start, count = str(row[0]).split() if row else ("0", "0")
        return float(start), int(count)
    except ValueError:  # not written by this code: a new window
        return 0.0, 0


def _within(limits: OutboxLimits, count: int, size: int) -> bool:
    # The newest report stays whatever its size: the bounds are on what piles up.
    return (count <= limits.max_reports and size <= limits.max_bytes) or count <= 1


def _totals(c: Conn) -> tuple[int, int]:
    """The outbox's count and bytes (:data:`TOTALS`), counted first if missing."""
    found = dict(
        c.execute("SELECT name, value FROM counters WHERE name IN (?, ?)", TOTALS).fetchall()
    )
    if len(found) < len(TOTALS):
        return _recount(c)
    return int(found[TOTALS[0]]), int(found[TOTALS[1]])


def _recount(c: Conn) -> tuple[int, int]:
    """Count the outbox itself (one scan) and set :data:`TOTALS` to what was found."""
    count, size = c.execute(_SIZE).fetchone()
    c.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [(TOTALS[0], int(count)), (TOTALS[1], int(size))],
    )
    return int(count), int(size)


def _less(c: Conn, removed: list[Any]) -> None:
    """Take the reports just deleted (rows of their ``length(body)``) off the totals."""
    if not removed:
        return
    found = c.execute("SELECT count(*) FROM counters WHERE name IN (?, ?)", TOTALS).fetchone()
    if int(found[0]) < len(TOTALS):
        _recount(c)  # counted after the delete: it is already taken off
        return
    add_counters(c, {TOTALS[0]: -len(removed), TOTALS[1]: -sum(int(r[0]) for r in removed)})


def _forget(c: Conn, entry: Entry) -> None:
    """Delete ``entry`` from the outbox (a settled report), keeping the totals."""
    removed = c.execute(
        "DELETE FROM outbox WHERE report_id = ? RETURNING length(body)", (entry.report_id,)
    ).fetchall()
    _less(c, removed)
