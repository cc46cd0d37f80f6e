"""The installation's durable state: one SQLite file under ``app.data_dir``.

It holds the instance id, counters that outlive a restart (lifetime execution
totals, the report sequence, delivery counts), claims that make a trigger fire
once per installation, the outbox and the history of what was sent. Every
process of the installation opens the same file; SQLite's locking (WAL mode)
makes claims and counters atomic across them.

When the file cannot be used (read-only or missing directory, full disk, a
corrupt file) the store falls back, with one warning, to an in-memory database
of the same shape: telemetry loses durability, the host loses nothing. A
corrupt file is moved aside, never deleted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

FILENAME = "phonehome.sqlite3"
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


class Store:
    """One connection to the state database, used by one thread at a time.

    ``path`` is None for a memory-only store. Use :meth:`run` for every access:
    it wraps the work in a transaction and moves to memory if the file fails.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory = path is None
        self.lock = threading.Lock()
        self.conn = _connect(":memory:" if path is None else str(path))

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in one immediate transaction (atomic across processes)."""
        with self.lock:
            try:
                return self._transaction(work)
            except sqlite3.DatabaseError as error:
                if self.memory:
                    raise
                self._fall_back(f"{type(error).__name__}: {error}")
                return self._transaction(work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with _immediate(self.conn):
            return work(self.conn)

    def _fall_back(self, why: str) -> None:
        log.warning("phonehome: state file %s failed (%s); keeping state in memory", self.path, why)
        memory = _connect(":memory:")
        try:
            self.conn.backup(memory)
        except sqlite3.DatabaseError:
            memory.executescript(SCHEMA)
        _close_quietly(self.conn)
        self.conn, self.memory = memory, True

    def close(self) -> None:
        with self.lock:
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
        rows = [(name, value) for name, value in deltas.items() if value]
        if rows:
            self.run(lambda c: c.executemany(_UPSERT_ADD, rows))

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
            row = c.execute("SELECT owner, claimed_at, done FROM claims WHERE key=?", (key,)).fetchone()
            if row is not None and (row[2] or (row[0] != owner and row[1] + lease > now)):
                return False
            c.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, 0)", (key, owner, now))
            return True

        return self.run(work)

    def finish_claim(self, key: str) -> None:
        self.run(lambda c: c.execute("UPDATE claims SET done=1 WHERE key=?", (key,)))

    def is_done(self, key: str) -> bool:
        row = self.run(lambda c: c.execute("SELECT done FROM claims WHERE key=?", (key,)).fetchone())
        return bool(row and row[0])


_UPSERT_ADD = (
    "INSERT INTO counters VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


def open_store(data_dir: Path | None) -> Store:
    """The store under ``data_dir``, or a memory store when the file cannot be used."""
    if data_dir is None:
        return _memory()
    path = Path(data_dir) / FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _file_store(path)
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error) or "malformed" in str(error):
            return _recover_corrupt(path, error)
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    except OSError as error:
        log.warning("phonehome: cannot use %s (%s); keeping state in memory", path, error)
    return _memory()


def _file_store(path: Path) -> Store:
    store = Store(path)
    store.conn.execute("PRAGMA journal_mode=WAL")
    store.conn.executescript(SCHEMA)
    result = store.conn.execute("PRAGMA quick_check").fetchone()
    if result[0] != "ok":
        _close_quietly(store.conn)
        raise sqlite3.DatabaseError(f"database disk image is malformed: {result[0]}")
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
        return _file_store(path)
    except (OSError, sqlite3.DatabaseError) as again:
        log.warning("phonehome: %s is corrupt (%s); keeping state in memory", path, again)
        return _memory()


def _memory() -> Store:
    store = Store(None)
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
    try:
        conn.close()
    except sqlite3.Error:
        pass
