"""``phonehome preview`` builds the next report now, as the host will.

A host start runs in a process of its own (``HostProcess``), with a third-party
collector installed as real metadata, sending to a loopback receiver; the preview
runs as a real ``phonehome`` process reading the real state file. The preview equals
the next report the receiver gets, all but its id and its times, and leaves the state
byte for byte as it was: nothing sent, stored or consumed, no lookup made.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import e2e_support
import operator_support
import pytest
from e2e_support import START, pin_instance
from operator_support import (
    CountingServer,
    HostProcess,
    config_of,
    phonehome_section,
    run_cli,
    write_config,
)

from phonehome_plugin.admin.locate import ProblemError, Sources
from phonehome_plugin.admin.preview import preview
from phonehome_plugin.cli import commands
from phonehome_plugin.reports import schedule, schema
from phonehome_plugin.state.store import FILENAME

acme_distribution = e2e_support.acme_distribution  # fixture
counting_server = operator_support.counting_server  # fixture
shell_env = operator_support.shell_env  # fixture

CLEAN: dict[str, str | None] = {"DO_NOT_TRACK": None, "MAESTROHUB_PHONEHOME_ENABLED": None}


def without_ids_and_times(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` less what the preview cannot share with the real one: its id, when it
    was generated, and the uptime (this machine's clock, not the host's)."""
    rest = {k: v for k, v in report.items() if k not in ("report_id", "generated_at")}
    rest["executions"] = {k: v for k, v in rest["executions"].items() if k != "uptime_seconds"}
    return rest


def state_files(data: Path) -> dict[str, bytes]:
    """The state file and its write-ahead log (a reader may touch the shared-memory
    index beside them, which holds no state)."""
    return {p.name: p.read_bytes() for p in sorted(data.iterdir()) if not p.name.endswith("-shm")}


def test_the_preview_is_the_next_report_the_receiver_gets(
    acme_distribution: Path,
    counting_server: CountingServer,
    tmp_path: Path,
    shell_env: dict[str, str],
) -> None:
    traffic = counting_server.traffic
    data = tmp_path / "data"
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.call("save_connection", "mqtt")
        host.call("save_connection", "opcua")
        host.call("save_pipeline", ["trigger.manual", "action.http"])
        host.tick()
        host.call("create_user", "admin@example.com")
        host.call("run_executions", 7, ("completed", "failed"))
        host.tick(60)  # the counts are carried into the installation's state
        assert [json.loads(b)["trigger"] for b in traffic.bodies] == ["startup", "first_user"]
        lookups, before = traffic.geoip_requests, state_files(data)

        shown = run_cli(
            ["preview", "--config", str(config), "--data-dir", str(data)], tmp_path, shell_env
        )

        assert state_files(data) == before, "the preview wrote nothing"
        assert traffic.geoip_requests == lookups, "and looked nothing up"
        assert len(traffic.bodies) == 2, "and sent nothing"
        built = json.loads(shown.stdout)
        due = schedule.periodic_due_at(
            schedule.slot_of(START.timestamp(), 3600, schedule.offset(built["instance_id"], 3600)),
            built["instance_id"],
            3600,
        )
        host.tick_at(START + timedelta(seconds=due - START.timestamp() + 1))

    assert shown.code == commands.OK, shown.stderr
    assert shown.stdout.endswith(b"\n") and shown.stdout.count(b"\n") == 1
    sent = json.loads(traffic.bodies[-1])
    assert sent["trigger"] == built["trigger"] == "periodic"
    assert without_ids_and_times(built) == without_ids_and_times(sent)
    assert built["report_id"] != sent["report_id"]
    # The sections a preview could get wrong, were it built from this process's view:
    assert built["collectors"]["acme.counter"] == {"saves": 2, "by_type": {"mqtt": 1, "opcua": 1}}
    assert built["system"]["version"] == "2.3.0" and built["system"]["edition"] == "enterprise"
    assert built["executions"]["since_previous_report"]["total"] == 7
    assert built["location"]["city"] == "Munich"
    assert schema.errors(built) == []
    assert "collectors run inside MaestroHub" in shown.stderr


def test_preview_in_normal_operation_exits_0_and_says_what_it_took_from_where(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.tick()  # the startup report went out: nothing waits to be sent

    shown = run_cli(
        ["preview", "--json", "--config", str(config), "--data-dir", str(data)],
        tmp_path,
        shell_env,
    )

    assert shown.code == commands.OK, shown.stderr
    made = json.loads(shown.stdout)
    assert made["pending"] == 0 and made["schema_errors"] == []
    assert made["report"]["sequence"] == 2
    assert any("looked up at 2026-03-02T08:00:00Z" in note for note in made["notes"])


def test_a_preview_where_telemetry_never_ran_is_a_first_report_and_creates_nothing(
    tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()

    shown = run_cli(["preview", "--json", "--data-dir", str(data)], tmp_path, shell_env)

    assert shown.code == commands.OK, shown.stderr
    made = json.loads(shown.stdout)
    assert list(data.iterdir()) == []
    assert made["report"]["sequence"] == 1 and made["report"]["users"]["total"] == 0
    assert uuid.UUID(made["report"]["instance_id"]).version == 4
    assert any("never ran" in note for note in made["notes"])


def test_the_api_refuses_an_unknown_trigger_and_a_missing_data_dir(tmp_path: Path) -> None:
    sources = Sources.from_files(None, str(tmp_path / "missing"), {})
    with pytest.raises(ProblemError, match="does not exist"):
        preview(sources)
    with pytest.raises(ProblemError, match="no trigger"):
        preview(Sources.from_files(None, str(tmp_path), {}), "hourly")


def test_pending_prints_the_stored_report_waiting_to_be_sent_byte_for_byte(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    traffic = counting_server.traffic
    traffic.status, traffic.retry_after = 503, "120"
    traffic.geoip = {**traffic.geoip, "city": "München"}
    data = tmp_path / "data"
    pin_instance(data)  # no periodic slot falls due in these 180 s: the last body is it
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.tick()
        assert len(traffic.bodies) == 1, "the startup report was refused and waits"
        ascii_shell = {**shell_env, "PYTHONIOENCODING": "ascii"}
        args = ["preview", "--pending", "--config", str(config), "--data-dir", str(data)]
        waiting = run_cli(args, tmp_path, ascii_shell)
        traffic.status = 202
        host.tick(180)

    assert waiting.code == commands.OK, waiting.stderr
    assert traffic.bodies[-1] + b"\n" == waiting.stdout
    assert "München".encode() in waiting.stdout
    assert (data / FILENAME).exists()
    none = run_cli(args, tmp_path, shell_env)
    assert (none.code, none.stdout) == (commands.NOTHING, b"")
    assert len(none.stderr.splitlines()) == 1
