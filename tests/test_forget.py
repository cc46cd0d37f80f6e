"""``phonehome forget``: the local telemetry state erased after a confirmation, so that the
next start with telemetry on is a new installation, and no plaintext first email is
left behind in the file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import operator_support
import pytest
from e2e_support import START, settle
from operator_support import (
    CountingServer,
    HostProcess,
    config_of,
    make,
    phonehome_section,
    read_only,
    run_cli,
    running,
    stored_bytes,
    write_config,
)

from phonehome_plugin.admin.forget import erase, survey
from phonehome_plugin.admin.locate import Sources
from phonehome_plugin.cli import commands
from phonehome_plugin.state.backends import open_store

counting_server = operator_support.counting_server  # fixture
shell_env = operator_support.shell_env  # fixture

CLEAN: dict[str, str | None] = {"DO_NOT_TRACK": None, "MAESTROHUB_PHONEHOME_ENABLED": None}
EMAIL = b"first.admin@example.com"


def lived(counting_server: CountingServer, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A data dir after a host start that sent its startup and first-user reports."""
    data = tmp_path / "data"
    section = phonehome_section(counting_server)
    config = write_config(tmp_path / "config.yaml", section)
    with HostProcess(config_of(section), data, config_path=config, environ=CLEAN) as host:
        host.tick()
        host.call("create_user", EMAIL.decode())
        host.run_for(2 * 3600, 600)
    return config, data, section


def forget_with(
    answer: str | None, config: Path, data: Path, root: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    args = ["forget", "--config", str(config), "--data-dir", str(data)]
    if answer is None:
        args.append("--yes")
    return subprocess.run(
        [sys.executable, "-m", "phonehome_plugin", *args],
        cwd=root,
        env=env,
        input=(answer or "").encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_forget_erases_everything_and_the_next_start_is_a_new_installation(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data, section = lived(counting_server, tmp_path)
    with read_only(data) as view:
        old_id = view.get("instance_id")
    assert any(EMAIL in content for content in stored_bytes(data).values())

    done = forget_with("yes\n", config, data, tmp_path, shell_env)

    assert done.returncode == commands.OK, done.stderr
    said = done.stdout.decode()
    rows = {
        line.split()[0] + " " + line.split()[1]: line.split()[-1]
        for line in said.splitlines()
        if line.startswith("  ")
    }
    assert rows["instance id"] == old_id
    assert rows["first email"] == "kept"
    assert said.rstrip().endswith("erased")
    assert not any(EMAIL in content for content in stored_bytes(data).values()), "no trace left"
    with read_only(data) as view:
        assert view.get("instance_id") is None
        assert (
            view.run(lambda c: c.execute("SELECT count(*) FROM sent_reports").fetchone()[0]) == 0
        )
    sent_before = len(counting_server.traffic.bodies)
    with HostProcess(config_of(section), data, START.replace(hour=12), environ=CLEAN) as host:
        host.tick()
        host.call("create_user", "second.admin@example.com")
    fresh = [json.loads(b) for b in counting_server.traffic.bodies[sent_before:]]
    assert [r["trigger"] for r in fresh] == ["startup", "first_user"]
    assert {r["instance_id"] for r in fresh} != {old_id}
    assert fresh[0]["sequence"] == 1


def test_forget_without_confirmation_erases_nothing(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data, _ = lived(counting_server, tmp_path)
    before = stored_bytes(data)

    for answer in ("no\n", ""):
        done = forget_with(answer, config, data, tmp_path, shell_env)
        assert done.returncode == commands.PROBLEM
        assert done.stderr.decode().strip() == "phonehome: nothing erased: not confirmed"

    assert stored_bytes(data) == before


def test_forget_yes_is_for_scripts_and_nothing_to_forget_is_done(
    counting_server: CountingServer, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    config, data, _ = lived(counting_server, tmp_path)
    assert survey(Sources.from_files(str(config), str(data), {})) is not None

    done = forget_with(None, config, data, tmp_path, shell_env)
    assert done.returncode == commands.OK, done.stderr
    assert b"Type yes" not in done.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli(["forget", "--data-dir", str(empty)], tmp_path, shell_env)
    assert (nothing.code, nothing.stdout) == (
        commands.OK,
        f"no telemetry state at {empty}: nothing to forget\n".encode(),
    )
    assert list(empty.iterdir()) == []
    missing = run_cli(
        ["forget", "--yes", "--data-dir", str(tmp_path / "nope")], tmp_path, shell_env
    )
    assert missing.code == commands.PROBLEM


@pytest.mark.postgres
def test_forget_erases_an_installation_kept_in_postgresql(
    counting_server: CountingServer, tmp_path: Path, pg_url: str
) -> None:
    section = phonehome_section(counting_server, state_url=pg_url)
    config = write_config(tmp_path / "config.yaml", section)
    with running(make(config_of(section), tmp_path / "data")) as host:
        host.tick()
        settle(host)
        host.create_user(EMAIL.decode())
        settle(host)
    where = ["--config", str(config), "--data-dir", str(tmp_path / "data")]

    assert commands.main(["forget", "--yes", *where], out=io.StringIO()) == commands.OK

    view = open_store(None, pg_url, read_only=True)
    try:
        counts = view.run(
            lambda c: {
                table: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in (
                    "kv",
                    "counters",
                    "claims",
                    "outbox",
                    "history",
                    "sent_reports",
                    "exports",
                )
            }
        )
        assert set(counts.values()) == {0}, counts
    finally:
        view.close()
    out = io.StringIO()
    assert commands.main(["forget", "--yes", *where], out=out) == commands.OK
    assert "erased" in out.getvalue(), (
        "an emptied state is still a state: erasing it again is fine"
    )


def test_what_is_erased_is_overwritten_even_where_sqlite_would_keep_it(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        # As a build of SQLite whose default leaves deleted bytes in free pages.
        store.run(lambda c: c.execute("PRAGMA secure_delete = OFF"))
        store.set("users.earliest", json.dumps(["2026-03-02T08:00:00+00:00", EMAIL.decode()]))
        for n in range(200):  # enough rows that the email's page is freed, not rewritten
            store.set(f"filler.{n}", "x" * 200)
        erase(store)
    finally:
        store.close()
    assert not any(EMAIL in content for content in stored_bytes(tmp_path).values())
