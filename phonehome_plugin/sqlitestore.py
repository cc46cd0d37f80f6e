"""The embedded backend of :class:`~.store.Store`: one SQLite file under ``app.data_dir``.

Every process of the installation on this machine opens the same file; SQLite's
locking (WAL mode, ``BEGIN IMMEDIATE``) makes claims and counters atomic across them.

When the file fails in use (a full disk, an I/O error) the store moves, with one
warning, to an in-memory database of the same shape, starting from a copy of
the file: telemetry loses durability, the host loses nothing. A busy database
(another process holding the write lock past the busy timeout) is not a broken
file: that error reaches the caller, and the next attempt uses the file again.
Opening the file, and what a file that cannot be opened means, is
:mod:`.sqliteopen`.

Forks: see :mod:`.forksafe`. In the child each store closes nothing it
inherited and opens its own connection on first use; a store whose transaction
did not end in time before the fork carries on in memory there.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from phonehome_plugin import forksafe
from phonehome_plugin.store import SCHEMA, Conn, Store, statements

log = logging.getLogger("phonehome_plugin.store")  # one logger name for every backend

T = TypeVar("T")

# Primary SQLite result codes that mean "this file cannot be used" (as opposed to
# busy, a constraint, or a bug in a statement): permission, read-only, I/O error,
# corrupt, full, cannot open, large-file support, not a database.
_FILE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 22, 26})

# Seconds one statement waits for another process's lock.
BUSY_TIMEOUT = 5.0


def primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``error`` (extended codes folded), if it has one."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def file_failed(error: sqlite3.Error) -> bool:
    """True when ``error`` says the database file itself is unusable."""
    code = primary_code(error)
    if code is None:
        text = str(error).lower()
        return any(
            word in text
            for word in ("readonly", "read-only", "disk", "malformed", "not a database", "open")
        )
    return code in _FILE_FAILURES


class SqliteStore(Store):
    """One connection to the state file (``path``; None for memory only).

    Use :meth:`run` for every access: it wraps the work in an immediate
    transaction and moves to memory if the file fails.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory = path is None
        self.lock = threading.Lock()
        self.conn = connect(":memory:" if path is None else str(path))
        self._closed = False
        self._reconnect = False
        forksafe.track(self)

    def run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work(conn)`` in one immediate transaction (atomic across processes)."""
        with self.lock:
            if self._reconnect:
                self._reopen()
            try:
                return self._transaction(work)
            except sqlite3.DatabaseError as error:
                if self.memory or not file_failed(error):
                    raise
                self._fall_back(f"{type(error).__name__}: {error}")
                return self._transaction(work)

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        with immediate(self.conn):
            return work(self.conn)

    def _fall_back(self, why: str) -> None:
        log.warning(
            "phonehome: state file %s failed (%s); keeping state in memory", self.path, why
        )
        memory = connect(":memory:")
        with suppress(sqlite3.Error):
            copy_into(memory, self.conn)
        prepare(memory)
        close_quietly(self.conn)
        self.conn, self.memory = memory, True

    def _reopen(self) -> None:
        """Open this process's own connection (after a fork: see .forksafe)."""
        self._reconnect = False
        assert self.path is not None
        try:
            self.conn = connect(str(self.path))
        except sqlite3.Error as error:
            self.conn = connect(":memory:")
            prepare(self.conn)
            self.memory = True
            log.warning(
                "phonehome: cannot reopen %s after a fork (%s); keeping state in memory",
                self.path,
                error,
            )

    def _detach_file(self) -> None:
        """Close the file connection before a fork (the lock is held, so no thread is in it).

        A child must never touch, or even close, a SQLite connection it inherited:
        closing one there was seen to hang, and SQLite's per-process lock records
        would be wrong for it. Both sides reopen on their next use instead.
        """
        if not self.memory and not self._closed:
            close_quietly(self.conn)
            self._reconnect = True

    def _after_fork_in_child(self, quiet: bool) -> None:
        self.lock = threading.Lock()
        if self._closed or quiet:
            # Quiet: the parent closed the file connection before forking, so the
            # child inherits no SQLite file state and opens its own.
            return
        # A thread of the parent was inside this connection: leave it untouched forever.
        forksafe.abandon(self.conn)
        self.conn = connect(":memory:")
        prepare(self.conn)
        if not self.memory:
            self.memory = True
            log.warning(
                "phonehome: forked during a write to %s; this process keeps state in memory",
                self.path,
            )

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._reconnect = False
            close_quietly(self.conn)


def prepare(conn: sqlite3.Connection) -> None:
    """Create the tables, and move a history table of before the ``id`` column to it,
    inside the transaction open on ``conn`` (or, outside one, statement by statement)."""
    for statement in statements(SCHEMA):
        conn.execute(statement)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(history)")]
    if "id" not in columns:
        keep = "report_id, sequence, trigger, at, result, detail"
        conn.execute("ALTER TABLE history RENAME TO history_v1")
        conn.execute(statements(SCHEMA)[-1])
        conn.execute(
            f"INSERT INTO history (id, {keep}) SELECT rowid, {keep} FROM history_v1 ORDER BY rowid"
        )
        conn.execute("DROP TABLE history_v1")


def copy_into(memory: sqlite3.Connection, source: sqlite3.Connection) -> None:
    """Replace the database of ``memory`` by a copy of ``source``'s.

    Not ``Connection.backup``: it retries a source locked by another process
    forever, where reading an image gives up after the busy timeout.
    """
    image = bytearray(source.serialize())
    if len(image) > 19 and image[18] == 2:
        # A WAL file's header; memory has no WAL, so mark the copy as a journal one.
        image[18] = image[19] = 1
    memory.deserialize(bytes(image))


def connect(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def close_quietly(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.close()
