"""The startup notice: the same facts as ever, in lines an 80-column terminal shows whole."""

from __future__ import annotations

import re
import textwrap

from hypothesis import given
from hypothesis import strategies as st

from phonehome_plugin.config import notice as notice_module
from phonehome_plugin.config.notice import WIDTH, notice

ENDPOINT = "https://telemetry.example.com/v1/reports"


def _prose(text: str) -> str:
    """The notice as one line of words (line breaks and indents folded away)."""
    return " ".join(text.split())


def test_every_line_fits_80_columns_and_the_first_names_the_plugin() -> None:
    text = notice(ENDPOINT, "send", 3600)
    lines = text.split("\n")
    assert lines[0] == "phonehome: MaestroHub telemetry is on."
    assert max(map(len, lines)) <= WIDTH == 80
    assert len(lines) > 1 and not text.endswith("\n")
    assert all(line.startswith("  ") for line in lines[1:]), "facts indented under it"


def test_it_says_what_is_sent_where_and_when() -> None:
    prose = _prose(notice(ENDPOINT, "log", 7200))
    assert (
        "reports of aggregate counts and system metadata (version, OS, hostname, public IP "
        "and approximate location, license, user count and the first admin email, "
        "connection/pipeline/UNS/execution counts)"
    ) in prose
    assert f"Where: {ENDPOINT} (mode log)." in prose
    assert "at startup, once at the first user's creation, and every 7200 s." in prose


def test_each_way_to_turn_it_off_is_a_line_of_its_own_and_preview_is_named() -> None:
    lines = notice(ENDPOINT, "send", 3600).split("\n")
    ways = [line.strip() for line in lines if line.startswith("    ")]
    assert "`modules.phonehome.enabled: false` in config.yaml," in ways
    assert "MAESTROHUB_PHONEHOME_ENABLED=false, or" in ways
    assert "DO_NOT_TRACK=1." in ways
    assert lines[-1] == "  `phonehome preview` shows the next report."


def test_the_module_docs_show_the_notice_as_it_is() -> None:
    doc = notice_module.__doc__ or ""
    example = textwrap.dedent(doc.split("::\n\n", 1)[1]).strip("\n")
    assert example == notice(ENDPOINT, "send", 3600)


def test_line_breaks_and_controls_in_a_value_cannot_shape_the_message() -> None:
    text = notice("https://a.example/v1\n  When: never\x1b[2J", "send\u2028", 3600)
    assert "Where: https://a.example/v1 When: never?[2J (mode send)." in text
    assert text.count("When:") == 2 and len(text.splitlines()) == 11


def test_an_endpoint_that_fits_a_line_is_never_broken() -> None:
    endpoint = "https://telemetry-eu-west-1.example.com:8443/maestrohub/v1/reports"
    lines = notice(endpoint, "send", 3600).split("\n")
    assert any(endpoint in line for line in lines)
    assert max(map(len, lines)) <= WIDTH


@given(
    endpoint=st.text(min_size=1, max_size=400),
    mode=st.sampled_from(["send", "log"]),
    interval=st.integers(min_value=60, max_value=10**12),
)
def test_no_line_is_wider_than_80_whatever_the_endpoint(
    endpoint: str, mode: str, interval: int
) -> None:
    text = notice(endpoint, mode, interval)
    lines = text.splitlines()
    assert lines == text.split("\n"), "no line break but the notice's own"
    assert lines[0].startswith("phonehome:")
    assert max(map(len, lines)) <= WIDTH
    assert all(line.isprintable() for line in lines)
    # A value cannot add a fact or break the shape: five facts, each starting a line.
    assert len([line for line in lines if re.fullmatch(r"  \S.*", line)]) == 5
