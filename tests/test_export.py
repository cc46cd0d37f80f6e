"""Air-gapped sites: ``phonehome export`` in mode ``offline``, and the way back.

A host start in a process of its own runs for nine host days in mode ``offline``
(``HostProcess``); ``phonehome export`` (a real process, the real state file) writes
what it kept, marks it, and writes a manifest; ``phonehome upload`` sends that export
to a real receiver (:class:`phonehome_plugin.testing.endpoint.Receiver`) twice, which
keeps each report once. Back in mode ``send``, the backlog drains at a bounded rate.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import operator_support
import pytest
import sqlite_support
from e2e_support import START, pin_instance
from operator_support import (
    HostProcess,
    config_of,
    pending_bodies,
    run_cli,
    write_config,
)
from sqlite_support import run_child

from phonehome_plugin.admin.export import export, manifest_of
from phonehome_plugin.admin.locate import ProblemError, Sources
from phonehome_plugin.cli import commands
from phonehome_plugin.state.outbox import DRAIN_BURST, DRAIN_WINDOW
from phonehome_plugin.testing.endpoint import Receiver

shell_env = operator_support.shell_env  # fixture
shared_dir = sqlite_support.shared_dir  # fixture

CLEAN: dict[str, str | None] = {"DO_NOT_TRACK": None, "MAESTROHUB_PHONEHOME_ENABLED": None}
DAY = 86400


@pytest.fixture
def receiver() -> Any:
    with Receiver() as running:
        yield running


def offline_days(
    receiver: Receiver, tmp_path: Path, days: int
) -> tuple[Path, Path, dict[str, Any]]:
    """A data dir after ``days`` host days in mode offline: a startup report, a user at
    once, then an hourly tick; returns (config, data dir, the offline section)."""
    section = {"endpoint": receiver.url, "geoip_url": receiver.geoip_url, "mode": "offline"}
    config = write_config(tmp_path / "config.yaml", section)
    data = tmp_path / "data"
    # An installation whose slots start well between the hourly ticks: at a tick
    # inside a slot's jitter the schedule reports the slot before, and a tick an
    # interval later finds it done, so ticking at the interval itself skips slots.
    pin_instance(data)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.call("save_connection", "modbus")
        host.tick()
        host.call("create_user", "admin@example.com")
        host.run_for(days * DAY, 3600)
    return config, data, section


def triggers(lines: list[bytes]) -> Counter[str]:
    return Counter(json.loads(line)["trigger"] for line in lines)


def test_nine_days_offline_export_once_and_an_upload_twice_delivers_once(
    receiver: Receiver, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data, section = offline_days(receiver, tmp_path, 9)
    where = ["--config", str(config), "--data-dir", str(data)]
    first = tmp_path / "first.jsonl"

    done = run_cli(["export", str(first), *where], tmp_path, shell_env)

    assert done.code == commands.OK, done.stderr
    lines = first.read_bytes().splitlines()
    kinds = triggers(lines)
    assert (kinds["startup"], kinds["first_user"]) == (1, 1), "kept past the 7-day age bound"
    assert 160 <= kinds["periodic"] <= 7 * 24 + 1, "periodic reports age out after 7 days"
    manifest = json.loads(manifest_of(first).read_bytes())
    assert manifest["count"] == len(lines)
    assert [r["sha256"] for r in manifest["reports"]] == [
        hashlib.sha256(line).hexdigest() for line in lines
    ]
    assert receiver.reports == [], "offline: nothing was sent"
    assert f"exported {len(lines)} report(s) to {first}" in done.stdout.decode()

    again = run_cli(["export", str(tmp_path / "again.jsonl"), *where], tmp_path, shell_env)
    assert (tmp_path / "again.jsonl").read_bytes() == b"", "exported once: nothing new"
    assert b"nothing new to export" in again.stdout
    with HostProcess(
        config_of(section), data, START + timedelta(days=9, hours=2), environ=CLEAN
    ) as host:
        host.tick()  # a new start: its startup report (and the periodic it stands for)
    later = tmp_path / "later.jsonl"
    assert run_cli(["export", str(later), *where], tmp_path, shell_env).code == commands.OK
    assert triggers(later.read_bytes().splitlines()) == {"startup": 1}
    everything = triggers(pending_bodies(data))
    assert everything["first_user"] == 0, "exported once, it ages out like the rest"

    # On a connected machine: the export goes up, twice; the receiver keeps it once.
    uploads = [
        run_cli(["upload", str(first), "--endpoint", receiver.url], tmp_path, shell_env)
        for _ in range(2)
    ]
    for upload in uploads:
        assert upload.code == commands.OK, upload.stderr
        assert f"{len(lines)} of {len(lines)} report(s) delivered".encode() in upload.stdout
    assert len(receiver.reports) == len(lines)
    assert receiver.duplicates == len(lines)
    assert sorted(json.dumps(r, sort_keys=True) for r in receiver.reports) == sorted(
        json.dumps(json.loads(line), sort_keys=True) for line in lines
    )
    keys = [r.idempotency_key for r in receiver.requests if r.method == "POST"]
    assert keys == [json.loads(line)["report_id"] for line in lines] * 2


def test_export_to_standard_output_writes_no_file(
    receiver: Receiver, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data, _ = offline_days(receiver, tmp_path, 0)
    where = ["--config", str(config), "--data-dir", str(data)]

    done = run_cli(["export", "-", "--no-mark", *where], tmp_path, shell_env)

    assert done.code == commands.OK, done.stderr
    assert done.stdout.splitlines() == pending_bodies(data)
    assert not (tmp_path / "-").exists()
    assert "exported 2 report(s) to standard output" in done.stderr
    # Not marked: the next export writes them again; --all always does.
    again = run_cli(["export", "-", *where], tmp_path, shell_env)
    assert again.stdout == done.stdout
    assert run_cli(["export", "-", *where], tmp_path, shell_env).stdout == b""
    assert run_cli(["export", "-", "--all", *where], tmp_path, shell_env).stdout == done.stdout


def _export_unprivileged(data: Path) -> dict[str, Any]:
    """In a child that cannot write ``data``: an export to a directory it can write."""
    sources = Sources.from_files(str(data.parent / "config.yaml"), str(data), {})
    try:
        export(sources, str(data.parent / "out" / "out.jsonl"))
    except ProblemError as error:
        return {"error": str(error)}
    return {"error": None}


def test_marks_that_cannot_be_written_are_one_line_after_the_file_is_whole(
    receiver: Receiver, shared_dir: Path
) -> None:
    config, data, _ = offline_days(receiver, shared_dir, 0)
    (shared_dir / "out").mkdir(mode=0o777)
    (shared_dir / "out").chmod(0o777)
    for path in [config, *data.iterdir()]:
        path.chmod(0o644)
    data.chmod(0o755)

    found = run_child(_export_unprivileged, data, unprivileged=True)

    assert found["error"] is not None and "cannot be written from here" in found["error"]
    written = shared_dir / "out" / "out.jsonl"
    assert len(written.read_bytes().splitlines()) == 2, "the file is whole all the same"
    again = export(Sources.from_files(str(config), str(data), {}), str(written))
    assert len(again.reports) == 2, "none was marked"


def test_back_in_send_mode_the_backlog_drains_at_a_bounded_rate(
    receiver: Receiver, tmp_path: Path
) -> None:
    _, data, section = offline_days(receiver, tmp_path, 2)
    kept = {json.loads(body)["report_id"] for body in pending_bodies(data)}
    backlog = len(kept)
    assert backlog > 3 * DRAIN_BURST
    send = {**section, "mode": "send"}
    with HostProcess(config_of(send), data, START + timedelta(days=2, hours=1)) as host:
        host.tick()
        assert len(receiver.reports) == DRAIN_BURST, "one window's worth, not the backlog"
        host.tick(DRAIN_WINDOW / 2)
        assert len(receiver.reports) == DRAIN_BURST
        host.tick(DRAIN_WINDOW / 2)
        assert len(receiver.reports) == 2 * DRAIN_BURST
        host.run_for(30 * 60, 10)

    received = {r["report_id"]: r["trigger"] for r in receiver.reports}
    assert kept <= set(received), "all of it went out"
    new = Counter(trigger for rid, trigger in received.items() if rid not in kept)
    assert new["startup"] == 1 and new["periodic"] <= 1, "and what the new start made"
    assert receiver.duplicates == 0
    assert pending_bodies(data) == []
