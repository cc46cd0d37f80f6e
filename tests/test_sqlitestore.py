"""The SQLite store in use: a disk that fills up, and errors that are not the file's
fault."""

from __future__ import annotations

import resource
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import integrity, run_child, warnings_of

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import forksafe, sqlite
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import FILENAME, Conn, Store

# A disk that fills up ---------------------------------------------------------------


def full_later(data_dir: Path) -> dict[str, Any]:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = open_store(data_dir)
    file_backed = not store.memory
    outbox = Outbox(store, OutboxLimits())
    outbox.put(Entry("small", store.next_sequence(), "startup", 1.0, b"{}"), 1.0)
    used = sum(p.stat().st_size for p in data_dir.iterdir())
    resource.setrlimit(resource.RLIMIT_FSIZE, (used + 4096, used + 4096))
    outbox.put(Entry("big", store.next_sequence(), "periodic", 2.0, b"x" * 2_000_000), 2.0)
    outbox.put(Entry("after", store.next_sequence(), "periodic", 3.0, b"{}"), 3.0)
    return {
        "file_backed_at_first": file_backed,
        "memory": store.memory,
        "pending": [e.report_id for e in outbox.pending()],
    }


def test_a_disk_that_fills_up_moves_the_store_to_memory_without_losing_the_write(
    shared_dir: Path,
) -> None:
    data_dir = shared_dir / "data"
    result = run_child(full_later, data_dir)
    assert result["file_backed_at_first"] is True
    assert result["memory"] is True
    assert len(result["warnings"]) == 1, result["warnings"]
    # What was in the file came along; the write that failed was redone in memory.
    assert result["pending"] == ["small", "big", "after"]
    # The file the child gave up on is intact, holding what it held before.
    assert integrity(data_dir / FILENAME) == "ok"
    after = open_store(data_dir)
    assert [
        row[0] for row in after.run(lambda c: c.execute("SELECT report_id FROM outbox").fetchall())
    ] == ["small"]
    after.close()


# Errors that are not the file's fault ------------------------------------------------


def test_a_busy_database_is_an_error_for_the_caller_not_a_move_to_memory(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_PATIENCE", 0.05)
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.set("k", "v")
    other.execute("ROLLBACK")
    other.close()
    assert not store.memory
    store.set("k", "v")
    assert store.get("k") == "v"
    assert warnings_of(caplog) == []


def test_waiting_out_a_busy_file_never_holds_the_fork_guard(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork must never wait for another process's lock: between attempts on a busy
    file the guard that os.fork() takes is free."""
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    free_while_waiting: list[bool] = []

    def pause(seconds: float) -> None:  # where tenacity waits between attempts
        took = forksafe.GUARD.acquire(blocking=False)
        free_while_waiting.append(took)
        if took:
            forksafe.GUARD.release()
        if len(free_while_waiting) == 3 and other.in_transaction:
            other.execute("COMMIT")  # the other process lets go after three waits

    monkeypatch.setattr(time, "sleep", pause)
    store.set("k", "v")
    other.close()
    assert free_while_waiting == [True, True, True]
    assert store.get("k") == "v"


def test_a_bug_in_a_statement_is_raised_not_hidden_in_memory(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.run(lambda c: c.execute("SELECT * FROM nowhere"))
    assert not store.memory


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    def half(c: Conn) -> None:
        c.execute("INSERT INTO kv VALUES ('half', 'done')")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        store.run(half)
    assert store.get("half") is None
