"""The installation's durable state, behind one small interface: :class:`Store`.

It holds the instance id, counters that outlive a restart (lifetime execution
totals, the report sequence, delivery counts), claims that make a trigger fire
once per installation, the outbox and the history of what was sent. Every
process of the installation, on every node, uses the same state:

- by default an embedded SQLite file under ``app.data_dir`` (one machine, many
  processes; :mod:`.sqlite`), with an in-memory fallback when the file
  cannot be used;
- a PostgreSQL database when ``modules.phonehome.state_url`` names one (many
  nodes; :mod:`.postgres`, needing the ``maestrohub-phonehome[postgres]`` extra).

Every access is :meth:`Store.run`: one transaction, serialised against every
other writer of the installation (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so claims, counters and leases are atomic
across processes and nodes. The SQL of the plugin is written once, in the
portable subset both speak (``?`` placeholders, ``INSERT ... ON CONFLICT``, no
``rowid``); the PostgreSQL backend translates placeholders and column types.

A store opened read-only (``open_store(..., read_only=True)``, for the
``phonehome`` command) runs the same code on the same state, but creates,
migrates, writes and locks nothing: each :meth:`Store.run` is one read
transaction that waits for no writer and holds no writer back, a write raises
:class:`ReadOnlyError`, and state that cannot be read raises a
:class:`NoStateError` saying why (never a store in memory instead).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

FILENAME = "phonehome.sqlite3"
T = TypeVar("T")
S = TypeVar("S", bound="Store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL, done INTEGER NOT NULL,
    report_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS outbox (
    report_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, trigger TEXT NOT NULL,
    created_at REAL NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entities (
    module TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (module, key)
);
CREATE TABLE IF NOT EXISTS entity_counts (
    module TEXT NOT NULL, facet TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (module, facet, name)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY, report_id TEXT NOT NULL, sequence INTEGER NOT NULL,
    trigger TEXT NOT NULL, at REAL NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sent_reports (
    report_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, trigger TEXT NOT NULL,
    at REAL NOT NULL, endpoint TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL,
    sha256 TEXT NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    report_id TEXT PRIMARY KEY, at REAL NOT NULL, target TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_sequence ON outbox (sequence);
CREATE INDEX IF NOT EXISTS outbox_by_created_at ON outbox (created_at);
CREATE INDEX IF NOT EXISTS outbox_by_not_before ON outbox (not_before);
CREATE INDEX IF NOT EXISTS sent_reports_by_at ON sent_reports (at);
"""
"""The tables, in SQLite's dialect (:mod:`.postgres` maps the types for PostgreSQL).
``entity_counts`` what reports count of ``entities`` (:mod:`.entities`),
``sent_reports`` keeps the bodies of delivered reports (:mod:`.history`), ``exports``
what ``phonehome export`` wrote (:mod:`.outbox`). The indexes make the outbox's
lease, its earliest due time and its age bound cost the same at any queue length."""


def statements(script: str) -> list[str]:
    """The statements of ``script`` (no semicolons inside string literals, by design)."""
    return [part.strip() for part in script.split(";") if part.strip()]


class NoStateError(Exception):
    """A store opened read-only finds no state to read; the message says why, in one line."""


class NoDataDirError(NoStateError):
    """The data dir itself is missing: most likely a wrong ``--data-dir``."""


class BrokenStateError(NoStateError):
    """The state exists but cannot be read (corrupt, not the plugin's, unreachable)."""


class ReadOnlyError(Exception):
    """A write was attempted through a store opened read-only; nothing was written."""


class StateUnavailableError(Exception):
    """The installation's shared state cannot be reached now (the message says why,
    in one line, credentials masked). ``lasting`` when trying again cannot help (the
    backend's library is not installed)."""

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class Cursor(Protocol):
    """What the plugin uses of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """What :meth:`Store.run` hands to its work: ``execute`` with ``?`` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...


def never(holder: str, stamp: float) -> bool:
    """The default of :meth:`Store.claim_report`: another owner's claim is never taken."""
    return False


class Store:
    """The state of one installation, shared by the threads of one process.

    Backends implement :meth:`run` and :meth:`close`; everything else is written
    on top of :meth:`run` in portable SQL. ``memory`` is True when the state lives
    only in this process (a fallback); ``path`` is the SQLite file, if any;
    ``read_only`` is True when every write raises :class:`ReadOnlyError`.
    """

    path: Path | None = None
    memory: bool = False
    read_only: bool = False

    def run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work(conn)`` in one transaction, atomic across the installation.

        Read-only: one read transaction; a write in ``work`` raises
        :class:`ReadOnlyError`, a failure to read :class:`BrokenStateError`.
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Give up any server connection until the next :meth:`run` (which opens one
        again); a store with nothing to give up does nothing."""

    def compact(self, full: bool = False) -> None:
        """Give the file system back the space of deleted rows, where only the plugin
        can ask for it (SQLite's free pages); best effort, never raises. Called after a
        report is settled; ``full`` after a backlog was drained (every free page and the
        whole journal given back, not only past a threshold). Does nothing on a server
        database, whose own vacuum reclaims space."""

    def _after_fork_in_child(self, clean: bool) -> None:
        """Called in a forked child before any other thread exists (see .forksafe);
        ``clean`` when no SQLite call of the parent was in progress at the fork."""

    # Small helpers used by every part of the plugin -------------------------------

    def get(self, key: str) -> str | None:
        row = self.run(lambda c: c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone())
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self.run(lambda c: c.execute(UPSERT_KV, (key, value)))

    def setdefault(self, key: str, make: Callable[[], str]) -> str:
        """The value at ``key``; the first process to ask stores ``make()``."""

        def work(c: Conn) -> str:
            c.execute(INSERT_KV_ONCE, (key, make()))
            return str(c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()[0])

        return self.run(work)

    def instance_id(self) -> str:
        return self.setdefault("instance_id", lambda: str(uuid.uuid4()))

    def add(self, deltas: Mapping[str, int]) -> None:
        """Add to named counters (created at zero)."""
        if any(deltas.values()):
            self.run(lambda c: add_counters(c, deltas))

    def counters(self, prefix: str) -> dict[str, int]:
        """Counters whose name starts with ``prefix``, keyed by the rest of the name."""
        rows = self.run(
            lambda c: c.execute(
                "SELECT name, value FROM counters WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
        )
        return {str(name)[len(prefix) :]: int(value) for name, value in rows}

    def take(self, prefix: str) -> dict[str, int]:
        """Counters under ``prefix``, reset to zero in the same transaction."""

        return self.run(lambda c: take_counters(c, prefix))

    def next_sequence(self) -> int:
        return self.run(next_sequence)

    def claim(
        self, key: str, owner: str, now: float, may_take: Callable[[str, float], bool] = never
    ) -> bool:
        """Take the claim ``key`` unless it is done or another owner holds it and
        ``may_take(holder, stamp)`` says no (see :meth:`claim_report`)."""
        return self.claim_report(key, owner, now, "", may_take) is not None

    def claim_report(
        self,
        key: str,
        owner: str,
        now: float,
        report_id: str,
        may_take: Callable[[str, float], bool] = never,
    ) -> str | None:
        """Take the claim ``key`` for ``owner``; the claim's report id, or None when not
        taken: the claim is done, or another owner holds it and ``may_take(holder,
        stamp)`` (the holder's token and the ``now`` it claimed with) says it may not
        be taken over. The holder itself may always claim again. ``now`` is stored as
        the stamp that tells one claim of ``key`` from the next; no clock is compared
        here (:mod:`.owner` decides when a holder is gone).

        The report id is fixed by the first claim of ``key`` (``report_id``) and kept
        by every later one, this owner's or another's after a takeover: however
        often a trigger is built again after a fault, it is the same report under the
        same ``Idempotency-Key``, and the receiver keeps it once.
        """

        return self.run(lambda c: claim_in(c, key, owner, now, report_id, may_take))

    def holder(self, key: str) -> tuple[str, bool] | None:
        """The owner of the claim ``key`` and whether it is done; None if never claimed."""
        row = self.run(
            lambda c: c.execute("SELECT owner, done FROM claims WHERE key=?", (key,)).fetchone()
        )
        return None if row is None else (str(row[0]), bool(row[1]))

    def settle(self, key: str, owner: str, work: Callable[[Conn], T]) -> tuple[bool, T | None]:
        """Run ``work(conn)`` and finish the claim ``key``, in one transaction, if
        ``owner`` still holds it: ``(True, work's result)``; ``(False, None)``, and
        nothing done, when the claim is finished or another owner took it over.

        Everything a trigger changes (its report in the outbox, the counts the
        report carries taken, the schedule moved on) commits together with the
        claim's end, or none of it does: a fault at any point leaves either the
        settled trigger or the claim as it was, to be built again (same report id).
        A commit whose outcome is unknown (the connection broke during ``COMMIT``)
        is resolved by reading back: the next claim of ``key`` finds it done or not.
        """

        def txn(c: Conn) -> tuple[bool, T | None]:
            row = c.execute("SELECT owner, done FROM claims WHERE key=?", (key,)).fetchone()
            if row is None or row[1] or row[0] != owner:
                return False, None
            result = work(c)
            c.execute("UPDATE claims SET done=1 WHERE key=?", (key,))
            return True, result

        return self.run(txn)

    def finish_claim(self, key: str) -> None:
        self.run(lambda c: c.execute("UPDATE claims SET done=1 WHERE key=?", (key,)))

    def is_done(self, key: str) -> bool:
        return self.run(lambda c: done_in(c, key))


UPSERT_KV = (
    "INSERT INTO kv (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
"""Set one key (several, with more ``(?, ?)`` rows appended)."""
INSERT_KV_ONCE = "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
"""Set one key unless it is set already (the first writer's value stays)."""
_UPSERT_ADD = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
)


def add_counters(c: Conn, deltas: Mapping[str, int]) -> None:
    """Add to named counters inside a transaction already open on ``c``."""
    rows = [(name, value) for name, value in sorted(deltas.items()) if value]
    if rows:
        c.executemany(_UPSERT_ADD, rows)


def claim_in(
    c: Conn,
    key: str,
    owner: str,
    now: float,
    report_id: str,
    may_take: Callable[[str, float], bool] = never,
) -> str | None:
    """:meth:`Store.claim_report`, inside a transaction already open on ``c``."""
    row = c.execute("SELECT owner, claimed_at, done FROM claims WHERE key=?", (key,)).fetchone()
    if row is not None and (
        row[2] or (row[0] != owner and not may_take(str(row[0]), float(row[1])))
    ):
        return None
    c.execute(
        "INSERT INTO claims (key, owner, claimed_at, done, report_id) "
        "VALUES (?, ?, ?, 0, ?) "
        "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, "
        "claimed_at = excluded.claimed_at, done = 0",
        (key, owner, now, report_id),
    )
    return str(c.execute("SELECT report_id FROM claims WHERE key=?", (key,)).fetchone()[0])


def done_in(c: Conn, key: str) -> bool:
    """Whether the claim ``key`` is done, inside a transaction already open on ``c``."""
    row = c.execute("SELECT done FROM claims WHERE key=?", (key,)).fetchone()
    return bool(row and row[0])


def take_counters(c: Conn, prefix: str) -> dict[str, int]:
    """:meth:`Store.take`, inside a transaction already open on ``c``."""
    rows = c.execute(
        "SELECT name, value FROM counters WHERE substr(name, 1, ?) = ?",
        (len(prefix), prefix),
    ).fetchall()
    c.execute("DELETE FROM counters WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
    return {str(name)[len(prefix) :]: int(value) for name, value in rows if value}


def next_sequence(c: Conn) -> int:
    """The installation's next report sequence number, inside a transaction on ``c``."""
    c.execute(_UPSERT_ADD, ("sequence", 1))
    return int(c.execute("SELECT value FROM counters WHERE name='sequence'").fetchone()[0])


def get_in(c: Conn, key: str) -> str | None:
    """:meth:`Store.get`, inside a transaction already open on ``c``."""
    row = c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def readable(store: S) -> S:
    """``store`` once one read of its tables succeeded (a store opened read-only is
    checked so before it is handed out); closed, and the read's error raised, if not."""
    try:
        store.run(lambda c: c.execute("SELECT count(*) FROM kv").fetchone())
    except BaseException:
        store.close()
        raise
    return store
