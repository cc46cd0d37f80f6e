"""The embedded backend of :class:`~.store.Store`: one SQLite file under ``app.data_dir``.

Every process of the installation on this machine opens the same file; SQLite's
locking (WAL mode, ``BEGIN IMMEDIATE``) makes claims and counters atomic across them.

When the file cannot be used (read-only or missing directory, full disk, a
corrupt file) the store falls back, with one warning, to an in-memory database
of the same shape: telemetry loses durability, the host loses nothing. A
corrupt file found at open is moved aside (``<name>.corrupt-<hex>``), never
deleted, and a fresh file takes its place. A busy database (another process
holding the write lock past the busy timeout) is not a broken file: that error
reaches the caller, and the next attempt uses the file again.

Forks: see :mod:`.forksafe`. In the child each store closes nothing it
inherited and opens its own connection on first use; a store whose transaction
did not end in time before the fork carries on in memory there.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from phonehome_plugin import forksafe
from phonehome_plugin.store import FILENAME, SCHEMA, UPSERT_KV, Conn, Store, statements

log = logging.getLogger("phonehome_plugin.store")  # one logger name for every backend

T = TypeVar("T")

# Primary SQLite result codes that mean "this file cannot be used" (as opposed to
# busy, a constraint, or a bug in a statement): permission, read-only, I/O error,
# corrupt, full, cannot open, large-file support, not a database.
_FILE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 22, 26})

# Seconds one statement waits for another process's lock.
_BUSY_TIMEOUT = 5.0
# Seconds opening the file keeps trying while other processes hold it (see _open_file).
_OPEN_PATIENCE = 30.0


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


class SqliteStore(Store):
    """One connection to the state file (``path``; None for memory only).

    Use :meth:`run` for every access: it wraps the work in an immediate
    transaction and moves to memory if the file fails.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory = path is None
        self.lock = threading.Lock()
        self.conn = _connect(":memory:" if path is None else str(path))
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
        with _immediate(self.conn):
            return work(self.conn)

    def _fall_back(self, why: str) -> None:
        log.warning(
            "phonehome: state file %s failed (%s); keeping state in memory", self.path, why
        )
        memory = _connect(":memory:")
        with suppress(sqlite3.Error):
            _copy_into(memory, self.conn)
        prepare(memory)
        _close_quietly(self.conn)
        self.conn, self.memory = memory, True

    def _reopen(self) -> None:
        """Open this process's own connection (after a fork: see .forksafe)."""
        self._reconnect = False
        assert self.path is not None
        try:
            self.conn = _connect(str(self.path))
        except sqlite3.Error as error:
            self.conn = _connect(":memory:")
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
            _close_quietly(self.conn)
            self._reconnect = True

    def _after_fork_in_child(self, quiet: bool) -> None:
        self.lock = threading.Lock()
        if self._closed or quiet:
            # Quiet: the parent closed the file connection before forking, so the
            # child inherits no SQLite file state and opens its own.
            return
        # A thread of the parent was inside this connection: leave it untouched forever.
        forksafe.abandon(self.conn)
        self.conn = _connect(":memory:")
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
            _close_quietly(self.conn)


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


def open_sqlite_store(data_dir: Path | None) -> Store:
    """The store under ``data_dir``, or a memory store when the file cannot be used.

    A missing ``data_dir`` is created when its parent allows; otherwise, like a
    read-only directory or a full disk, it means memory. In memory the store
    starts from a copy of an existing (readable) state file, so a read-only
    install keeps its instance id and its outbox for the life of the process.
    """
    if data_dir is None:
        return memory_store()
    path = Path(data_dir) / FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _open_file(path)
    except sqlite3.DatabaseError as error:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (11, 26) or "not a database" in str(error) or "malformed" in str(error):
            return _recover_corrupt(path, error)
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    except OSError as error:
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    return memory_store(copy_of=path)


def _busy(error: sqlite3.Error) -> bool:
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (5, 6)


def _open_file(path: Path, patience: float | None = None) -> SqliteStore:
    """The file store, waiting out other processes that hold the file meanwhile.

    Processes of one start open the file together, and switching a new file to WAL
    answers "database is locked" at once, without calling the busy handler. A
    process that gave up and kept its state in memory would report as a second
    installation, so busy is retried here, on the worker thread, for a while.
    """
    deadline = time.monotonic() + (_OPEN_PATIENCE if patience is None else patience)
    pause = 0.005
    while True:
        try:
            return _file_store(path)
        except sqlite3.OperationalError as error:
            if not _busy(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.25)


def _file_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    try:
        store.conn.execute("PRAGMA journal_mode=WAL")
        result = store.conn.execute("PRAGMA quick_check").fetchone()
        if result[0] != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {result[0]}")
        # Creating the tables proves the file takes writes now (a read-only file
        # opens fine), not at the first report; the caller decides what a failure means.
        with _immediate(store.conn):
            prepare(store.conn)
            store.conn.execute(UPSERT_KV, ("store.schema", "2"))
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
        return memory_store()
    try:
        return _open_file(path)
    except (OSError, sqlite3.DatabaseError) as again:
        log.warning("phonehome: cannot create %s (%s); keeping state in memory", path, again)
        return memory_store()


def memory_store(copy_of: Path | None = None) -> SqliteStore:
    """A store in this process's memory, starting from a copy of ``copy_of`` if readable."""
    store = SqliteStore(None)
    if copy_of is not None and copy_of.is_file():
        # Read-only first; a WAL file in a read-only directory opens only as
        # immutable (no locks, last checkpoint): a best-effort copy either way.
        for mode in ("mode=ro", "immutable=1"):
            try:
                source = sqlite3.connect(
                    f"{copy_of.resolve().as_uri()}?{mode}", uri=True, timeout=_BUSY_TIMEOUT
                )
                try:
                    _copy_into(store.conn, source)
                finally:
                    source.close()
                break
            except sqlite3.Error:
                continue
    prepare(store.conn)
    return store


def _copy_into(memory: sqlite3.Connection, source: sqlite3.Connection) -> None:
    """Replace the database of ``memory`` by a copy of ``source``'s.

    Not ``Connection.backup``: it retries a source locked by another process
    forever, where reading an image gives up after the busy timeout.
    """
    image = bytearray(source.serialize())
    if len(image) > 19 and image[18] == 2:
        # A WAL file's header; memory has no WAL, so mark the copy as a journal one.
        image[18] = image[19] = 1
    memory.deserialize(bytes(image))


def _connect(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")
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
