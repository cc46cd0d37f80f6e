"""The installation's durable state: one SQLite file under ``app.data_dir``.

It holds the instance id, counters that outlive a restart (lifetime execution
totals, the report sequence, delivery counts), claims that make a trigger fire
once per installation, the outbox and the history of what was sent. Every
process of the installation opens the same file; SQLite's locking (WAL mode)
makes claims and counters atomic across them.

When the file cannot be used (read-only or missing directory, full disk, a
corrupt file) the store falls back, with one warning, to an in-memory database
of the same shape: telemetry loses durability, the host loses nothing. A
corrupt file found at open is moved aside (``<name>.corrupt-<hex>``), never
deleted, and a fresh file takes its place. A busy database (another process
holding the write lock past the busy timeout) is not a broken file: that error
reaches the caller, and the next attempt uses the file again.

Forks: a process that forks while one of its threads is inside a transaction
would hand the child a held lock (the :class:`Store`'s own, and SQLite's
in-process record of the file's locks). So ``os.fork()`` waits, up to
:data:`FORK_WAIT` seconds, for every open store's transaction to end; in the
child each store closes the connection it inherited and opens its own on first
use. A store whose transaction did not end in time leaves its connection alone
in the child and carries on in memory there.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

FILENAME = "phonehome.sqlite3"
FORK_WAIT = 1.0
"""Seconds ``os.fork()`` waits for a store's transaction to end before forking anyway."""
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL, done INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    report_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, trigger TEXT NOT NULL,
    created_at REAL NOT NULL, body BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS history (
    report_id TEXT NOT NULL, sequence INTEGER NOT NULL, trigger TEXT NOT NULL,
    at REAL NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL
);
"""

# Primary SQLite result codes that mean "this file cannot be used" (as opposed to
# busy, a constraint, or a bug in a statement): permission, read-only, I/O error,
# corrupt, full, cannot open, large-file support, not a database.
_FILE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 22, 26})


def file_failed(error: sqlite3.Error) -> bool:
    """True when ``error`` says the database file itself is unusable."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        text = str(error).lower()
        return any(
            word in text
            for word in ("readonly", "read-only", "disk", "malformed", "not a database", "open")
        )
    return (code & 0xFF) in _FILE_FAILURES


class Store:
    """One connection to the state database, shared by the threads of one process.

    ``path`` is None for a memory-only store. Use :meth:`run` for every access:
    it wraps the work in a transaction and moves to memory if the file fails.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory = path is None
        self.lock = threading.Lock()
        self.conn = _connect(":memory:" if path is None else str(path))
        self._closed = False
        self._reconnect = False
        _live.add(self)

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
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

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with _immediate(self.conn):
            return work(self.conn)

    def _fall_back(self, why: str) -> None:
        log.warning(
            "phonehome: state file %s failed (%s); keeping state in memory", self.path, why
        )
        memory = _connect(":memory:")
        with suppress(sqlite3.Error):
            self.conn.backup(memory)
        memory.executescript(SCHEMA)
        _close_quietly(self.conn)
        self.conn, self.memory = memory, True

    def _reopen(self) -> None:
        """Open this process's own connection (after a fork: see the module docs)."""
        self._reconnect = False
        assert self.path is not None
        try:
            self.conn = _connect(str(self.path))
        except sqlite3.Error as error:
            self.conn = _connect(":memory:")
            self.conn.executescript(SCHEMA)
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
            _close_quietly(self.conn)
            self._reconnect = True

    def _after_fork_in_child(self, quiet: bool) -> None:
        """Called in a forked child; ``quiet`` when no transaction was open at the fork."""
        self.lock = threading.Lock()
        if self._closed:
            return
        if quiet:
            # The parent closed the file connection before forking (_before_fork),
            # so the child inherits no SQLite file state and opens its own.
            return
        # A thread of the parent was inside this connection: leave it untouched forever.
        _inherited.append(self.conn)
        self.conn = _connect(":memory:")
        self.conn.executescript(SCHEMA)
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
            _close_quietly(self.conn)

    # Small helpers used by every part of the plugin -------------------------------

    def get(self, key: str) -> str | None:
        row = self.run(lambda c: c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone())
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self.run(lambda c: c.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value)))

    def setdefault(self, key: str, make: Callable[[], str]) -> str:
        """The value at ``key``; the first process to ask stores ``make()``."""

        def work(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO kv VALUES (?, ?)", (key, make()))
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

        def work(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute(
                "SELECT name, value FROM counters WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
            c.execute("DELETE FROM counters WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
            return {str(name)[len(prefix) :]: int(value) for name, value in rows if value}

        return self.run(work)

    def next_sequence(self) -> int:
        def work(c: sqlite3.Connection) -> int:
            c.execute(_UPSERT_ADD, ("sequence", 1))
            return int(c.execute("SELECT value FROM counters WHERE name='sequence'").fetchone()[0])

        return self.run(work)

    def claim(self, key: str, owner: str, now: float, lease: float) -> bool:
        """Take the claim ``key`` unless it is done or another owner's lease is live."""

        def work(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT owner, claimed_at, done FROM claims WHERE key=?", (key,)
            ).fetchone()
            if row is not None and (row[2] or (row[0] != owner and row[1] + lease > now)):
                return False
            c.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, 0)", (key, owner, now))
            return True

        return self.run(work)

    def finish_claim(self, key: str) -> None:
        self.run(lambda c: c.execute("UPDATE claims SET done=1 WHERE key=?", (key,)))

    def is_done(self, key: str) -> bool:
        row = self.run(
            lambda c: c.execute("SELECT done FROM claims WHERE key=?", (key,)).fetchone()
        )
        return bool(row and row[0])


_UPSERT_ADD = (
    "INSERT INTO counters VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


def add_counters(c: sqlite3.Connection, deltas: Mapping[str, int]) -> None:
    """Add to named counters inside a transaction already open on ``c``."""
    rows = [(name, value) for name, value in deltas.items() if value]
    if rows:
        c.executemany(_UPSERT_ADD, rows)


def open_store(data_dir: Path | None) -> Store:
    """The store under ``data_dir``, or a memory store when the file cannot be used.

    A missing ``data_dir`` is created when its parent allows; otherwise, like a
    read-only directory or a full disk, it means memory. In memory the store
    starts from a copy of an existing (readable) state file, so a read-only
    install keeps its instance id and its outbox for the life of the process.
    """
    if data_dir is None:
        return _memory()
    path = Path(data_dir) / FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _file_store(path)
    except sqlite3.DatabaseError as error:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (11, 26) or "not a database" in str(error) or "malformed" in str(error):
            return _recover_corrupt(path, error)
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    except OSError as error:
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    return _memory(copy_of=path)


def _file_store(path: Path) -> Store:
    store = Store(path)
    try:
        store.conn.execute("PRAGMA journal_mode=WAL")
        store.conn.executescript(SCHEMA)
        result = store.conn.execute("PRAGMA quick_check").fetchone()
        if result[0] != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {result[0]}")
        # Prove the file takes writes now (a read-only file opens fine), not at the
        # first report; the caller decides what a failure means.
        with _immediate(store.conn):
            store.conn.execute("INSERT OR REPLACE INTO kv VALUES ('store.schema', '1')")
    except BaseException:
        store.close()
        raise
    return store


def _recover_corrupt(path: Path, error: Exception) -> Store:
    aside = path.with_name(f"{path.name}.corrupt-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.rename(aside.with_name(aside.name + suffix))
        log.warning("phonehome: %s was corrupt (%s); moved it to %s", path, error, aside.name)
    except OSError as again:
        log.warning(
            "phonehome: %s is corrupt (%s) and cannot be moved aside (%s); keeping "
            "state in memory",
            path,
            error,
            again,
        )
        return _memory()
    try:
        return _file_store(path)
    except (OSError, sqlite3.DatabaseError) as again:
        log.warning("phonehome: cannot create %s (%s); keeping state in memory", path, again)
        return _memory()


def _memory(copy_of: Path | None = None) -> Store:
    store = Store(None)
    if copy_of is not None and copy_of.is_file():
        # Read-only first; a WAL file in a read-only directory opens only as
        # immutable (no locks, last checkpoint): a best-effort copy either way.
        for mode in ("mode=ro", "immutable=1"):
            try:
                source = sqlite3.connect(f"{copy_of.resolve().as_uri()}?{mode}", uri=True)
                try:
                    source.backup(store.conn)
                finally:
                    source.close()
                break
            except sqlite3.Error:
                continue
    store.conn.executescript(SCHEMA)
    return store


def _connect(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _close_quietly(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.close()


# Fork safety (see the module docs) --------------------------------------------------

_live: weakref.WeakSet[Store] = weakref.WeakSet()
_held: list[Store] = []
_inherited: list[sqlite3.Connection] = []
"""Connections a child inherited mid-transaction: never used, never closed."""


def _before_fork() -> None:
    for store in list(_live):
        if store.lock.acquire(timeout=FORK_WAIT):
            _held.append(store)
            store._detach_file()


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().lock.release()


def _after_fork_in_child() -> None:
    quiet = {id(store) for store in _held}
    _held.clear()
    for store in list(_live):
        store._after_fork_in_child(id(store) in quiet)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
