"""The offline demo: the plugin's whole life in readable lines, on 127.0.0.1 only."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from phonehome_plugin.demo import MISSING, render, run_demo
from phonehome_plugin.simhost import SECRET_MARKER

HEADER = re.compile(
    r"#(?P<seq>\d+) (?P<trigger>startup|first_user|periodic) +"
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  report [0-9a-f-]{36}"
)
SECTIONS = (
    "system",
    "license",
    "users",
    "location",
    "connections",
    "pipelines",
    "uns",
    "executions",
    "other",
    "collectors",
    "diagnostics",
)


@pytest.fixture
def contacted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address the process connects to, on top of the loopback guard."""
    seen: list[Any] = []
    guarded = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        seen.append(address)
        return guarded(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _blocks(text: str) -> list[list[str]]:
    """The printed reports: a header line and its section lines each."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if HEADER.fullmatch(line):
            blocks.append([line])
        elif blocks and line.startswith("   "):
            blocks[-1].append(line)
    return blocks


def test_two_hours_show_startup_first_user_and_periodic_reports(contacted: list[Any]) -> None:
    out = StringIO()
    assert run_demo(out=out, hours=2) == 0
    text = out.getvalue()

    blocks = _blocks(text)
    headers = [HEADER.fullmatch(block[0]) for block in blocks]
    triggers = [match["trigger"] for match in headers if match]
    assert triggers[:2] == ["startup", "first_user"]
    assert triggers[2:] == ["periodic"] * len(triggers[2:]) and len(triggers) >= 4
    assert [int(match["seq"]) for match in headers if match] == list(range(1, len(blocks) + 1))
    for block in blocks:
        labels = [line.split()[0] for line in block[1:]]
        assert labels == list(SECTIONS)
    assert "   users       0  first -" in blocks[0]
    assert "   users       1  first admin@example.com" in blocks[1]
    assert "acme.historian: series" in blocks[-1][-2], "the example collector reports"
    assert blocks[-1][-1].endswith("diagnostics ok")

    last = text.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"{len(blocks)} reports received \(1 startup, 1 first_user, {len(blocks) - 2} "
        r"periodic\), 0 duplicates, [\d.]+ s of wall time",
        last,
    )
    assert all(len(line) <= 200 for line in text.splitlines()), "readable lines"
    assert '{"' not in text and SECRET_MARKER not in text

    hosts = {address[0] for address in contacted if isinstance(address, tuple)}
    assert hosts == {"127.0.0.1"}, "the receiver and nothing else"


def test_the_demo_says_so_and_fails_when_telemetry_is_switched_off(
    monkeypatch: pytest.MonkeyPatch, contacted: list[Any]
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    out = StringIO()
    began = time.monotonic()
    assert run_demo(out=out, hours=1) == 1
    assert time.monotonic() - began < 5, "no waiting for reports that cannot come"
    assert "telemetry is off: DO_NOT_TRACK=1 is set" in out.getvalue()
    assert contacted == []


def test_a_report_missing_every_field_renders_as_dashes() -> None:
    lines = render({})
    assert lines[0].startswith(f"#{MISSING} {MISSING}")
    assert [line.split()[0] for line in lines[1:-1]] == list(SECTIONS)
    assert lines[-1] == ""
    odd = render({"sequence": "x", "executions": {"success_rate": 97.5}, "collectors": []})
    assert any("success 97.5%" in line for line in odd), "a percentage is accepted too"


def test_python_m_phonehome_plugin_demo_exits_0(tmp_path: Path) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "phonehome_plugin", "demo"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - began < 60
    triggers = [m["trigger"] for m in map(HEADER.fullmatch, done.stdout.splitlines()) if m]
    assert triggers[:2] == ["startup", "first_user"]
    assert triggers.count("periodic") >= 4, "four hours by default"
    assert list(tmp_path.iterdir()) == [], "nothing left in the working directory"
