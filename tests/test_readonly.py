"""The state store opened read-only, as the ``phonehome`` command opens it.

It reads what the plugin wrote through the plugin's own Store, Outbox and history
code, and creates, migrates, writes and locks nothing: a write raises
:class:`ReadOnlyError` and leaves every byte as it was, a read holds no writer
back, and every way of failing to read is one :class:`NoStateError` with a message.
SQLite on real state files of the plugin, at rest (every process closed the file)
and live (a host running); PostgreSQL (marker ``postgres``) on a fresh database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import operator_support
import pytest
from e2e_support import settle
from operator_support import (
    CountingServer,
    Installation,
    config_of,
    listing,
    make,
    phonehome_section,
    read_only,
    running,
)

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import backends, forksafe, history, sqlite
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import (
    FILENAME,
    BrokenStateError,
    Conn,
    NoDataDirError,
    NoStateError,
    ReadOnlyError,
    Store,
)

counting_server = operator_support.counting_server  # fixture
installation = operator_support.installation  # fixture

WRITES: dict[str, Callable[[Store], object]] = {
    "next_sequence": lambda s: s.next_sequence(),
    "set": lambda s: s.set("instance_id", "another"),
    "instance_id (an insert even when the id exists)": lambda s: s.instance_id(),
    "add": lambda s: s.add({"lifetime.executions": 1}),
    "take (a delete, even of nothing)": lambda s: s.take("no such prefix."),
    "claim": lambda s: s.claim("test.claim", "me", 0.0),
    "outbox put": lambda s: Outbox(s, OutboxLimits()).put(
        Entry("r-new", 99, "periodic", 0.0, b"{}"), 0.0
    ),
    "outbox lease": lambda s: Outbox(s, OutboxLimits()).lease(0.0, 60.0),
    "history record": lambda s: history.record(
        s, history.Event("r-new", 99, "periodic", 0.0, "sent", "HTTP 202")
    ),
}
"""One call of each kind of write the plugin makes."""


def not_refused(store: Store) -> list[str]:
    """The writes of :data:`WRITES` that ``store`` did not refuse with :class:`ReadOnlyError`;
    after each refusal the store still reads."""
    instance_id = store.get("instance_id")
    missed = []
    for name, write in WRITES.items():
        try:
            write(store)
        except ReadOnlyError as error:
            assert "open read-only" in str(error), error
        else:
            missed.append(name)
        assert store.get("instance_id") == instance_id, name
    return missed


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    """The digest and mtime of every file in ``directory`` but a ``-shm``: SQLite's
    shared memory, where every reader of a live file marks what it reads."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
        if not p.name.endswith("-shm")
    }


@pytest.fixture(params=["at rest", "live"])
def state(
    request: pytest.FixtureRequest, counting_server: CountingServer, tmp_path: Path
) -> Iterator[Path]:
    """A data dir whose state the plugin wrote: every process closed it, or a host runs."""
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
        if request.param == "live":
            assert f"{FILENAME}-wal" in (listing(data) or [])
            yield data
            return
    assert listing(data) == [FILENAME]
    yield data


# Reading ------------------------------------------------------------------------------


def test_it_reads_what_the_plugin_wrote(installation: Installation) -> None:
    with read_only(installation.data) as store:
        assert (store.read_only, store.memory) == (True, False)
        assert store.path == installation.data / FILENAME
        pending = Outbox(store, OutboxLimits()).pending()
        assert [p.trigger for p in pending] == ["startup", "first_user"]
        assert [p.sequence for p in pending] == [2, 3]
        for entry in pending:
            report = json.loads(entry.body)
            assert (report["report_id"], report["sequence"]) == (entry.report_id, entry.sequence)
            assert report["instance_id"] == store.get("instance_id")
            assert entry.attempts == 0
        [event] = history.recent(store, 10)
        assert event.report_id == json.loads(installation.sent[0])["report_id"]
        assert (event.result, event.detail) == ("sent", "HTTP 202")
        assert store.get("no such key") is None


def test_a_live_file_is_read_live_and_nothing_is_created(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)
        files = listing(data)
        assert files is not None and f"{FILENAME}-wal" in files
        with read_only(data) as store:
            outbox = Outbox(store, OutboxLimits())
            assert [p.trigger for p in outbox.pending()] == ["startup"]
            host.create_user("admin@example.com")
            settle(host)
            assert [p.trigger for p in outbox.pending()] == ["startup", "first_user"]
        assert listing(data) == files


def test_reading_creates_and_changes_no_file(state: Path) -> None:
    before, files = fingerprint(state), listing(state)
    with read_only(state) as store:
        outbox = Outbox(store, OutboxLimits())
        outbox.pending(), outbox.size(), outbox.gate(), outbox.next_due(), outbox.due(0.0)
        history.recent(store, 5), store.get("instance_id"), store.counters("lifetime.")
        store.is_done("first_user")
        assert listing(state) == files, "no -wal or -shm while open either"
    assert listing(state) == files
    assert fingerprint(state) == before


def test_a_read_holds_no_writer_back(state: Path) -> None:
    """A writer commits at once (no waiting: timeout 0) in the middle of a read, which
    goes on seeing the state it began with."""

    def write_meanwhile(c: Conn) -> object:
        c.execute("SELECT count(*) FROM outbox").fetchone()
        writer = sqlite3.connect(state / FILENAME, timeout=0, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO kv (key, value) VALUES ('test.mark', 'written')")
            writer.execute("COMMIT")
        finally:
            writer.close()
        return c.execute("SELECT value FROM kv WHERE key = 'test.mark'").fetchone()

    with read_only(state) as store:
        assert store.run(write_meanwhile) is None
    with read_only(state) as store:
        assert store.get("test.mark") == "written"


def test_every_sqlite_call_of_a_read_only_store_holds_the_fork_guard(
    installation: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[bool] = []
    real = sqlite.connect

    def traced(target: str, uri: bool = False) -> sqlite3.Connection:
        conn = real(target, uri=uri)
        conn.set_trace_callback(lambda _statement: held.append(forksafe.GUARD.locked()))
        return conn

    monkeypatch.setattr(sqlite, "connect", traced)
    with read_only(installation.data) as store:
        Outbox(store, OutboxLimits()).pending()
        history.recent(store)
        assert not_refused(store) == []
    assert len(held) > 10 and all(held)


# Writing ------------------------------------------------------------------------------


def test_every_write_raises_and_changes_no_byte(state: Path) -> None:
    before, files = fingerprint(state), listing(state)
    with read_only(state) as store:
        assert not_refused(store) == []
        assert listing(state) == files
    assert listing(state) == files
    assert fingerprint(state) == before


# A busy file ---------------------------------------------------------------------------


@pytest.fixture
def held_exclusively(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A state file in rollback mode under an exclusive lock of another program:
    SQLite readers must wait for it (a WAL-mode reader never waits for writers)."""
    store = backends.open_store(tmp_path)
    store.instance_id()
    store.close()
    holder = sqlite3.connect(
        tmp_path / FILENAME, timeout=0, isolation_level=None, check_same_thread=False
    )
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    yield holder
    holder.close()


def test_a_busy_file_is_waited_for_with_the_guard_free_then_one_clear_error(
    held_exclusively: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_PATIENCE", 0.5)
    free: list[bool] = []

    def take_the_guard_meanwhile() -> None:
        time.sleep(0.1)
        free.append(forksafe.GUARD.acquire(timeout=0.2))
        forksafe.GUARD.release()

    thread = threading.Thread(target=take_the_guard_meanwhile)
    thread.start()
    started = time.monotonic()
    with pytest.raises(BrokenStateError, match="database is locked") as caught:
        backends.open_store(tmp_path, read_only=True)
    waited = time.monotonic() - started
    thread.join()
    assert str(caught.value).startswith(f"cannot read {tmp_path / FILENAME}: ")
    assert waited >= 0.5
    assert free == [True], "the guard is free between attempts"


def test_a_file_busy_for_a_moment_is_read_once_free(
    held_exclusively: sqlite3.Connection, tmp_path: Path
) -> None:
    threading.Timer(0.2, lambda: held_exclusively.execute("COMMIT")).start()
    with read_only(tmp_path) as store:
        assert store.get("instance_id") is not None


# Every way of not being able to read --------------------------------------------------


def test_a_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(NoDataDirError, match="does not exist"):
        backends.open_store(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_a_data_dir_where_telemetry_never_ran(tmp_path: Path) -> None:
    with pytest.raises(NoStateError, match="never ran") as caught:
        backends.open_store(tmp_path, read_only=True)
    assert type(caught.value) is NoStateError, "missing, not broken"
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_database(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(BrokenStateError, match="cannot read"):
        backends.open_store(tmp_path, read_only=True)
    assert listing(tmp_path) == [FILENAME]


def test_a_database_of_another_program(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("CREATE TABLE kv (key TEXT, value TEXT)")  # a kv, but nothing else
    conn.close()
    with read_only(tmp_path) as store:
        with pytest.raises(BrokenStateError, match="no such table: outbox"):
            Outbox(store, OutboxLimits()).pending()
        with pytest.raises(BrokenStateError, match="no such table: history"):
            history.recent(store, 1)
    assert listing(tmp_path) == [FILENAME], "no table was made, no journal mode set"


def _insert_outbox_row(c: Conn, row: tuple[str, int, bytes]) -> None:
    c.execute("INSERT INTO outbox VALUES (?, ?, 'periodic', 0, ?, 0, 0)", row)


def test_a_state_file_damaged_where_the_outbox_lives(tmp_path: Path) -> None:
    """Readable enough to open, broken in the outbox's pages: still a clean error."""
    store = backends.open_store(tmp_path)
    for n in range(10):
        body = f'{{"n":{n},"pad":"{"x" * 3000}"}}'.encode()
        store.run(functools.partial(_insert_outbox_row, row=(f"r{n}", n, body)))
    root = store.run(
        lambda c: c.execute("SELECT rootpage FROM sqlite_master WHERE name='outbox'").fetchone()
    )[0]
    page = store.run(lambda c: c.execute("PRAGMA page_size").fetchone())[0]
    store.close()
    with (tmp_path / FILENAME).open("r+b") as file:
        file.seek((root - 1) * page)
        file.write(b"\xa5" * page)

    with read_only(tmp_path) as damaged:  # the schema and the kv table are intact
        assert damaged.get("instance_id") is None
        with pytest.raises(BrokenStateError, match="malformed"):
            Outbox(damaged, OutboxLimits()).pending()


# PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_read_only_creates_no_table(pg_url: str) -> None:
    import psycopg

    with pytest.raises(BrokenStateError, match=r'cannot read .*: relation "kv" does not exist$'):
        backends.open_store(None, pg_url, read_only=True)
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


@pytest.mark.postgres
def test_postgresql_read_only_reads_refuses_every_write_and_holds_no_writer_back(
    pg_url: str,
) -> None:
    writer = backends.open_store(None, pg_url)
    try:
        assert not writer.memory
        instance_id, sequence = writer.instance_id(), writer.next_sequence()
        Outbox(writer, OutboxLimits()).put(Entry("r1", sequence, "startup", 1.0, b'{"a":1}'), 1.0)
        history.record(writer, history.Event("r0", 0, "startup", 1.0, "sent", "HTTP 202"))

        reader = backends.open_store(None, pg_url, read_only=True)
        try:
            assert reader.read_only and reader.get("instance_id") == instance_id
            assert [e.body for e in Outbox(reader, OutboxLimits()).pending()] == [b'{"a":1}']
            assert [e.report_id for e in history.recent(reader)] == ["r0"]
            assert not_refused(reader) == []

            def write_meanwhile(c: Conn) -> int:
                read = c.execute("SELECT value FROM counters WHERE name = 'sequence'").fetchone()
                writer.next_sequence()  # the writers' lock is free: the reader never takes it
                return int(read[0])

            assert reader.run(write_meanwhile) == sequence
        finally:
            reader.close()
        assert writer.next_sequence() == sequence + 2, "only the writer's own writes happened"
    finally:
        writer.close()
