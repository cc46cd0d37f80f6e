"""The local record of what telemetry did, for ``phonehome history``.

Two tables, both bounded so that they never grow without limit:

- ``history``: every delivery outcome (sent, failed, rejected, logged), one row per
  attempt series, kept to the newest :data:`KEEP` rows (by ``id``, in insertion
  order: writers are serialised);
- ``sent_reports``: the exact bytes of every report that went through delivery, one
  row per report (its latest outcome), with the body's sha256, the endpoint it went
  to, the host-clock time and the result. Bounded by :class:`KeptLimits` (count,
  bytes and age, host clock); the defaults keep at least 30 days of hourly reports
  with room for restarts: 1000 reports, 32 MiB, 45 days.

The body kept is the one the sender POSTs before gzip, so its sha256 is the sha256
of what the receiver reads once it has decoded the request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from phonehome_plugin.state.store import Conn, Store

KEEP = 1000
DAY = 86400.0
_KEPT_COLUMNS = "report_id, sequence, trigger, at, endpoint, result, detail, sha256, body"


@dataclass(frozen=True)
class Event:
    """What happened to one report at one time (host clock, epoch seconds)."""

    report_id: str
    sequence: int
    trigger: str
    at: float
    result: str
    detail: str


@dataclass(frozen=True)
class KeptLimits:
    """Bounds of the kept bodies of sent reports; the oldest go first.

    The defaults hold 30 days of hourly reports (720) with a third to spare for
    startups, and reports of up to 32 KiB each on average.
    """

    max_reports: int = 1000
    max_bytes: int = 32 * 1024 * 1024
    max_age_days: float = 45.0


@dataclass(frozen=True)
class Sent:
    """One report's exact body as it went through delivery, and what came of it."""

    report_id: str
    sequence: int
    trigger: str
    at: float
    endpoint: str
    result: str
    detail: str
    sha256: str
    body: bytes


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


def digest(body: bytes) -> str:
    """The sha256 of ``body``, in hex: how a kept body, an export and a receiver agree."""
    return hashlib.sha256(body).hexdigest()


def keep(c: Conn, event: Event, body: bytes, endpoint: str, limits: KeptLimits) -> None:
    """Keep ``body`` as the report of ``event`` (replacing an earlier outcome of the same
    report), then trim to ``limits``; inside a transaction already open on ``c``."""
    c.execute(
        f"INSERT INTO sent_reports ({_KEPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (report_id) DO UPDATE SET at = excluded.at, endpoint = excluded.endpoint, "
        "result = excluded.result, detail = excluded.detail",
        (
            event.report_id,
            event.sequence,
            event.trigger,
            event.at,
            endpoint,
            event.result,
            event.detail,
            digest(body),
            body,
        ),
    )
    _trim(c, event.at, limits)


def _trim(c: Conn, now: float, limits: KeptLimits) -> None:
    c.execute("DELETE FROM sent_reports WHERE at < ?", (now - limits.max_age_days * DAY,))
    # One aggregate first (one call into the database, however many are kept): the
    # bodies are read in order only when a bound is passed, not at every report sent.
    count, size = c.execute(
        "SELECT count(*), coalesce(sum(length(body)), 0) FROM sent_reports"
    ).fetchone()
    if int(count) <= limits.max_reports and int(size) <= limits.max_bytes:
        return
    rows = c.execute(
        "SELECT report_id, length(body) FROM sent_reports ORDER BY at DESC, sequence DESC"
    ).fetchall()
    total, gone = 0, []
    for index, (report_id, size) in enumerate(rows):
        total += int(size)
        # The newest is kept whatever its size: the bound is on what piles up.
        if index >= limits.max_reports or (index > 0 and total > limits.max_bytes):
            gone.append((str(report_id),))
    if gone:
        c.executemany("DELETE FROM sent_reports WHERE report_id = ?", gone)


def _sent(row: Any) -> Sent:
    rid, seq, trigger, at, endpoint, result, detail, sha, body = row
    return Sent(
        str(rid),
        int(seq),
        str(trigger),
        float(at),
        str(endpoint),
        str(result),
        str(detail),
        str(sha),
        bytes(body),  # a BLOB: bytes from SQLite, bytes or memoryview from psycopg
    )


def kept(store: Store, limit: int | None = None) -> list[Sent]:
    """The kept reports, newest first (by sequence), at most ``limit`` of them."""
    sql = f"SELECT {_KEPT_COLUMNS} FROM sent_reports ORDER BY sequence DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_sent(row) for row in store.run(lambda c: c.execute(sql).fetchall())]


def digests(store: Store) -> dict[str, tuple[str, int]]:
    """Each kept report's sha256 and size in bytes, by report id (bodies not read)."""
    rows = store.run(
        lambda c: c.execute("SELECT report_id, sha256, length(body) FROM sent_reports").fetchall()
    )
    return {str(rid): (str(sha), int(size)) for rid, sha, size in rows}


def kept_report(store: Store, ref: str) -> Sent | None:
    """The kept report named by ``ref``: its sequence number, its report id, or ``last``."""
    args: tuple[object, ...] = ()
    if ref == "last":
        where = "ORDER BY sequence DESC LIMIT 1"
    elif ref.isascii() and ref.isdigit():
        where, args = "WHERE sequence = ?", (int(ref),)
    else:
        where, args = "WHERE report_id = ?", (ref,)
    row = store.run(
        lambda c: c.execute(f"SELECT {_KEPT_COLUMNS} FROM sent_reports {where}", args).fetchone()
    )
    return None if row is None else _sent(row)


def kept_before(store: Store, sequence: int) -> Sent | None:
    """The kept report just before ``sequence`` (the highest lower sequence), if any."""
    row = store.run(
        lambda c: c.execute(
            f"SELECT {_KEPT_COLUMNS} FROM sent_reports WHERE sequence < ? "
            "ORDER BY sequence DESC LIMIT 1",
            (sequence,),
        ).fetchone()
    )
    return None if row is None else _sent(row)
