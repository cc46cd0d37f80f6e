"""Processes waiting for the installation's state, seen by ``phonehome status``
(phonehome_plugin/state/waiting.py)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
from e2e_support import Endpoint, make_host, phonehome_config, settle

from phonehome_plugin.admin.locate import Sources
from phonehome_plugin.admin.status import status
from phonehome_plugin.cli.commands import main
from phonehome_plugin.state import waiting

FORK = multiprocessing.get_context("fork")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again once the probe goes


def test_a_note_is_seen_while_its_process_lives_and_gone_once_cleared(tmp_path: Path) -> None:
    waiting.note(tmp_path, 1_772_438_400.0, "cannot reach the state database x")
    [seen] = waiting.waiting(tmp_path)
    assert (seen.pid, seen.since, seen.why) == (
        os.getpid(),
        1_772_438_400.0,
        "cannot reach the state database x",
    )
    waiting.clear(tmp_path)
    assert waiting.waiting(tmp_path) == [] and list(tmp_path.iterdir()) == []


def _note_and_die(data_dir: Path) -> None:
    waiting.note(data_dir, 1.0, "gone")
    os._exit(0)  # killed, in effect: it never clears


def test_a_note_of_a_process_that_is_gone_is_not_shown_and_is_cleaned_up(
    tmp_path: Path,
) -> None:
    child = FORK.Process(target=_note_and_die, args=(tmp_path,))
    child.start()
    child.join(60)
    assert len(list(tmp_path.glob("phonehome-waiting-*.json"))) == 1
    assert waiting.waiting(tmp_path) == []
    waiting.note(tmp_path, 2.0, "this one waits")  # and tidies what the dead left
    assert [w.why for w in waiting.waiting(tmp_path)] == ["this one waits"]
    assert len(list(tmp_path.glob("phonehome-waiting-*.json"))) == 1
    waiting.clear(tmp_path)


def test_an_unusable_data_dir_costs_only_the_note(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    waiting.note(blocker, 1.0, "x")  # no directory to write in: nothing raised
    assert waiting.waiting(blocker) == []


@pytest.mark.postgres
def test_status_names_a_process_waiting_for_the_state_until_it_ends(
    tmp_path: Path, endpoint: Endpoint
) -> None:
    pytest.importorskip("psycopg")
    data = tmp_path / "data"
    unreachable = f"postgresql://postgres@127.0.0.1:{_closed_port()}/phonehome"
    config = {"modules": {"phonehome": {"endpoint": endpoint.url, "state_url": unreachable}}}
    host = make_host(phonehome_config(endpoint, state_url=unreachable, geoip_url=""), data)
    host.start()
    host.tick()
    settle(host)
    assert endpoint.reports == []
    shown = status(Sources(config, None, False, data, {}))
    [entry] = shown["waiting"]
    assert entry["pid"] == os.getpid() and "cannot reach the state database" in entry["why"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(config))
    out = io.StringIO()
    main(["status", "--config", str(config_file), "--data-dir", str(data)], out)
    assert f"Process {os.getpid()} of this node waits for the installation's state" in (
        out.getvalue()
    )
    host.shutdown()
    assert status(Sources(config, None, False, data, {}))["waiting"] == []
