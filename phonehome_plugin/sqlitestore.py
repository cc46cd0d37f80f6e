"""The embedded backend of :class:`~.store.Store`: one SQLite file under ``app.data_dir``.

Every process of the installation on this machine opens the same file; SQLite's
locking (WAL mode, ``BEGIN IMMEDIATE``) makes claims and counters atomic across them.

The connection is reachable only through :meth:`SqliteStore.session`, which
holds :data:`.forksafe.GUARD` for as long as the connection is in use: that is
what makes a fork at any moment safe (see :mod:`.forksafe`). For the same
reason a statement never waits inside SQLite for another process's lock
(``busy_timeout`` is 0): a busy file is retried here, with the guard released
between attempts, for up to :data:`BUSY_PATIENCE` seconds, and then the error
reaches the caller (a busy file is not a broken one: the next attempt uses the
file again).

When the file fails in use (a full disk, an I/O error) the store moves, with one
warning, to an in-memory database of the same shape, starting from a copy of
the file: telemetry loses durability, the host loses nothing. Opening the file,
and what a file that cannot be opened means, is :mod:`.sqliteopen`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import tenacity

from phonehome_plugin import forksafe
from phonehome_plugin.store import SCHEMA, Conn, Store, statements

log = logging.getLogger("phonehome_plugin.store")  # one logger name for every backend

T = TypeVar("T")

# Primary SQLite result codes that mean "this file cannot be used" (as opposed to
# busy, a constraint, or a bug in a statement): permission, read-only, I/O error,
# corrupt, full, cannot open, large-file support, not a database.
_FILE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 22, 26})

BUSY_PATIENCE = 5.0
"""Seconds a transaction keeps retrying a file another process holds."""

BUSY_TIMEOUT = 5.0
"""Seconds copying a busy file into memory keeps trying (see .sqliteopen.memory_store)."""


def primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``error`` (extended codes folded), if it has one."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def busy(error: BaseException) -> bool:
    """Another connection holds the file (SQLITE_BUSY or SQLITE_LOCKED)."""
    return isinstance(error, sqlite3.OperationalError) and primary_code(error) in (5, 6)


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


def retrying_busy(patience: float) -> tenacity.Retrying:
    """Retry a busy file for ``patience`` seconds, jittered, then let its error through."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(busy),
        wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.25),
        stop=tenacity.stop_after_delay(patience),
        reraise=True,
    )


class SqliteStore(Store):
    """The state file at ``path`` (None: memory only), through one connection.

    Use :meth:`run` for every access: it wraps the work in an immediate
    transaction, retries a busy file and moves to memory if the file fails.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory = path is None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._opened = False
        forksafe.track(self)
        with self.session():
            pass  # opens the connection, under the guard like every SQLite call
        self._opened = True

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """The connection, with :data:`.forksafe.GUARD` held until the block ends.

        The only way to the connection: a fork can never find a thread of the
        plugin inside it. Opens it (again, after a fork) when needed.
        """
        with forksafe.GUARD:
            if forksafe.poisoned:
                raise forksafe.ForkedMidCallError()
            if self._closed:
                raise RuntimeError("the state store is closed")
            if self._conn is None:
                self._conn = self._connect()
            yield self._conn

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            conn = connect(":memory:")
            prepare(conn)
            return conn
        try:
            return connect(str(self.path))
        except sqlite3.Error as error:
            if not self._opened:
                raise  # the first open: .sqliteopen decides what the failure means
            self._warn_memory(f"cannot reopen it after a fork ({error})")
            conn = connect(":memory:")
            prepare(conn)
            return conn

    def run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work(conn)`` in one immediate transaction (atomic across processes).

        ``work`` may run more than once: when the file is busy it is rolled back and
        run again, so it must do nothing but statements on ``conn``.
        """
        try:
            return self._attempt(work)
        except sqlite3.OperationalError as error:
            if not busy(error):
                raise
        result: T = retrying_busy(BUSY_PATIENCE)(self._attempt, work)
        return result

    def _attempt(self, work: Callable[[Conn], T]) -> T:
        with self.session() as conn:
            try:
                with immediate(conn):
                    return work(conn)
            except sqlite3.DatabaseError as error:
                if self.memory or not file_failed(error):
                    raise
                self._fall_back(conn, f"{type(error).__name__}: {error}")
            assert self._conn is not None
            with immediate(self._conn):
                return work(self._conn)

    def _fall_back(self, conn: sqlite3.Connection, why: str) -> None:
        """Move to memory, from a copy of ``conn``'s file (the guard is held)."""
        self._warn_memory(f"it failed ({why})")
        memory = connect(":memory:")
        with suppress(sqlite3.Error):
            copy_into(memory, conn)
        prepare(memory)
        close_quietly(conn)
        self._conn = memory

    def _warn_memory(self, why: str) -> None:
        if not self.memory:
            self.memory = True
            log.warning("phonehome: state file %s: %s; keeping state in memory", self.path, why)

    def _after_fork_in_child(self, clean: bool) -> None:
        if not clean:
            return  # forksafe.poisoned: this process never calls into SQLite again
        if self.path is not None and not self.memory and self._conn is not None:
            # Idle (no call was in progress), and the parent still holds its own
            # locks on the file, so closing our copy cannot checkpoint or delete
            # anything; the next use opens this process's own connection.
            close_quietly(self._conn)
            self._conn = None

    def close(self) -> None:
        with forksafe.GUARD:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and not forksafe.poisoned:
                close_quietly(conn)


def prepare(conn: sqlite3.Connection) -> None:
    """Create the tables, inside the transaction open on ``conn`` (or, outside
    one, statement by statement)."""
    for statement in statements(SCHEMA):
        conn.execute(statement)


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


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode, on which a busy file fails at once (waiting
    happens between attempts, outside the fork guard: see the module docstring).
    The caller holds :data:`.forksafe.GUARD`."""
    conn = sqlite3.connect(
        target, timeout=0.0, uri=uri, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout=0")
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
