"""The read-only view of an installation's state that the ``phonehome`` command uses.

Against real state files written by the plugin: it reads what the plugin wrote
(also while the plugin runs, from the WAL), never writes or creates a file, and
turns every way of failing to read into one :class:`NoStateError` with a message.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import operator_support
import pytest
from e2e_support import START, settle
from operator_support import (
    CountingServer,
    Installation,
    config_of,
    listing,
    make,
    phonehome_section,
    running,
)

from phonehome_plugin.cli.state_view import (
    BrokenStateError,
    NoDataDirError,
    NoStateError,
    StateView,
    stamp,
)
from phonehome_plugin.state import backends
from phonehome_plugin.state.store import FILENAME

counting_server = operator_support.counting_server  # fixture
installation = operator_support.installation  # fixture


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in directory.iterdir()
    }


@pytest.fixture
def view(installation: Installation) -> Iterator[StateView]:
    opened = StateView(installation.data)
    yield opened
    opened.close()


def test_it_reads_what_the_plugin_wrote(installation: Installation, view: StateView) -> None:
    pending = view.pending()
    assert [p.trigger for p in pending] == ["startup", "first_user"]
    assert [p.sequence for p in pending] == [2, 3]
    for entry in pending:
        report = json.loads(entry.body)
        assert (report["report_id"], report["sequence"]) == (entry.report_id, entry.sequence)
        assert report["instance_id"] == view.kv("instance_id")
        assert entry.attempts == 0
    [event] = view.history(10)
    sent = json.loads(installation.sent[0])
    assert event["report_id"] == sent["report_id"]
    assert (event["result"], event["at"]) == ("sent", "2026-03-02T08:00:00Z")
    assert view.kv("no such key") is None


def test_looking_after_a_clean_shutdown_creates_and_changes_no_file(
    installation: Installation,
) -> None:
    before = fingerprint(installation.data)
    assert list(before) == [FILENAME]

    view = StateView(installation.data)
    view.pending(), view.history(5), view.kv("instance_id"), view.next_periodic(3600)
    view.close()

    assert fingerprint(installation.data) == before


def test_it_reads_a_running_installation_from_its_wal_without_creating_anything(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)
        files = listing(data)
        assert files is not None and f"{FILENAME}-wal" in files
        first = StateView(data)
        assert [p.trigger for p in first.pending()] == ["startup"]
        host.create_user("admin@example.com")
        settle(host)
        assert [p.trigger for p in first.pending()] == ["startup", "first_user"]
        first.close()
        assert listing(data) == files


def test_history_is_newest_first_within_the_limit(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
    view = StateView(data)
    try:
        assert [e["trigger"] for e in view.history(10)] == ["first_user", "startup"]
        assert [e["trigger"] for e in view.history(1)] == ["first_user"]
    finally:
        view.close()


def test_next_periodic_is_when_the_plugin_builds_its_next_periodic_report(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)
        view = StateView(data)
        due_text = view.next_periodic(3600)
        assert due_text is not None
        due = datetime.fromisoformat(due_text.replace("Z", "+00:00"))
        assert START < due <= START + timedelta(hours=1, minutes=5)

        host.tick((due - host.clock.now()).total_seconds() - 1)
        settle(host)
        assert [p.trigger for p in view.pending()] == ["startup"], "not yet due"
        host.tick(2)
        settle(host)
        assert [p.trigger for p in view.pending()] == ["startup", "periodic"]
        view.close()


def test_stamp_is_iso_8601_utc_to_the_second() -> None:
    assert stamp(START.timestamp() + 0.75) == "2026-03-02T08:00:00Z"


# Every way of not being able to read --------------------------------------------------


def test_a_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(NoDataDirError, match="does not exist"):
        StateView(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_a_data_dir_where_telemetry_never_ran(tmp_path: Path) -> None:
    with pytest.raises(NoStateError, match="never ran") as caught:
        StateView(tmp_path)
    assert type(caught.value) is NoStateError, "missing, not broken"
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_database(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(BrokenStateError, match="cannot read"):
        StateView(tmp_path)


def test_a_database_of_another_program(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("CREATE TABLE kv (key TEXT, value TEXT)")  # a kv, but nothing else
    conn.close()
    view = StateView(tmp_path)
    try:
        with pytest.raises(BrokenStateError, match="no such table: outbox"):
            view.pending()
        with pytest.raises(BrokenStateError, match="no such table: history"):
            view.history(1)
    finally:
        view.close()


def test_a_state_file_damaged_where_the_outbox_lives(tmp_path: Path) -> None:
    """Readable enough to open, broken in the outbox's pages: still a clean error."""
    store = backends.open_store(tmp_path)
    for n in range(10):
        body = f'{{"n":{n},"pad":"{"x" * 3000}"}}'.encode()
        store.run(
            lambda c, n=n, body=body: c.execute(
                "INSERT INTO outbox VALUES (?, ?, 'periodic', 0, ?, 0, 0)", (f"r{n}", n, body)
            )
        )
    root = store.run(
        lambda c: c.execute("SELECT rootpage FROM sqlite_master WHERE name='outbox'").fetchone()
    )[0]
    page = store.run(lambda c: c.execute("PRAGMA page_size").fetchone())[0]
    store.close()
    state = tmp_path / FILENAME
    with state.open("r+b") as file:
        file.seek((root - 1) * page)
        file.write(b"\xa5" * page)

    view = StateView(tmp_path)  # the schema and the kv table are intact
    try:
        assert view.kv("instance_id") is None
        with pytest.raises(BrokenStateError, match="malformed"):
            view.pending()
    finally:
        view.close()


def test_a_stored_slot_that_is_not_a_number_gives_no_next_periodic(tmp_path: Path) -> None:
    store = backends.open_store(tmp_path)
    store.instance_id()
    store.set("periodic.last_slot", "not a slot")
    store.close()
    view = StateView(tmp_path)
    try:
        assert view.next_periodic(3600) is None
    finally:
        view.close()
