"""The SQLite state store (:mod:`phonehome_plugin.state.sqlite`): opening the file (a
missing, read-only, full or corrupt data dir, processes opening it together, a file
another process holds) and using it (a disk that fills up, errors that are not the
file's fault). The behaviour both backends share is checked on both in
``test_store.py``."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import FORK, integrity, run_child, warnings_of

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import forksafe, history, sqlite
from phonehome_plugin.state import outbox as outbox_module
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import FILENAME, StateUnavailableError, Store

# Opening ---------------------------------------------------------------------------------


def test_a_writable_data_dir_gets_a_wal_file(tmp_path: Path, store: Store) -> None:
    assert not store.memory
    assert store.path == tmp_path / FILENAME
    mode = store.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    store.set("k", "v")
    store.close()
    reopened = open_store(tmp_path)
    assert reopened.get("k") == "v"
    reopened.close()


def test_a_missing_data_dir_is_created_when_its_parent_allows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "not" / "yet"
    opened = open_store(target)
    assert not opened.memory
    assert (target / FILENAME).is_file()
    assert warnings_of(caplog) == []
    opened.close()


def test_a_data_dir_that_cannot_exist_is_unavailable_not_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # In memory the process would report as an installation of its own: it waits.
    with pytest.raises(StateUnavailableError, match="cannot use") as raised:
        open_store(blocker / "data")
    assert not raised.value.lasting
    assert warnings_of(caplog) == []  # the worker says it, once


def test_no_data_dir_at_all_means_memory(caplog: pytest.LogCaptureFixture) -> None:
    opened = open_store(None)
    assert opened.memory and opened.instance_id()
    assert warnings_of(caplog) == []


def read_only(data_dir: Path) -> dict[str, Any]:
    try:
        open_store(data_dir)
    except StateUnavailableError as error:
        return {"unavailable": str(error)}
    return {"unavailable": None}


def test_a_read_only_data_dir_is_unavailable_and_stays_untouched(shared_dir: Path) -> None:
    data_dir = shared_dir / "data"
    data_dir.mkdir(mode=0o555)
    data_dir.chmod(0o555)
    result = run_child(read_only, data_dir, unprivileged=True)
    assert result["unavailable"] and str(data_dir) in result["unavailable"]
    assert result["warnings"] == []
    assert list(data_dir.iterdir()) == []


def test_a_read_only_data_dir_with_state_keeps_no_copy_of_its_own(shared_dir: Path) -> None:
    """A copy in memory would send the installation's reports under its instance id with
    a sequence and claims of its own: the process waits instead."""
    data_dir = shared_dir / "data"
    data_dir.mkdir()
    before = open_store(data_dir)
    Outbox(before, OutboxLimits()).put(
        Entry("r-old", before.next_sequence(), "startup", 0.0, b"{}"), 0.0
    )
    before.close()
    for path in data_dir.iterdir():
        path.chmod(0o444)
    data_dir.chmod(0o555)
    result = run_child(read_only, data_dir, unprivileged=True)
    assert result["unavailable"]
    data_dir.chmod(0o755)
    assert integrity(data_dir / FILENAME) == "ok"
    after = open_store(data_dir)
    assert [e.report_id for e in Outbox(after, OutboxLimits()).pending()] == ["r-old"]
    after.close()


def full_at_open(data_dir: Path) -> dict[str, Any]:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    return read_only(data_dir)


def test_a_full_disk_at_open_is_unavailable(shared_dir: Path) -> None:
    result = run_child(full_at_open, shared_dir / "data")
    assert result["unavailable"]
    assert result["warnings"] == []


# Corrupt files ---------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _bad_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    data[page : len(data) - page] = b"\xa5" * (len(data) - 2 * page)
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", [_garbage, _bad_pages, _truncated])
def test_a_corrupt_file_is_moved_aside_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    first = open_store(tmp_path)
    old_id = first.instance_id()
    for n in range(400):
        first.set(f"filler.{n}", "x" * 200)
    first.close()
    path = tmp_path / FILENAME
    assert not (tmp_path / f"{FILENAME}-wal").exists()
    damage(path)
    damaged = path.read_bytes()

    fresh = open_store(tmp_path)

    assert not fresh.memory
    aside = sorted(tmp_path.glob(f"{FILENAME}.corrupt-" + "[0-9a-f]" * 8))
    assert len(aside) == 1
    assert aside[0].read_bytes() == damaged  # moved, not deleted or rewritten
    assert fresh.instance_id() != old_id
    assert integrity(path) == "ok"
    assert len(warnings_of(caplog)) == 1
    fresh.close()


def test_a_corrupt_files_sidecars_move_with_it(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    _garbage(path)
    (tmp_path / f"{FILENAME}-wal").write_bytes(b"old wal")
    fresh = open_store(tmp_path)
    aside = next(tmp_path.glob(f"{FILENAME}.corrupt-" + "[0-9a-f]" * 8))
    assert Path(f"{aside}-wal").read_bytes() == b"old wal"
    assert not fresh.memory
    fresh.close()


# Another process holding the file ------------------------------------------------


def test_a_new_file_locked_by_another_process_is_waited_for_not_left_for_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the other process finishes while we wait
        pauses.append(seconds)
        if other.in_transaction:
            other.execute("COMMIT")

    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.05)
    monkeypatch.setattr(time, "sleep", pause)  # where tenacity waits
    opened = open_store(tmp_path)
    other.close()
    try:
        assert len(pauses) == 1
        assert not opened.memory
        opened.set("k", "v")
        assert opened.get("k") == "v"
    finally:
        opened.close()
    assert warnings_of(caplog) == []


def test_a_file_locked_past_patience_is_unavailable_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = open_store(tmp_path)
    seeded.set("instance_id", "abc")
    seeded.close()
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    other.execute("PRAGMA journal_mode=DELETE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO kv (key, value) VALUES ('x', 'y')")
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.02)
    monkeypatch.setattr(sqlite, "_OPEN_PATIENCE", 0.0)
    try:
        with pytest.raises(StateUnavailableError, match="locked"):
            open_store(tmp_path)
    finally:
        other.execute("ROLLBACK")
        other.close()
    reopened = open_store(tmp_path)  # once the other lets go, the same installation
    assert reopened.instance_id() == "abc" and not reopened.memory
    reopened.close()


def _open_at_once(data_dir: Path, gate: Any, out: Connection) -> None:
    gate.wait()
    opened = open_store(data_dir)
    out.send(opened.memory)
    opened.close()


def test_processes_opening_a_new_file_together_all_use_the_file(tmp_path: Path) -> None:
    """Processes of one start open the state file at the same moment; one left in
    memory would report as a second installation."""
    in_memory = 0
    for round_ in range(40):
        data_dir = tmp_path / f"round{round_}"
        gate = FORK.Barrier(6)
        reader, writer = FORK.Pipe(duplex=False)
        children = [
            FORK.Process(target=_open_at_once, args=(data_dir, gate, writer)) for _ in range(6)
        ]
        for child in children:
            child.start()
        for _ in children:
            assert reader.poll(30), "a child died or hung"
            in_memory += reader.recv()
        for child in children:
            child.join(10)
            assert child.exitcode == 0
    assert in_memory == 0


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


@pytest.mark.parametrize("settled", ["sent", "logged"])
def test_a_drained_backlog_gives_its_space_back_to_the_file_system(
    tmp_path: Path, settled: str
) -> None:
    store = open_store(tmp_path)
    path = tmp_path / FILENAME
    outbox = Outbox(store, OutboxLimits(max_reports=8000, max_bytes=64 << 20))
    floor = _on_disk(path)
    entries = [Entry(f"r{n:05d}", n, "periodic", 1000.0 + n, b"x" * 1500) for n in range(3000)]
    for entry in entries:
        outbox.put(entry, 1000.0)
    assert _on_disk(path) > floor + (4 << 20)
    for entry in entries:
        event = history.Event(entry.report_id, entry.sequence, "periodic", 3000.0, settled, "")
        if settled == "sent":
            outbox.sent(entry, event, {})
        else:
            outbox.logged(entry, event)
    kept = store.run(
        lambda c: c.execute("SELECT coalesce(sum(length(body)), 0) FROM sent_reports").fetchone()
    )[0]
    # What stays: the kept bodies (two to a page, as rows of 1,500 bytes fill them), no
    # free page and an empty -wal: the last report out compacted the file in full.
    wal = path.with_name(path.name + "-wal")
    assert path.stat().st_size <= floor + kept * 3 // 2, "free pages stayed"
    assert not wal.exists() or wal.stat().st_size == 0, "the -wal stayed"
    assert store.run(lambda c: c.execute("PRAGMA freelist_count").fetchone())[0] == 0
    store.close()


def test_the_usual_cycle_of_one_report_pays_for_no_full_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path)
    outbox = Outbox(store, OutboxLimits())
    fulls: list[bool] = []
    compact = store.compact

    def counted(full: bool = False) -> None:
        fulls.append(full)
        compact(full)

    monkeypatch.setattr(store, "compact", counted)
    for n in range(outbox_module.BACKLOG * 3):
        entry = Entry(f"r{n:05d}", n, "periodic", 1000.0 + n, b"x" * 1500)
        outbox.put(entry, 1000.0 + n)
        outbox.sent(
            entry, history.Event(entry.report_id, n, "periodic", 1000.0 + n, "sent", ""), {}
        )
    assert fulls == [False] * (outbox_module.BACKLOG * 3)
    store.close()


def _on_disk(path: Path) -> int:
    """The state file with its -wal, in bytes."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _inherited_then_own(store: Store, data_dir: Path, out: Connection) -> None:
    assert isinstance(store, sqlite.SqliteStore)
    set_aside = [id(conn) for conn in sqlite._INHERITED]
    other = open_store(data_dir)  # a store of the child's own, on the same file
    left = len(sqlite._INHERITED)
    out.send((set_aside, left, other.get("k"), store.get("k"), store.memory or other.memory))


def test_a_forked_child_closes_what_it_inherited_only_before_it_opens_its_own(
    tmp_path: Path,
) -> None:
    """fork() does not close the inherited connection (that would copy every page of
    its cache in the child); the child's first connection of its own closes it first,
    so that no connection of the child ever opens beside it."""
    store = open_store(tmp_path)
    store.set("k", "v")
    assert isinstance(store, sqlite.SqliteStore) and store._conn is not None
    inherited = id(store._conn)
    reader, writer = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_inherited_then_own, args=(store, tmp_path, writer))
    child.start()
    assert reader.poll(30)
    set_aside, left, from_other, from_store, memory = reader.recv()
    child.join(10)
    assert child.exitcode == 0
    assert inherited in set_aside, "closed at the fork, not set aside"
    assert left == 0, "a connection of the child's own opened beside an inherited one"
    assert (from_other, from_store, memory) == ("v", "v", False)
    assert store.get("k") == "v"  # the parent's connection is untouched
