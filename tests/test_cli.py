"""The ``phonehome`` command: every subcommand, readable and ``--json``, its exit codes
(0 done, 1 a problem named in one line on stderr, 2 wrong usage, 3 nothing to show),
and what it does with a missing or broken config.yaml, data dir or state file.

The error cases run ``python -m phonehome_plugin`` as a real process, as an operator
would, and check that stderr is one line and never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import operator_support
import pytest
import yaml
from e2e_support import START, settle
from operator_support import (
    CountingServer,
    Installation,
    Run,
    blocks,
    config_of,
    listing,
    make,
    pending_bodies,
    phonehome_section,
    read_only,
    run_cli,
    running,
)
from test_bounded import PEAK_MAX, alias_bomb, traced

from phonehome_plugin import __version__
from phonehome_plugin.admin.clock import stamp
from phonehome_plugin.admin.locate import LINE_MAX
from phonehome_plugin.cli import commands, telemetry_doc
from phonehome_plugin.config.settings import DEFAULT_ENDPOINT
from phonehome_plugin.reports import schema
from phonehome_plugin.state import backends
from phonehome_plugin.state.store import FILENAME

counting_server = operator_support.counting_server  # fixture
installation = operator_support.installation  # fixture

ISO_SECOND = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment for a real ``phonehome`` process: no switch or config path leaks in."""
    env = {k: v for k, v in os.environ.items() if k != "MAESTROHUB_CONFIG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def call(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return commands.main(list(argv), out=out), out.getvalue()


def snapshot(directory: Path) -> dict[str, str] | None:
    if not directory.exists():
        return None
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def assert_one_line_error(run: Run, *, naming: str) -> None:
    assert run.code == commands.PROBLEM, run
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("phonehome: ")
    assert naming in lines[0]


# status (the host-process cases are in test_status.py) --------------------------------


def test_status_tells_the_host_the_state_and_the_shell_apart(installation: Installation) -> None:
    bodies = pending_bodies(installation.data)
    with read_only(installation.data) as store:
        instance_id = store.get("instance_id")

    code, text = call(
        "status", "--config", str(installation.config), "--data-dir", str(installation.data)
    )

    assert code == commands.OK
    shown = blocks(text)
    host = shown["The host"]
    assert host["telemetry"] == "on"
    assert host["mode"] == "offline"
    assert host["reason"].startswith("on: mode offline, reports are kept")
    assert host["endpoint"].endswith("/v1/reports (not used in mode offline)")
    assert host["config file"] == str(installation.config)
    state = shown["The installation's state"]
    assert state["instance id"] == instance_id
    assert state["last report"] == "#1 startup at 2026-03-02T08:00:00Z: sent (HTTP 202)"
    assert len(bodies) == 2
    assert state["outbox"] == f"2 report(s), {sum(map(len, bodies))} bytes"
    assert state["not exported"] == "2"
    assert state["kept bodies"] == "1"
    assert ISO_SECOND.match(state["next periodic"].split()[0])
    assert shown["This shell's view"]["telemetry"] == "on"


def test_status_json_carries_the_same_facts(installation: Installation) -> None:
    where = ["--config", str(installation.config), "--data-dir", str(installation.data)]
    _, text = call("status", *where)
    code, raw = call("status", "--json", *where)

    assert code == commands.OK
    info = json.loads(raw)
    assert set(info) == {"host", "host_note", "shell", "state", "waiting", "problems"}
    assert info["waiting"] == []
    assert info["problems"] == []
    shown = blocks(text)
    assert shown["The host"]["note"] == info["host_note"]
    assert shown["The host"]["interval"] == f"{info['host']['interval']} s"
    state = shown["The installation's state"]
    for key in ("instance_id", "last_report", "outbox", "failures", "next_retry", "last_built"):
        value = info["state"][key]
        assert state[key.replace("_", " ")] == ("-" if value is None else str(value))
    assert shown["This shell's view"]["reason"] == info["shell"]["reason"]
    assert shown["Settings"]["mode"] == info["host"]["settings"]["mode"] == "offline"


def test_next_periodic_is_when_the_plugin_builds_its_next_periodic_report(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)
        code, raw = call("status", "--json", "--data-dir", str(data))
        assert code == commands.OK
        due = datetime.fromisoformat(
            json.loads(raw)["state"]["next_periodic"].replace("Z", "+00:00")
        )
        assert START < due <= START + timedelta(hours=1, minutes=5)

        host.tick((due - host.clock.now()).total_seconds() - 1)
        settle(host)
        outbox = json.loads(call("status", "--json", "--data-dir", str(data))[1])["state"][
            "outbox"
        ]
        assert outbox.startswith("1 report(s)"), "not yet due"
        host.tick(2)
        settle(host)
        outbox = json.loads(call("status", "--json", "--data-dir", str(data))[1])["state"][
            "outbox"
        ]
        assert outbox.startswith("2 report(s)"), "the periodic report was built when status said"


def test_a_stored_slot_that_is_not_a_number_gives_no_next_periodic(
    installation: Installation,
) -> None:
    store = backends.open_store(installation.data)
    store.set("periodic.last_slot", "not a slot")
    store.close()
    code, text = call("status", "--data-dir", str(installation.data))
    assert code == commands.OK
    assert blocks(text)["The installation's state"]["next periodic"] == "-"


def test_stamp_is_iso_8601_utc_to_the_second() -> None:
    assert stamp(START.timestamp() + 0.75) == "2026-03-02T08:00:00Z"


def test_status_names_the_switch_that_turned_this_shell_off(
    installation: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    code, raw = call(
        "status",
        "--json",
        "--config",
        str(installation.config),
        "--data-dir",
        str(installation.data),
    )
    assert code == commands.OK
    info = json.loads(raw)
    assert info["shell"]["telemetry"] == "off"
    assert info["shell"]["reason"] == "off: DO_NOT_TRACK=1 is set"
    assert info["shell"]["switch"] == "DO_NOT_TRACK"
    assert info["host"]["telemetry"] == "on", "what the host recorded is its own"
    assert info["state"]["instance_id"] is not None, "the state of an earlier start is shown"


def test_status_without_config_file_shows_the_defaults_as_this_shells_view(
    tmp_path: Path,
) -> None:
    code, text = call("status", "--data-dir", str(tmp_path))
    assert code == commands.OK, "no state file yet is no problem: telemetry never ran here"
    shown = blocks(text)
    assert shown["The host"]["telemetry"] == "unknown"
    assert "never ran" in shown["The installation's state"]["state"]
    assert shown["This shell's view"]["telemetry"] == "on"
    assert shown["Settings"]["endpoint"] == DEFAULT_ENDPOINT
    assert "next periodic" not in text


def test_status_of_a_missing_data_dir_tells_what_it_can_and_fails_in_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    missing = tmp_path / "no-such-dir"
    run = run_cli(["status", "--data-dir", str(missing)], tmp_path, cli_env)
    assert_one_line_error(run, naming=str(missing))
    assert blocks(run.stdout.decode())["This shell's view"]["telemetry"] == "on"
    assert not missing.exists()


@pytest.mark.parametrize("state", ["after a clean shutdown", "empty dir", "missing dir"])
def test_status_never_creates_a_file_in_the_data_dir(
    state: str, installation: Installation, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data = {
        "after a clean shutdown": installation.data,
        "empty dir": tmp_path / "empty",
        "missing dir": tmp_path / "missing",
    }[state]
    if state == "empty dir":
        data.mkdir()
    before = snapshot(data)

    in_process, _ = call("status", "--data-dir", str(data))
    real = run_cli(["status", "--json", "--data-dir", str(data)], tmp_path, cli_env)

    expected = commands.PROBLEM if state == "missing dir" else commands.OK
    assert (in_process, real.code) == (expected, expected)
    assert snapshot(data) == before


# preview (built through the Reporter: test_preview.py) -------------------------------


def test_preview_pending_prints_the_oldest_stored_body_and_a_newline(
    installation: Installation, cli_env: dict[str, str]
) -> None:
    oldest = pending_bodies(installation.data)[0]
    where = ["--data-dir", str(installation.data)]

    code, text = call("preview", "--pending", *where)
    real = run_cli(["preview", "--pending", *where], installation.root, cli_env)

    assert code == commands.OK
    assert text == oldest.decode() + "\n"
    assert (real.code, real.stdout, real.stderr) == (commands.OK, oldest + b"\n", "")
    assert json.loads(oldest)["trigger"] == "startup"


def test_preview_builds_with_the_hosts_recorded_settings(installation: Installation) -> None:
    code, raw = call(
        "preview", "--json", "--trigger", "first_user", "--data-dir", str(installation.data)
    )
    assert code == commands.OK
    made = json.loads(raw)
    assert made["report"]["trigger"] == "first_user"
    assert made["report"]["location"]["city"] is None, "mode offline looks nothing up"
    assert made["pending"] == 2
    assert made["report"]["sequence"] == 4, "after the three the installation made"


# history ------------------------------------------------------------------------------


def test_history_readable_and_json(installation: Installation) -> None:
    code, text = call("history", "--data-dir", str(installation.data))
    code_json, raw = call("history", "--json", "--data-dir", str(installation.data))

    assert (code, code_json) == (commands.OK, commands.OK)
    sha256 = hashlib.sha256(installation.sent[0]).hexdigest()
    size = len(installation.sent[0])
    assert text == (
        f"#1 startup at 2026-03-02T08:00:00Z: sent (HTTP 202) [sha256 {sha256[:16]}, "
        f"{size} bytes]\n"
    )
    [event] = json.loads(raw)
    sent = json.loads(installation.sent[0])
    assert event == {
        "report_id": sent["report_id"],
        "sequence": 1,
        "trigger": "startup",
        "at": "2026-03-02T08:00:00Z",
        "result": "sent",
        "detail": "HTTP 202",
        "sha256": sha256,
        "bytes": size,
    }


def test_history_is_newest_first_and_limited(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
        host.run_for(2 * 3600, step=600)
        settle(host)

    _, everything = call("history", "--json", "--data-dir", str(data))
    code, latest = call("history", "--json", "--limit", "2", "--data-dir", str(data))

    events = json.loads(everything)
    assert [e["sequence"] for e in events] == sorted((e["sequence"] for e in events), reverse=True)
    assert [e["trigger"] for e in events][-2:] == ["first_user", "startup"]
    assert code == commands.OK and json.loads(latest) == events[:2]


def test_history_of_an_installation_that_sent_nothing(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    with running(make(offline, data)) as host:
        host.tick()
        settle(host)

    assert call("history", "--data-dir", str(data)) == (commands.OK, "nothing sent yet\n")
    assert call("history", "--json", "--data-dir", str(data)) == (commands.OK, "[]\n")


# export (nine days offline, upload: test_export.py) ----------------------------------


def test_export_writes_the_exact_pending_bodies_as_json_lines(
    installation: Installation, tmp_path: Path
) -> None:
    bodies = pending_bodies(installation.data)
    readable_file, json_file = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    where = ["--data-dir", str(installation.data)]

    code, text = call("export", str(readable_file), "--no-mark", *where)
    code_json, raw = call("export", str(json_file), "--json", *where)

    assert (code, code_json) == (commands.OK, commands.OK)
    assert len(bodies) == 2
    assert readable_file.read_bytes() == b"".join(body + b"\n" for body in bodies)
    assert json_file.read_bytes() == readable_file.read_bytes()
    manifest = f"{readable_file}.manifest.json"
    assert text == f"exported 2 report(s) to {readable_file}, manifest {manifest}\n"
    assert json.loads(raw) == {
        "exported": 2,
        "file": str(json_file),
        "manifest": f"{json_file}.manifest.json",
        "marked": True,
    }
    assert pending_bodies(installation.data) == bodies, "export leaves them in the outbox"


def test_export_with_nothing_pending_writes_an_empty_file(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
    target = tmp_path / "none.jsonl"

    assert call("export", str(target), "--json", "--data-dir", str(data)) == (
        commands.OK,
        json.dumps(
            {
                "exported": 0,
                "file": str(target),
                "manifest": f"{target}.manifest.json",
                "marked": False,
            }
        )
        + "\n",
    )
    assert target.read_bytes() == b""


# schema, docs, demo -------------------------------------------------------------------


def test_schema_prints_the_shipped_schema_file() -> None:
    code, text = call("schema")
    shipped = Path(schema.__file__).with_name("report.schema.json").read_text("utf-8")
    assert code == commands.OK
    assert text == shipped
    assert json.loads(text) == schema.load()


def test_docs_prints_the_generated_documentation() -> None:
    assert call("docs") == (commands.OK, telemetry_doc.render())


def test_demo_runs_a_simulated_host_against_a_loopback_receiver() -> None:
    code, text = call("demo", "--hours", "1")
    assert code == commands.OK, text
    assert "startup" in text and "first_user" in text and "periodic" in text
    assert "reports received" in text


# usage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["history", "--limit", "many"], ["export"], ["status", "--bogus"]],
    ids=[
        "no command",
        "unknown command",
        "bad option value",
        "missing argument",
        "unknown option",
    ],
)
def test_wrong_usage_returns_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(argv, out=io.StringIO()) == commands.USAGE
    assert "usage: phonehome" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["--help"], out=io.StringIO()) == commands.OK
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 done", "1 a problem", "2 wrong usage", "3 nothing to show"):
        assert code in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["--version"], out=io.StringIO()) == commands.OK
    assert capsys.readouterr().out == f"phonehome {__version__} (maestrohub-phonehome)\n"


SUBCOMMANDS = (
    "status",
    "preview",
    "history",
    "export",
    "upload",
    "forget",
    "schema",
    "docs",
    "demo",
)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_is_plain_text_and_shows_the_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.main([command, "--help"], out=io.StringIO()) == commands.OK
    text = capsys.readouterr().out
    for markup in ("``", ":mod:", ":func:", ":class:", ":data:", ".. "):
        assert markup not in text, f"reST markup {markup!r} in `phonehome {command} --help`"
    words = " ".join(text.split())
    if command in ("status", "preview", "history", "export", "forget"):
        assert "(default: ~/maestrohub/data)" in words
        assert "else ./config.yaml if it exists" in words
    assert "exit codes: 0 done" in words


@pytest.mark.parametrize(
    ("command", "shown"),
    [("history", "(default: 20)"), ("demo", "(default: 4)"), ("preview", "(default: periodic)")],
)
def test_help_shows_each_default(
    command: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    commands.main([command, "--help"], out=io.StringIO())
    assert shown in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--hours", "-2"],
        ["demo", "--hours", "0"],
        ["history", "--limit", "0"],
        ["history", "--show", "1", "--diff", "2"],
        ["preview", "--trigger", "hourly"],
    ],
)
def test_arguments_are_validated(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(argv, out=io.StringIO()) == commands.USAGE
    assert "usage: phonehome" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module", ["phonehome_plugin", "phonehome_plugin.cli", "phonehome_plugin.cli.commands"]
)
def test_every_module_of_the_command_runs_with_python_m(
    module: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (
        0,
        f"phonehome {__version__} (maestrohub-phonehome)\n".encode(),
    )


def test_wrong_usage_of_the_real_command(tmp_path: Path, cli_env: dict[str, str]) -> None:
    run = run_cli([], tmp_path, cli_env)
    assert run.code == commands.USAGE
    assert "Traceback" not in run.stderr


# Errors: one line on stderr, exit 1, in a real process --------------------------------

BROKEN_CONFIGS: dict[str, Callable[[Path], object]] = {
    "broken YAML": lambda p: p.write_text("modules:\n  phonehome: [enabled: false\n"),
    "not a mapping": lambda p: p.write_text("- modules\n- phonehome\n"),
    "a directory": lambda p: p.mkdir(),
    "not UTF-8": lambda p: p.write_bytes(b"modules: \xff\xfe\n"),
}


@pytest.mark.parametrize("broken", list(BROKEN_CONFIGS))
def test_a_broken_config_is_one_line_naming_the_file(
    broken: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "config.yaml"
    BROKEN_CONFIGS[broken](config)

    run = run_cli(
        ["status", "--config", str(config), "--data-dir", str(tmp_path)], tmp_path, cli_env
    )

    assert_one_line_error(run, naming=str(config))
    assert run.stdout == b""


def test_the_config_path_comes_from_maestrohub_config(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text("modules:\n  phonehome:\n    enabled: false\n")
    run = run_cli(
        ["status", "--json", "--data-dir", str(tmp_path)],
        tmp_path,
        {**cli_env, "MAESTROHUB_CONFIG": str(config)},
    )
    assert run.code == commands.OK
    assert json.loads(run.stdout)["shell"]["reason"] == (
        "off: modules.phonehome.enabled is false in config.yaml"
    )
    assert json.loads(run.stdout)["shell"]["config_file"] == str(config)


@pytest.mark.parametrize("command", ["preview", "history", "export"])
def test_a_missing_data_dir_is_one_line(
    command: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    missing = tmp_path / "no-such-dir"
    args = [command, "--data-dir", str(missing)]
    if command == "export":
        args.append(str(tmp_path / "out.jsonl"))

    run = run_cli(args, tmp_path, cli_env)

    assert_one_line_error(run, naming=str(missing))
    assert not missing.exists()


def _garbage(state: Path) -> None:
    state.write_bytes(b"this is not a database\n" * 200)


def _foreign(state: Path) -> None:
    with sqlite3.connect(state) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()


def _truncated(state: Path) -> None:
    state.write_bytes(state.read_bytes()[: 4096 * 2])


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage,
    "another program's database": _foreign,
    "truncated": _truncated,
}


@pytest.mark.parametrize("command", ["status", "preview", "history", "export"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_state_file_is_one_line(
    corruption: str,
    command: str,
    installation: Installation,
    tmp_path: Path,
    cli_env: dict[str, str],
) -> None:
    state = installation.data / FILENAME
    if corruption != "truncated":
        state.unlink()
    CORRUPTIONS[corruption](state)
    before = snapshot(installation.data)
    args = [command, "--data-dir", str(installation.data)]
    if command == "export":
        args.append(str(tmp_path / "out.jsonl"))

    run = run_cli(args, tmp_path, cli_env)

    assert_one_line_error(run, naming=str(state))
    assert snapshot(installation.data) == before, "a broken state file is left as it is"
    if command == "status":  # what can be told still is, on stdout
        assert b"telemetry     on" in run.stdout


def test_an_unwritable_export_target_is_one_line(
    installation: Installation, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    target = tmp_path / "no-such-dir" / "out.jsonl"
    run = run_cli(["export", str(target), "--data-dir", str(installation.data)], tmp_path, cli_env)
    assert_one_line_error(run, naming=str(target))


def test_looking_at_a_running_installation_changes_nothing(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    host = make(offline, data, at=START + timedelta(days=1))
    with running(host):
        host.tick()
        settle(host)
        files = listing(data)
        for command in ("status", "preview", "history"):
            assert call(command, "--data-dir", str(data))[0] == commands.OK
        assert call("export", str(tmp_path / "x.jsonl"), "--data-dir", str(data))[0] == commands.OK
        assert listing(data) == files
        host.create_user("admin@example.com")
        settle(host)
        assert len(pending_bodies(data)) == 2, "the plugin writes on after being looked at"


# PostgreSQL state (state_url) ---------------------------------------------------------


@pytest.mark.postgres
def test_the_commands_read_an_installation_kept_in_postgresql(
    counting_server: CountingServer, tmp_path: Path, pg_url: str
) -> None:
    section = phonehome_section(counting_server, mode="offline", state_url=pg_url)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_of(section)), "utf-8")
    data = tmp_path / "data"
    with running(make(config_of(section), data)) as host:
        host.tick()
        settle(host)
    assert not (data / FILENAME).exists(), "the state lives in PostgreSQL, not the data dir"

    code, raw = call("status", "--json", "--config", str(config), "--data-dir", str(data))
    assert code == commands.OK
    info = json.loads(raw)
    assert info["state"]["instance_id"] and info["state"]["outbox"].startswith("1 report(s)")
    assert info["host"]["state"].startswith("PostgreSQL postgresql://")
    made = json.loads(
        call("preview", "--json", "--config", str(config), "--data-dir", str(data))[1]
    )
    assert made["report"]["instance_id"] == info["state"]["instance_id"]
    out = tmp_path / "pending.jsonl"
    assert call("export", str(out), "--config", str(config), "--data-dir", str(data))[0] == 0
    [body] = out.read_bytes().splitlines()
    assert json.loads(body)["trigger"] == "startup"


def test_an_unreachable_state_url_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    url = "postgresql://phonehome:s3cret@127.0.0.1:9/phonehome"
    config.write_text(yaml.safe_dump({"modules": {"phonehome": {"state_url": url}}}), "utf-8")
    done = run_cli(["history", "--config", str(config)], tmp_path)
    assert done.code == commands.PROBLEM
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "s3cret" not in done.stderr and "127.0.0.1:9" in done.stderr


# An invalid or hostile config.yaml: one short line on stderr, exit 1 -----------------


@pytest.mark.parametrize("command", ["status", "preview", "history", "export"])
def test_an_invalid_section_is_one_line_naming_the_file_and_the_key(
    command: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules:\n  phonehome:\n    enabled: 'no'\n")
    args = [command, "--config", str(config), "--data-dir", str(tmp_path)]
    if command == "export":
        args.append(str(tmp_path / "out.jsonl"))

    run = run_cli(args, tmp_path, cli_env)

    assert_one_line_error(run, naming=str(config))
    assert run.stderr.strip() == (
        f"phonehome: {config}: modules.phonehome.enabled: expected true or false, got 'no'; "
        "telemetry is off"
    )
    if command == "status":  # what can be told still is: this shell's view is off
        shell = blocks(run.stdout.decode())["This shell's view"]
        assert shell["telemetry"] == "off"
    else:
        assert run.stdout == b""


@pytest.mark.parametrize("command", ["status", "preview", "history"])
@pytest.mark.parametrize("at", ["enabled: {bomb}", "outbox: {bomb}", "enabeld: {bomb}"])
def test_an_alias_bomb_config_is_one_short_line_in_bounded_work(
    command: str, at: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    for levels in range(1, 11):  # 10 levels of 9: 3.5 billion leaves, in 400 bytes
        config.write_text(alias_bomb(levels, at=at), "utf-8")
        code, peak = traced(
            commands.main,
            [command, "--config", str(config), "--data-dir", str(tmp_path)],
            io.StringIO(),
        )
        err = capsys.readouterr().err
        assert code == commands.PROBLEM, err
        [line] = err.splitlines()
        assert line.startswith(f"phonehome: {config}: modules.phonehome.")
        assert len(line) <= 200 + len(str(config)), (levels, line[:300])
        # Parsing the YAML and the arguments takes some 70 kB; a repr of level n, 5 * 9 ** n.
        assert peak < 16 * PEAK_MAX, (levels, peak)


def test_an_alias_bomb_config_is_one_line_in_a_real_process(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # Bounded work is shown in process above, up to 10 levels; 6 are enough to see
    # the real command's output (and leave the machine alone should the bound break).
    config = tmp_path / "config.yaml"
    config.write_text(alias_bomb(6), "utf-8")
    run = run_cli(
        ["status", "--config", str(config), "--data-dir", str(tmp_path)], tmp_path, cli_env
    )
    assert_one_line_error(run, naming="modules.phonehome.enabled: expected true or false")
    assert "got a list of 9 items" in run.stderr
    assert len(run.stdout) < 4096, "this shell's view, bounded"


def test_a_config_nested_too_deeply_for_the_parser_is_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules: " + "[" * 5000 + "]" * 5000 + "\n")
    run = run_cli(["status", "--config", str(config)], tmp_path, cli_env)
    assert_one_line_error(run, naming=f"cannot read {config}: nested too deeply")


def test_a_yaml_error_is_quoted_by_its_first_line_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML quotes the undefined alias's name: as long as the file, here 1 MB.
    config = tmp_path / "config.yaml"
    config.write_text("modules: *" + "a" * 1_000_000 + "\n")
    assert commands.main(["status", "--config", str(config)], io.StringIO()) == commands.PROBLEM
    [line] = capsys.readouterr().err.splitlines()
    head = f"phonehome: cannot read {config}: line 1, column 10: "
    assert line.startswith(f"{head}found undefined alias")
    assert len(line) <= len(head) + LINE_MAX


def test_a_yaml_error_names_its_line_and_column(tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules:\n  phonehome:\n    enabled: false\n   mode: log\n")
    run = run_cli(["status", "--config", str(config)], tmp_path, cli_env)
    assert_one_line_error(run, naming=f"cannot read {config}: line 4, column 4: ")
