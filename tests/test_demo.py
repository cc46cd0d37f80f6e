"""The offline demo: the plugin's whole life in readable lines, on 127.0.0.1 only."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from phonehome_plugin.testing import demo
from phonehome_plugin.testing.demo import MISSING, render, run_demo
from phonehome_plugin.testing.vocabulary import SECRET_MARKER

HEADER = re.compile(
    r"#(?P<seq>\d+) (?P<trigger>startup|first_user|periodic) +"
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  [0-9a-f-]{36}"
)
HOUR = re.compile(
    r"\[\d\d:\d\d-\d\d:\d\d\] hour (?P<n>\d+) of \d+: (?P<runs>[\d,]+) pipeline executions"
)
WIDTH = 80
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
    """The printed reports: a header line and its sections' lines each (a section's
    continuation lines joined to its first)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if HEADER.fullmatch(line):
            blocks.append([line])
        elif blocks and re.match(r"   \S", line):
            blocks[-1].append(line)
        elif blocks and line.startswith(" " * 15) and len(blocks[-1]) > 1:
            blocks[-1][-1] += "  " + line.strip()
    return blocks


def _section(block: list[str], label: str) -> str:
    [line] = [line for line in block[1:] if line.split()[0] == label]
    return line


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
    assert "acme.historian: series" in _section(blocks[-1], "collectors"), "the example"
    assert blocks[-1][-1].endswith("diagnostics ok")

    last = text.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"{len(blocks)} reports received in [\d.]+ s: 1 startup, 1 first_user, "
        rf"{len(blocks) - 2} periodic; 0 duplicates",
        last,
    )
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert '{"' not in text and SECRET_MARKER not in text

    hosts = {address[0] for address in contacted if isinstance(address, tuple)}
    assert hosts == {"127.0.0.1"}, "the receiver and nothing else"


def test_each_hour_of_work_is_followed_by_the_report_that_covers_exactly_it() -> None:
    out = StringIO()
    assert run_demo(out=out, hours=3) == 0
    lines = out.getvalue().splitlines()
    blocks = _blocks(out.getvalue())
    periodic = [block for block in blocks if "periodic" in block[0]]
    # The first slot's report comes before any work; then one report per hour.
    assert len(periodic) == 1 + 3
    assert "(+0 since last)" in _section(periodic[0], "executions")
    hours = [match for match in map(HOUR.fullmatch, lines) if match]
    assert [int(match["n"]) for match in hours] == [1, 2, 3]
    for match, block in zip(hours, periodic[1:], strict=True):
        # The hour's line comes right before its report, and the report counts its runs.
        assert lines[lines.index(match[0]) + 1] == block[0]
        assert f"(+{match['runs']} since last)" in _section(block, "executions")
    uptimes = [
        re.search(r"uptime (\d+)h(\d\d)m", _section(block, "executions")) for block in periodic
    ]
    minutes = [int(m[1]) * 60 + int(m[2]) for m in uptimes if m]
    assert len(minutes) == 4
    assert all(57 <= b - a <= 63 for a, b in itertools.pairwise(minutes)), (
        "an hour apart, give or take the slots' jitter"
    )


def test_the_demo_says_so_and_fails_when_telemetry_is_switched_off(
    monkeypatch: pytest.MonkeyPatch, contacted: list[Any]
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    out = StringIO()

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no waiting for reports that cannot come")

    monkeypatch.setattr(demo, "_Printer", never)  # what waits for reports
    assert run_demo(out=out, hours=1) == 1
    assert "telemetry is off: DO_NOT_TRACK=1 is set" in out.getvalue()
    assert contacted == []


def test_a_report_missing_every_field_renders_as_dashes() -> None:
    lines = render({})
    assert lines[0].startswith(f"#{MISSING} {MISSING}")
    assert [line.split()[0] for line in lines[1:-1]] == list(SECTIONS)
    assert lines[-1] == ""
    odd = render({"sequence": "x", "executions": {"success_rate": 97.5}, "collectors": []})
    assert any("success 97.5%" in line for line in odd), "a percentage is accepted too"


def test_python_m_phonehome_plugin_demo_is_clean_on_an_80_column_terminal(
    tmp_path: Path,
) -> None:
    """The real demo in a child process: exit 0, no traceback, every line fits."""
    done = subprocess.run(
        [sys.executable, "-m", "phonehome_plugin", "demo"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang detector: the demo takes about a second
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    wide = [line for line in done.stdout.splitlines() if len(line) > WIDTH]
    assert wide == [], "every line fits an 80-column terminal"
    assert "the receiver saw" not in done.stdout, "no connection reset or failed request"
    triggers = [m["trigger"] for m in map(HEADER.fullmatch, done.stdout.splitlines()) if m]
    assert triggers[:2] == ["startup", "first_user"]
    assert triggers.count("periodic") >= 4, "four hours by default"
    assert list(tmp_path.iterdir()) == [], "nothing left in the working directory"


def test_a_report_of_long_values_still_fits_80_columns() -> None:
    report = {
        "sequence": 7,
        "trigger": "periodic",
        "generated_at": "2026-03-02T08:00:00.000Z",
        "report_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "system": {"hostname": "h" * 150, "version": "2.3.0-rc.1+build.20260302"},
        "collectors": {f"vendor{n}.module": {"series": n, "points": 10**n} for n in range(9)},
        "pipelines": {"nodes_by_type": {f"custom.node.type.{n}": n for n in range(9)}},
    }
    lines = render(report)
    assert max(map(len, lines)) <= 80
    assert [line.split()[0] for line in lines[1:-1] if line[3] != " "] == list(SECTIONS)
    assert "h" * 65 in "".join(lines), "a word longer than a line is broken, not dropped"
