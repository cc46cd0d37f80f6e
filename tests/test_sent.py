"""``phonehome history``: the exact bytes that left, and what changed from one to the next.

A host start in a process of its own sends to a loopback receiver; ``phonehome
history`` (a real process, reading the real state file) prints each report's bytes,
whose sha256 is that of what the receiver read, and a field-level diff against the
report before it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import operator_support
import pytest
from e2e_support import pin_instance
from operator_support import (
    CountingServer,
    HostProcess,
    config_of,
    phonehome_section,
    run_cli,
    write_config,
)

from phonehome_plugin.admin.locate import ProblemError, Sources
from phonehome_plugin.admin.sent import Change, diff, field_diff, report
from phonehome_plugin.cli import commands

counting_server = operator_support.counting_server  # fixture
shell_env = operator_support.shell_env  # fixture

CLEAN: dict[str, str | None] = {"DO_NOT_TRACK": None, "MAESTROHUB_PHONEHOME_ENABLED": None}


@pytest.fixture
def sent_three(counting_server: CountingServer, tmp_path: Path) -> tuple[Path, Path]:
    """A data dir whose host sent a startup, a first-user and a periodic report, the
    first of them refused once (a failed series, then sent)."""
    traffic = counting_server.traffic
    traffic.status = 503
    data = tmp_path / "data"
    pin_instance(data)  # no periodic slot falls due in the first 300 s of host clock
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.call("save_connection", "mqtt")
        host.tick()
        traffic.status = 202
        host.tick(300)  # past the backoff: sent
        host.call("create_user", "admin@example.com")
        host.call("save_connection", "s7")
        host.run_for(2 * 3600, 600)
    return config, data


def test_history_prints_the_exact_bytes_the_receiver_got(
    sent_three: tuple[Path, Path],
    counting_server: CountingServer,
    tmp_path: Path,
    shell_env: dict[str, str],
) -> None:
    config, data = sent_three
    where = ["--config", str(config), "--data-dir", str(data)]
    received = {json.loads(body)["sequence"]: body for body in counting_server.traffic.bodies}
    listed = run_cli(["history", "--json", *where], tmp_path, shell_env)

    events = json.loads(listed.stdout)
    assert {e["result"] for e in events} == {"sent", "failed"}
    assert len(received) >= 3
    for sequence, body in received.items():
        shown = run_cli(["history", "--show", str(sequence), *where], tmp_path, shell_env)
        assert shown.code == commands.OK, shown.stderr
        assert shown.stdout == body + b"\n"
        digest = hashlib.sha256(shown.stdout[:-1]).hexdigest()
        assert digest == hashlib.sha256(body).hexdigest()
        assert {e["sha256"] for e in events if e["sequence"] == sequence} == {digest}
    by_id = run_cli(
        ["history", "--show", json.loads(received[1])["report_id"], *where], tmp_path, shell_env
    )
    assert by_id.stdout == received[1] + b"\n"
    last = run_cli(["history", "--show", "last", *where], tmp_path, shell_env)
    assert last.stdout == received[max(received)] + b"\n"


def test_history_diffs_a_report_against_the_one_before_field_by_field(
    sent_three: tuple[Path, Path], tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data = sent_three
    where = ["--config", str(config), "--data-dir", str(data)]

    shown = run_cli(["history", "--diff", "2", *where], tmp_path, shell_env)
    as_json = json.loads(
        run_cli(["history", "--diff", "2", "--json", *where], tmp_path, shell_env).stdout
    )

    assert shown.code == commands.OK, shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert lines[0] == "report #2 (first_user) against #1:"
    assert '~ trigger: "startup" -> "first_user"' in lines
    assert "~ users.total: 0 -> 1" in lines
    assert '~ users.first_email: null -> "admin@example.com"' in lines
    assert (as_json["report"], as_json["previous"]) == (2, 1)
    fields = {c["field"] for c in as_json["changes"]}
    assert "connections.by_type.mqtt" not in fields, "unchanged fields are not listed"
    third = json.loads(
        run_cli(["history", "--diff", "3", "--json", *where], tmp_path, shell_env).stdout
    )
    assert {
        "field": "connections.by_type.s7",
        "before": None,
        "after": 1,
        "present_before": False,
        "present_after": True,
    } in third["changes"]


def test_the_first_report_diffs_against_nothing_and_an_unknown_one_is_one_line(
    sent_three: tuple[Path, Path], tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data = sent_three
    sources = Sources.from_files(str(config), str(data), shell_env)
    first, before, changes = diff(sources, "1")
    assert before is None and len(changes) > 20
    assert first.sequence == 1
    with pytest.raises(ProblemError, match="no kept report '99'"):
        report(sources, "99")
    run = run_cli(["history", "--show", "99", "--data-dir", str(data)], tmp_path, shell_env)
    assert run.code == commands.PROBLEM and len(run.stderr.splitlines()) == 1


def test_field_diff_tells_added_removed_changed_and_retyped_fields() -> None:
    before = {"a": 1, "b": {"c": 2, "d": 3}, "e": None, "f": 1}
    after = {"a": 1, "b": {"c": 5}, "e": None, "f": 1.0, "g": {"h": "x"}}

    changes = field_diff(before, after)

    assert [c.line() for c in changes] == [
        "~ b.c: 2 -> 5",
        "~ f: 1 -> 1.0",
        '+ g.h: "x"',
        "- b.d: 3",
    ]
    assert changes[2] == Change("g.h", None, "x", False, True)


def test_limit_must_be_at_least_one(tmp_path: Path, shell_env: dict[str, str]) -> None:
    run = run_cli(["history", "--limit", "0", "--data-dir", str(tmp_path)], tmp_path, shell_env)
    assert run.code == commands.USAGE
    assert "expected at least 1" in run.stderr
