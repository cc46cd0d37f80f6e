"""The decision record each host start with telemetry on writes into the installation's
state, for ``phonehome status`` and ``phonehome preview``: what it holds, that
credentials never reach it, that an older start never overwrites a newer one, and that
failing to make it costs the record, never telemetry."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import operator_support
import pytest
from e2e_support import START, settle
from operator_support import (
    CountingServer,
    config_of,
    make,
    phonehome_section,
    read_only,
    running,
    stored_bytes,
)

from phonehome_plugin.admin import startrecord
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.reports.system import MachineFacts, machine_facts
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import FILENAME
from phonehome_plugin.testing.simhost import SimHost

counting_server = operator_support.counting_server  # fixture


def started(host: SimHost) -> startrecord.StartRecord:
    with running(host):
        host.tick()
        settle(host)
    with read_only(host.data_dir) as view:
        record = startrecord.read(view)
    assert record is not None
    return record


def test_a_start_records_what_it_decided_and_the_facts_only_the_host_knows(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    section = phonehome_section(counting_server, enabled=True, mode="offline", interval=600)
    config_file = tmp_path / "config.yaml"
    record = started(make(config_of(section), tmp_path / "data", config_path=config_file))

    assert record.started_at == START.timestamp()
    assert (record.telemetry, record.switch, record.source) == (
        "on",
        "modules.phonehome.enabled",
        "config.yaml",
    )
    assert record.reason.startswith("on: mode offline, reports are kept for `phonehome export`")
    assert (record.mode, record.interval) == ("offline", 600)
    assert record.endpoint == counting_server.url
    assert record.config_file == str(config_file)
    assert record.state == str(tmp_path / "data" / FILENAME)
    assert record.host == {
        "version": "2.3.0",
        "edition": "enterprise",
        "prerelease": False,
        "ci": False,
    }
    assert set(record.machine) == set(MachineFacts.__annotations__)
    assert record.section == section
    assert record.settings["interval"] == 600 and record.settings["privacy.email"] == "send"


def test_a_start_with_nothing_set_was_on_by_default(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    record = started(make(config_of(phonehome_section(counting_server)), tmp_path / "data"))
    assert (record.switch, record.source, record.config_file) == ("default", "default", None)


def test_credentials_never_reach_the_record_or_the_state(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    secret = "s3cretpw"
    endpoint = counting_server.url.replace("http://", f"http://reporter:{secret}@")
    section = phonehome_section(
        counting_server, endpoint=endpoint, proxy=f"http://u:{secret}@127.0.0.1:1"
    )
    section["privacy"] = {"hostname": "omit"}
    host = make(config_of(section), tmp_path / "data")
    with running(host):
        host.tick()
        settle(host)
        files = stored_bytes(tmp_path / "data")
    with read_only(tmp_path / "data") as view:
        record = startrecord.read(view)

    assert record is not None
    assert record.endpoint == counting_server.url.replace("http://", "http://***@")
    assert record.section["proxy"] == "http://***@127.0.0.1:1"
    assert record.machine["hostname"] is None, "an omitted hostname is not kept either"
    assert all(secret.encode() not in content for content in files.values())


def test_an_older_start_never_overwrites_a_newer_ones_record(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = config_of(phonehome_section(counting_server))
    newer = started(make(config, data, at=START + timedelta(hours=2)))
    older = make(config, data, at=START + timedelta(hours=1))
    older.start()
    store = open_store(data)
    try:
        startrecord.host_started(store, Settings(), older.app, machine_facts)
        kept = startrecord.read(store)
    finally:
        store.close()
        older.shutdown()
    assert kept == newer


def test_a_record_that_cannot_be_made_costs_the_record_not_telemetry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = SimHost({}, tmp_path, load_entrypoints=False)
    app = host.start()
    store = open_store(tmp_path / "data")

    def broken() -> Any:
        raise OSError("no /proc here")

    try:
        with caplog.at_level(logging.WARNING, logger="phonehome_plugin"):
            assert startrecord.host_started(store, Settings(), app, broken) is None
        assert startrecord.read(store) is None
        assert store.get(startrecord.NOTICE_KEY) is not None, "the notice is shown all the same"
    finally:
        store.close()
        host.shutdown()
    said = [r.getMessage() for r in caplog.records if "could not record" in r.getMessage()]
    assert said == ["phonehome: could not record this start for `phonehome status` (OSError)"]


def test_a_record_of_another_version_reads_as_none_or_without_its_new_fields(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    try:
        store.set(startrecord.RECORD_KEY, "not json")
        assert startrecord.read(store) is None
        store.set(startrecord.RECORD_KEY, '{"started_at": 1}')
        assert startrecord.read(store) is None
    finally:
        store.close()
