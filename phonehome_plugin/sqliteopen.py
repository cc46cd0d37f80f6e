"""Opening the installation's SQLite state file, and what happens when it cannot be used.

Processes of one start open the file together and wait out each other's locks
for a while (:func:`open_sqlite_store`). A read-only, missing or full data dir
means a store in memory, with one warning, starting from a copy of the file
when it can be read; a corrupt file is moved aside (``<name>.corrupt-<hex>``),
never deleted, and a fresh file takes its place.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

from phonehome_plugin import sqlitestore
from phonehome_plugin.sqlitestore import (
    SqliteStore,
    connect,
    copy_into,
    immediate,
    prepare,
    primary_code,
    retrying_busy,
)
from phonehome_plugin.store import FILENAME, UPSERT_KV, Store

log = logging.getLogger("phonehome_plugin.store")  # one logger name for every backend

# Seconds opening the file keeps trying while other processes hold it (see _open_file).
_OPEN_PATIENCE = 30.0


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
        if (
            primary_code(error) in (11, 26)
            or "not a database" in str(error)
            or "malformed" in str(error)
        ):
            return _recover_corrupt(path, error)
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    except OSError as error:
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    return memory_store(copy_of=path)


def _open_file(path: Path) -> SqliteStore:
    """The file store, waiting out other processes that hold the file meanwhile.

    Processes of one start open the file together, and switching a new file to WAL
    answers "database is locked" at once, without calling the busy handler. A
    process that gave up and kept its state in memory would report as a second
    installation, so busy is retried here, on the worker thread, for a while
    (each attempt under the fork guard, the waits between them outside it).
    """
    return retrying_busy(_OPEN_PATIENCE)(_file_store, path)


def _file_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    try:
        with store.session() as conn:
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
                retrying_busy(sqlitestore.BUSY_TIMEOUT)(_copy_file, copy_of, mode, store)
                break
            except sqlite3.Error:
                continue
    with store.session() as conn:
        prepare(conn)
    return store


def _copy_file(path: Path, mode: str, store: SqliteStore) -> None:
    """One attempt at copying the file at ``path`` into ``store`` (under the guard)."""
    with store.session() as memory:  # the guard covers the source's calls too
        source = connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
        try:
            copy_into(memory, source)
        finally:
            source.close()
