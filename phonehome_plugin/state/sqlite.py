"""The embedded backend of :class:`~.store.Store`: one SQLite file under ``app.data_dir``.

Every process of the installation on this machine opens the same file; SQLite's
locking (WAL mode, ``BEGIN IMMEDIATE``) makes claims and counters atomic across them.

Opening (:func:`open_sqlite_store`). Processes of one start open the file together
and wait out each other's locks for a while. A read-only, missing or full data dir
means a store in memory, with one warning, starting from a copy of the file when it
can be read; a corrupt file is moved aside (``<name>.corrupt-<hex>``), never
deleted, and a fresh file takes its place.

In use (:class:`SqliteStore`). The connection is reachable only through
:meth:`SqliteStore.session`, which holds :data:`.forksafe.GUARD` for as long as the
connection is in use: that is what makes a fork at any moment safe (see
:mod:`.forksafe`). For the same reason a statement never waits inside SQLite for
another process's lock (``busy_timeout`` is 0): a busy file is retried here, with
the guard released between attempts, for up to :data:`BUSY_PATIENCE` seconds, and
then the error reaches the caller (a busy file is not a broken one: the next
attempt uses the file again). A write transaction that a fork starts waiting for
gives way at its next statement (:class:`_GivingWay`): rolled back, and run again
once the fork is done, as a busy one is.

When the file fails in use (a full disk, an I/O error) the store moves, with one
warning, to an in-memory database of the same shape, starting from a copy of
the file: telemetry loses durability, the host loses nothing.

Read-only (:func:`open_sqlite_read_only`, for the ``phonehome`` command). The same
store over the same file, through the same guard, creating nothing: not the data
dir, not the file, not its ``-wal`` or ``-shm``; no journal mode is set and no
table made. While a process of the installation has the file open (or after a
crash) its ``-wal`` exists, and the file is read live through SQLite's
``mode=ro``. After every process closed it cleanly there is no ``-wal``, and
``mode=ro`` would create one (with the ``-shm``) to read a WAL-mode file; then
the file, complete in itself, is read whole into memory, unless a process
starts writing it meanwhile (see :func:`_snapshot`), in which case it is read
live after all. A read is a deferred transaction: it waits for no writer and
holds no writer back. Every write raises :class:`~.store.ReadOnlyError`
(``PRAGMA query_only`` on either connection); every failure to read is a
:class:`~.store.BrokenStateError`, never a store in memory.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from phonehome_plugin.state import forksafe
from phonehome_plugin.state.store import (
    FILENAME,
    SCHEMA,
    UPSERT_KV,
    BrokenStateError,
    Conn,
    NoDataDirError,
    NoStateError,
    ReadOnlyError,
    StateUnavailableError,
    Store,
    readable,
    statements,
)

log = logging.getLogger("phonehome_plugin.state.store")  # one logger name for every backend

T = TypeVar("T")

# Primary SQLite result codes that mean "this file cannot be used" (as opposed to
# busy, a constraint, or a bug in a statement): permission, read-only, I/O error,
# corrupt, full, cannot open, large-file support, not a database.
_FILE_FAILURES = frozenset({3, 8, 10, 11, 13, 14, 22, 26})

_READONLY = 8  # SQLITE_READONLY, as an extended code: "attempt to write a readonly database"

BUSY_PATIENCE = 5.0
"""Seconds a transaction keeps retrying a file another process holds."""

BUSY_TIMEOUT = 5.0
"""Seconds copying a busy file into memory keeps trying (see :func:`memory_store`)."""

COMPACT_PAGES = 64
"""Free pages (256 KiB at SQLite's default page size) at which :meth:`SqliteStore.compact`
hands them back."""

GIVE_WAY_MOST = 3
"""Forks in a row a write transaction gives way to (rolled back, run again after
each); then it runs to its end with the next fork waiting for it, so a host that
forks without pause cannot keep the plugin from ever writing."""

WAL_LIMIT = 1 << 20
"""Bytes of ``-wal`` kept after a checkpoint resets it (``journal_size_limit``)."""

# Seconds opening the file keeps trying while other processes hold it (see _open_file).
_OPEN_PATIENCE = 30.0


def open_sqlite_store(data_dir: Path | None) -> Store:
    """The store under ``data_dir`` (created when its parent allows).

    A state file that cannot be used now (a read-only or missing data dir, a full
    disk, a file locked past patience, permissions) raises
    :class:`~.store.StateUnavailableError`: the process keeps no state of its own,
    which would report as an installation of its own (a new instance id, or the same
    one with a sequence and claims of its own), and tries again later (see the
    worker). A corrupt file is moved aside and replaced (its state is lost: the
    installation starts anew, said in one line). No ``data_dir`` at all (a host
    that gives none) means a store in memory, for this process alone.
    """
    if data_dir is None:
        return memory_store()
    path = Path(data_dir) / FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _open_file(path)
    except sqlite3.DatabaseError as error:
        if (
            primary_code(error) in (11, 26)
            or "not a database" in str(error)
            or "malformed" in str(error)
        ):
            return _recover_corrupt(path, error)
        raise StateUnavailableError(f"cannot use {path} ({error})") from error
    except OSError as error:
        why = error.strerror or error
        raise StateUnavailableError(f"cannot use {path} ({why})") from error


def _open_file(path: Path) -> SqliteStore:
    """The file store, waiting out other processes that hold the file meanwhile.

    Processes of one start open the file together, and switching a new file to WAL
    answers "database is locked" at once, without calling the busy handler. A
    process that gave up and kept its state in memory would report as a second
    installation, so busy is retried here, on the worker thread, for a while
    (each attempt under the fork guard, the waits between them outside it).
    """
    return retrying_busy(_OPEN_PATIENCE)(_file_store, path)


def open_sqlite_read_only(data_dir: Path) -> SqliteStore:
    """The state file under ``data_dir``, read-only; creates nothing (see the module docstring).

    Raises :class:`~.store.NoDataDirError` when ``data_dir`` is no directory,
    :class:`~.store.NoStateError` when the file is missing (telemetry never ran
    here), :class:`~.store.BrokenStateError` when it is no state file of the plugin.
    """
    path = Path(data_dir) / FILENAME
    if not path.parent.is_dir():
        raise NoDataDirError(f"data dir {path.parent} does not exist or is not a directory")
    if not path.is_file():
        raise NoStateError(
            f"no telemetry state at {path} (telemetry never ran with this data dir)"
        )
    try:
        store: SqliteStore = retrying_busy(BUSY_PATIENCE)(SqliteStore, path, read_only=True)
    except (OSError, sqlite3.Error) as error:
        raise BrokenStateError(cannot_read(path, error)) from error
    return readable(store)


def cannot_read(path: Path | None, error: OSError | sqlite3.Error) -> str:
    """The one line saying why the state file at ``path`` cannot be read."""
    why = error.strerror if isinstance(error, OSError) and error.strerror else error
    return f"cannot read {path}: {why}"


def _file_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    try:
        with store.session() as conn:
            # So that free pages can be handed back (SqliteStore.compact) without
            # rewriting the whole file. Only on a new file: on one with tables it
            # changes nothing but still writes, and a file that exists may be corrupt
            # and must be moved aside as it was found.
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {result[0]}")
            # Creating the tables proves the file takes writes now (a read-only file
            # opens fine), not at the first report; the caller decides what a failure means.
            with immediate(conn):
                prepare(conn)
                conn.execute(UPSERT_KV, ("store.schema", "2"))
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
        raise StateUnavailableError(
            f"{path} is corrupt ({error}) and cannot be moved aside ({again})"
        ) from again
    try:
        return _open_file(path)
    except (OSError, sqlite3.DatabaseError) as again:
        raise StateUnavailableError(f"cannot create {path} ({again})") from again


def memory_store(copy_of: Path | None = None) -> SqliteStore:
    """A store in this process's memory, starting from a copy of ``copy_of`` if readable."""
    store = SqliteStore(None)
    if copy_of is not None and copy_of.is_file():
        # Read-only first; a WAL file in a read-only directory opens only as
        # immutable (no locks, last checkpoint): a best-effort copy either way.
        for mode in ("mode=ro", "immutable=1"):
            try:
                retrying_busy(BUSY_TIMEOUT)(_copy_file, copy_of, mode, store)
                break
            except sqlite3.Error:
                continue
    with store.session() as conn:
        prepare(conn)
    return store


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that reads the file at ``path`` and writes nothing (the caller
    holds :data:`.forksafe.GUARD`): in memory from a snapshot when the file rests
    complete, else live through ``mode=ro``."""
    image = _snapshot(path)
    conn = connect(":memory:" if image else f"{path.resolve().as_uri()}?mode=ro", uri=not image)
    try:
        if image:
            load_image(conn, image)
        conn.execute("PRAGMA query_only=1")
    except BaseException:
        close_quietly(conn)
        raise
    return conn


def _snapshot(path: Path) -> bytes | None:
    """The bytes of the WAL-mode file at ``path`` when no process has it open, or None
    (read it live) when it has a ``-wal``, is no WAL-mode file, or changed while read.

    A WAL-mode file is written only through its ``-wal`` (checkpoints included), which
    exists from the first connection's open to the last one's close. So: no ``-wal``
    before and after the read, and the file's identity, size, mtime and ctime alike
    before and after, mean the bytes read are one consistent state. A file in rollback
    mode may have a hot journal beside it: only SQLite reads that one right.
    """
    wal = path.with_name(path.name + "-wal")
    before = _identity(path)
    if wal.exists():
        return None
    image = path.read_bytes()
    if wal.exists() or _identity(path) != before or image[18:20] != b"\x02\x02":
        return None
    return image


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when the file at ``path`` is replaced or written."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _copy_file(path: Path, mode: str, store: SqliteStore) -> None:
    """One attempt at copying the file at ``path`` into ``store`` (under the guard)."""
    with store.session() as memory:  # the guard covers the source's calls too
        source = connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
        try:
            copy_into(memory, source)
        finally:
            source.close()


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
    ``read_only`` (with a ``path``): see :func:`open_sqlite_read_only`.
    """

    def __init__(self, path: Path | None, read_only: bool = False) -> None:
        self.path = path
        self.memory = path is None
        self.read_only = read_only and path is not None
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
        with forksafe.held():
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
        if self.read_only:
            return _read_only_connection(self.path)  # its failure is the caller's, always
        try:
            return connect(str(self.path))
        except sqlite3.Error as error:
            if not self._opened:
                raise  # the first open: open_sqlite_store decides what the failure means
            self._warn_memory(f"cannot reopen it after a fork ({error})")
            conn = connect(":memory:")
            prepare(conn)
            return conn

    def run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work(conn)`` in one immediate transaction (atomic across processes).

        ``work`` may run more than once: when the file is busy it is rolled back and
        run again, so it must do nothing but statements on ``conn``.

        Read-only: a deferred transaction instead, retried while busy as above; a
        write raises :class:`~.store.ReadOnlyError`, a failure to read (busy for
        :data:`BUSY_PATIENCE` included) :class:`~.store.BrokenStateError`.
        """
        if self.read_only:
            return self._read(work)
        try:
            return self._giving_way(work)
        except sqlite3.OperationalError as error:
            if not busy(error):
                raise
        result: T = retrying_busy(BUSY_PATIENCE)(self._giving_way, work)
        return result

    def _giving_way(self, work: Callable[[Conn], T]) -> T:
        """:meth:`_attempt`, run again after each fork that waited for it (rolled back at
        its next statement, see :class:`_GivingWay`), :data:`GIVE_WAY_MOST` times at
        most: then once more as it is, the fork waiting for all of it."""
        for _ in range(GIVE_WAY_MOST):
            try:
                return self._attempt(work, give_way=True)
            except forksafe.ForkWaiting:
                continue  # the fork is done: the session stepped aside for it
        return self._attempt(work, give_way=False)

    def compact(self, full: bool = False) -> None:
        """Once :data:`COMPACT_PAGES` pages or more are free (a drained outbox, trimmed
        kept bodies), hand them back to the file system (``PRAGMA incremental_vacuum``:
        files made since this version have ``auto_vacuum=INCREMENTAL``; an older file
        keeps its free pages for later rows); and once the ``-wal`` is larger than
        :data:`WAL_LIMIT`, empty it. ``full``: every free page and the ``-wal``, whatever
        their size. Skipped when the file is busy."""
        if self.read_only or self.memory:
            return
        with suppress(sqlite3.Error, RuntimeError), self.session() as conn:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free >= COMPACT_PAGES or (full and free):
                # executescript steps it to the end: execute() on Python 3.11 stops
                # after one step, and each step frees one page.
                conn.executescript("PRAGMA incremental_vacuum;")
            if full or free >= COMPACT_PAGES or self._wal_bytes() > WAL_LIMIT:
                # The -wal that carried a backlog: back to empty when no other process
                # reads (else it shrinks to WAL_LIMIT at its next reset).
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _wal_bytes(self) -> int:
        assert self.path is not None
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return 0

    def _attempt(self, work: Callable[[Conn], T], give_way: bool = False) -> T:
        with self.session() as conn:
            try:
                with immediate(conn):
                    return work(_GivingWay(conn) if give_way else conn)
            except sqlite3.DatabaseError as error:
                if self.memory or not file_failed(error):
                    raise
                self._fall_back(conn, f"{type(error).__name__}: {error}")
            assert self._conn is not None
            with immediate(self._conn):
                return work(self._conn)

    def _read(self, work: Callable[[Conn], T]) -> T:
        try:
            result: T = retrying_busy(BUSY_PATIENCE)(self._read_once, work)
        except sqlite3.Error as error:
            # SQLITE_READONLY itself: a write; its extended codes say a read failed.
            if getattr(error, "sqlite_errorcode", None) == _READONLY:
                raise ReadOnlyError(
                    f"the state file {self.path} is open read-only: {error}"
                ) from error
            raise BrokenStateError(cannot_read(self.path, error)) from error
        except OSError as error:  # reading the snapshot, when reconnecting after a fork
            raise BrokenStateError(cannot_read(self.path, error)) from error
        return result

    def _read_once(self, work: Callable[[Conn], T]) -> T:
        with self.session() as conn:
            conn.execute("BEGIN")  # deferred: a read lock from the first read to COMMIT only
            try:
                result = work(conn)
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

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
            # Idle (no call was in progress): set aside, to be closed before this
            # process opens a connection of its own (see _close_inherited), not here:
            # closing frees SQLite's page cache, whose every page the fork shares
            # with the parent, so the child would copy each one (about 0.5 ms of
            # fork() in the child at a typical factory). The next use opens anew.
            _INHERITED.append(self._conn)
            self._conn = None

    def close(self) -> None:
        with forksafe.held():
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
    load_image(memory, source.serialize())


def load_image(memory: sqlite3.Connection, image: bytes) -> None:
    """Replace the database of ``memory`` by the database file ``image``."""
    copy = bytearray(image)
    if len(copy) > 19 and copy[18] == 2:
        # A WAL file's header; memory has no WAL, so mark the copy as a journal one.
        copy[18] = copy[19] = 1
    memory.deserialize(bytes(copy))


_INHERITED: list[sqlite3.Connection] = []
"""Idle file connections a forked child inherited, not yet closed (this process's
own connections close them first: see :func:`_close_inherited`)."""


def _close_inherited() -> None:
    """Close the connections this process inherited through a fork, before it opens
    one of its own: SQLite's record of the locks it holds on a file is per process and
    was copied with them, so a connection opened beside them would trust a record of
    locks the parent holds, not this process. Closing them cannot checkpoint or delete
    anything: the parent still holds its own locks on the file. The caller holds
    :data:`.forksafe.GUARD`."""
    while _INHERITED:
        close_quietly(_INHERITED.pop())


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode, on which a busy file fails at once (waiting
    happens between attempts, outside the fork guard: see the module docstring).
    The caller holds :data:`.forksafe.GUARD`."""
    _close_inherited()
    conn = sqlite3.connect(
        target, timeout=0.0, uri=uri, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA synchronous=NORMAL")  # loads the schema: may find the file busy
        # A -wal that grew while a backlog was written shrinks back at its next reset.
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    except BaseException as error:
        # A busy file: this connection is of no more use. Any other failure is left
        # open to the caller's recovery, because closing a connection to a corrupt
        # file makes SQLite delete that file's -wal, which must move aside with it.
        if busy(error):
            close_quietly(conn)
        raise
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


class _GivingWay:
    """The connection as a write transaction's work sees it: a statement started while
    a fork waits for the guard raises :class:`.forksafe.ForkWaiting` instead, and the
    transaction is rolled back (:func:`immediate`) and run again after the fork. So a
    fork waits for the statement in progress, not for the rest of the transaction
    (about 30 us against a few hundred). The check is one C call a statement."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> sqlite3.Cursor:
        if forksafe.fork_waiting():
            raise forksafe.ForkWaiting
        return self._conn.execute(sql, parameters)

    def executemany(
        self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /
    ) -> sqlite3.Cursor:
        if forksafe.fork_waiting():
            raise forksafe.ForkWaiting
        return self._conn.executemany(sql, seq_of_parameters)


def close_quietly(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.close()
