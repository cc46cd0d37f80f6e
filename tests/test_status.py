"""``phonehome status`` never contradicts the host.

Each host start runs in a process of its own with an environment of its own, as a
service does (``HostProcess``); ``phonehome status`` runs as a real process in the
operator's shell, which has neither the service's environment nor, always, its
config. Status shows what the host recorded at its start (a start with telemetry off
records nothing, so it says exactly that), its own shell's view beside it, labelled,
and a next report only when a host with telemetry on recorded its schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import operator_support
import pytest
from e2e_support import START
from operator_support import (
    CountingServer,
    HostProcess,
    Run,
    blocks,
    phonehome_section,
    run_cli,
    stored_bytes,
    write_config,
)

from phonehome_plugin.admin.locate import Sources
from phonehome_plugin.admin.status import status
from phonehome_plugin.cli import commands
from phonehome_plugin.state.store import FILENAME

counting_server = operator_support.counting_server  # fixture
shell_env = operator_support.shell_env  # fixture

# The ways a host start ends up with telemetry off: (config section additions,
# the host's environment, the words the shell's view says when it shares them).
OFF_SWITCHES: dict[str, tuple[dict[str, Any], dict[str, str | None], str]] = {
    "enabled: false in config.yaml": (
        {"enabled": False},
        {},
        "off: modules.phonehome.enabled is false in config.yaml",
    ),
    "MAESTROHUB_PHONEHOME_ENABLED=false": (
        {},
        {"MAESTROHUB_PHONEHOME_ENABLED": "false"},
        "off: MAESTROHUB_PHONEHOME_ENABLED=false",
    ),
    "MAESTROHUB_PHONEHOME_ENABLED=nonsense (fails closed)": (
        {},
        {"MAESTROHUB_PHONEHOME_ENABLED": "nonsense"},
        "off: MAESTROHUB_PHONEHOME_ENABLED=nonsense",
    ),
    "DO_NOT_TRACK=1": ({}, {"DO_NOT_TRACK": "1"}, "off: DO_NOT_TRACK=1 is set"),
    # The one line turns telemetry off whatever else the section holds; the shell's
    # view still names what is wrong beside it (and exits 1 for it).
    "enabled: false beside a misspelt key": (
        {"enabled": False, "intervall": 60},
        {},
        "off: modules.phonehome.enabled is false in config.yaml",
    ),
    "a misspelt key in modules.phonehome": (
        {"enabeld": False},
        {},
        "off: invalid config.yaml, modules.phonehome.enabeld: unknown key",
    ),
}
CLEAN: dict[str, str | None] = {"DO_NOT_TRACK": None, "MAESTROHUB_PHONEHOME_ENABLED": None}


def status_json(config: Path, data: Path, root: Path, env: Mapping[str, str]) -> tuple[Run, Any]:
    run = run_cli(
        ["status", "--json", "--config", str(config), "--data-dir", str(data)], root, env
    )
    return run, json.loads(run.stdout)


def readable(config: Path, data: Path, root: Path, env: Mapping[str, str]) -> Run:
    return run_cli(["status", "--config", str(config), "--data-dir", str(data)], root, env)


def one_start(
    section: Mapping[str, Any],
    data: Path,
    config: Path,
    environ: Mapping[str, str | None],
    at: Any,
) -> None:
    """A host start (its own process and environment): the first tick, then shutdown."""
    with HostProcess(
        {"modules": {"phonehome": dict(section)}}, data, at, config_path=config, environ=environ
    ) as host:
        host.tick()


@pytest.mark.parametrize("switch", list(OFF_SWITCHES))
def test_a_host_off_from_its_first_start_is_never_shown_on(
    switch: str, counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    extra, environ, said = OFF_SWITCHES[switch]
    section = {**phonehome_section(counting_server), **extra}
    config = write_config(tmp_path / "config.yaml", section)
    data = tmp_path / "data"
    data.mkdir()  # the host's own data dir: the plugin, off, adds nothing to it

    one_start(section, data, config, {**CLEAN, **environ}, START)
    run, info = status_json(config, data, tmp_path, shell_env)
    text = readable(config, data, tmp_path, shell_env)

    assert stored_bytes(data) == {}, "off: no file"
    invalid = "misspelt" in switch
    assert run.code == (commands.PROBLEM if invalid else commands.OK), run.stderr
    assert info["host"] is None
    assert "no host start with telemetry on has written state here" in info["host_note"]
    assert "telemetry off writes nothing" in info["host_note"]
    assert info["state"]["found"] is False
    shown = blocks(text.stdout.decode())
    assert shown["The host"]["telemetry"] == "unknown"
    assert "next periodic" not in shown["The installation's state"], "off shows no next report"
    assert b"next periodic" not in text.stdout
    # The shell's own view, labelled: it reads the host's config, not its environment.
    shell = info["shell"]
    assert shell["config_file"] == str(config) and shell["config_found"] is True
    if environ:
        assert shell["telemetry"] == "on", "this shell has none of the service's environment"
    else:
        assert (shell["telemetry"], shell["reason"]) == ("off", said)
    assert "This shell's view" in shown


@pytest.mark.parametrize("switch", list(OFF_SWITCHES))
def test_a_restart_with_telemetry_off_shows_the_last_on_start_by_its_time(
    switch: str, counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    extra, environ, said = OFF_SWITCHES[switch]
    data = tmp_path / "data"
    on = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", on)
    one_start(on, data, config, CLEAN, START)
    before_off = stored_bytes(data)
    off = {**on, **extra}
    write_config(config, off)
    later = START + timedelta(hours=5)

    one_start(off, data, config, {**CLEAN, **environ}, later)
    run, info = status_json(config, data, tmp_path, shell_env)
    shared = {**shell_env, **{k: v for k, v in environ.items() if v is not None}}
    _, in_its_shell = status_json(config, data, tmp_path, shared)

    assert stored_bytes(data) == before_off, "the start with telemetry off wrote nothing"
    host = info["host"]
    assert host["recorded_at"] == "2026-03-02T08:00:00Z", "the on start, not the off one"
    assert host["reason"].startswith("on: mode send")
    assert "a later start with telemetry off would not show here" in info["host_note"]
    assert run.code == (commands.PROBLEM if "misspelt" in switch else commands.OK)
    # A shell that shares the service's environment sees what the service saw, and
    # status says the two disagree.
    assert (in_its_shell["shell"]["telemetry"], in_its_shell["shell"]["reason"]) == ("off", said)
    assert "this shell's view differs from it" in in_its_shell["host_note"]


def test_a_shell_with_do_not_track_shows_a_sending_host_as_the_host_recorded_it(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(
        {"modules": {"phonehome": section}}, data, config_path=config, environ=CLEAN
    ) as host:
        host.tick()
        run, info = status_json(config, data, tmp_path, {**shell_env, "DO_NOT_TRACK": "1"})
        text = readable(config, data, tmp_path, {**shell_env, "DO_NOT_TRACK": "1"})

    assert run.code == commands.OK
    assert counting_server.traffic.bodies, "the host is sending"
    assert info["host"]["telemetry"] == "on"
    assert info["host"]["switch"] == "default"
    assert info["host"]["config_file"] == str(config)
    assert info["shell"]["telemetry"] == "off"
    assert info["shell"]["reason"] == "off: DO_NOT_TRACK=1 is set"
    shown = blocks(text.stdout.decode())
    assert shown["The host"]["telemetry"] == "on"
    assert shown["The host"]["decided by"] == "nothing turned it off (on by default)"
    assert shown["This shell's view"]["telemetry"] == "off"
    assert shown["The installation's state"]["next periodic"].endswith("(built and sent then)")


def test_a_config_file_named_that_does_not_exist_is_one_line_and_exit_1(
    tmp_path: Path, shell_env: dict[str, str]
) -> None:
    typo = tmp_path / "confg.yaml"
    run = run_cli(
        ["status", "--config", str(typo), "--data-dir", str(tmp_path)], tmp_path, shell_env
    )
    from_env = run_cli(
        ["status", "--data-dir", str(tmp_path)],
        tmp_path,
        {**shell_env, "MAESTROHUB_CONFIG": str(typo)},
    )

    for done in (run, from_env):
        assert done.code == commands.PROBLEM
        assert done.stdout == b"", "nothing that looks like the defaults' answer"
        assert done.stderr.strip() == f"phonehome: config file {typo} does not exist"


def test_the_config_file_read_is_always_named(tmp_path: Path, shell_env: dict[str, str]) -> None:
    none = run_cli(["status", "--json", "--data-dir", str(tmp_path)], tmp_path, shell_env)
    config = write_config(tmp_path / "config.yaml", {"mode": "log"})
    found = run_cli(["status", "--data-dir", str(tmp_path)], tmp_path, shell_env)

    shell = json.loads(none.stdout)["shell"]
    assert (shell["config_file"], shell["config_found"]) == ("config.yaml", False)
    heading = [line for line in found.stdout.decode().splitlines() if "shell's view" in line]
    assert heading == ["This shell's view (this shell's environment, config file config.yaml)"]
    assert config.exists()


@pytest.mark.parametrize("mode", ["offline", "log"])
def test_modes_that_send_nothing_never_say_sending(
    mode: str, counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    section = phonehome_section(counting_server, mode=mode)
    config = write_config(tmp_path / "config.yaml", section)
    one_start(section, data, config, CLEAN, START)

    text = readable(config, data, tmp_path, shell_env)
    _, info = status_json(config, data, tmp_path, shell_env)

    assert text.code == commands.OK
    assert b"sending" not in text.stdout
    shown = blocks(text.stdout.decode())
    assert shown["The host"]["mode"] == mode
    assert shown["The host"]["endpoint"].endswith(f"(not used in mode {mode})")
    assert "not sent" in shown["The installation's state"]["next periodic"]
    assert info["host"]["reason"].startswith(f"on: mode {mode}, reports are")
    assert counting_server.traffic.bodies == []


def test_status_as_plain_data_is_the_commands_own(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    section = phonehome_section(counting_server, mode="offline")
    config = write_config(tmp_path / "config.yaml", section)
    one_start(section, data, config, CLEAN, START)

    _, shown = status_json(config, data, tmp_path, shell_env)
    direct = status(Sources.from_files(str(config), str(data), shell_env))

    assert direct == shown
    assert direct["state"]["outbox_reports"] == 1 and direct["state"]["not_exported"] == 1
    assert (data / FILENAME).exists()


def test_status_lists_every_setting_the_host_started_with(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    proxy = "http://user:s3cret@127.0.0.1:9"
    section = phonehome_section(counting_server, mode="offline", proxy=proxy, interval=600)
    config = write_config(tmp_path / "config.yaml", section)
    one_start(section, data, config, CLEAN, START)
    write_config(config, phonehome_section(counting_server))  # changed since: the host's wins

    text = readable(config, data, tmp_path, shell_env)

    listed = blocks(text.stdout.decode())["Settings"]
    assert listed["interval"] == "600"
    assert listed["mode"] == "offline"
    assert listed["proxy"] == "http://***@127.0.0.1:9"
    assert {"outbox.max_reports", "privacy.email", "geoip_url", "timeout"} <= set(listed)
    assert b"s3cret" not in text.stdout
