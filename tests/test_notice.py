"""The startup notice: the same facts as ever, in lines an 80-column terminal shows whole,
shown again when what is sent changes (and only then)."""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonehome_plugin.admin import startrecord
from phonehome_plugin.config import notice as notice_module
from phonehome_plugin.config.notice import (
    NOTICE_VERSION,
    WIDTH,
    changes,
    chosen,
    facts,
    notice,
    shown_settings,
)
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.reports.shape import SCHEMA_VERSION
from phonehome_plugin.state.backends import open_store

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


# Versioned: shown again when what is sent changes ---------------------------------------


def test_a_changed_notice_says_what_changed_and_lists_the_settings_that_shape_reports() -> None:
    text = notice(ENDPOINT, "send", 3600, ["endpoint", "privacy.email"], {"privacy.email": "omit"})
    lines = text.split("\n")
    assert lines[0] == "phonehome: MaestroHub telemetry is on."
    assert lines[1] == "  Changed since the last notice: endpoint, privacy.email."
    assert "  Settings that change what is sent: privacy.email=omit." in lines
    assert max(map(len, lines)) <= WIDTH


def test_the_facts_are_every_setting_that_shapes_a_report_and_no_other() -> None:
    found = facts(Settings(), SCHEMA_VERSION)
    assert found["notice"] == NOTICE_VERSION and found["schema_version"] == SCHEMA_VERSION
    assert {"endpoint", "mode", "geoip_url", "privacy.email", "privacy.hostname"} <= set(found)
    for how in ("enabled", "interval", "timeout", "proxy", "ca_bundle", "state_url"):
        assert how not in found
    assert not any(key.startswith("outbox.") for key in found)


def test_a_setting_added_later_is_a_fact_without_any_change_here() -> None:
    @dataclasses.dataclass(frozen=True)
    class Later(Settings):
        later: Mapping[str, bool] = dataclasses.field(default_factory=lambda: {"location": True})

    assert facts(Later(later={"location": False}), 1)["later.location"] is False
    assert shown_settings(Later())["later.location"] is True
    assert changes(facts(Later(), 1), facts(Later(later={"location": False}), 1)) == [
        "later.location"
    ]


def test_chosen_lists_what_differs_from_the_defaults_but_endpoint_and_mode() -> None:
    settings = Settings(endpoint="https://x.example/r", mode="log", privacy={"email": "hash"})
    assert chosen(settings) == {"privacy.email": "hash"}


def test_shown_settings_mask_credentials_in_urls_and_keyword_strings() -> None:
    shown = shown_settings(
        Settings(proxy="http://me:pw@proxy:3128", state_url="host=db user=me password=pw")
    )
    assert shown["proxy"] == "http://***@proxy:3128"
    assert shown["state_url"] == "host=db user=me password=***"


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "telemetry is on" in r.getMessage()]


@pytest.fixture
def announced(tmp_path: Path) -> Iterator[Callable[[Settings], bool]]:
    store = open_store(tmp_path)
    yield lambda settings: startrecord.announce(store, settings)
    store.close()


def test_the_notice_is_shown_again_only_when_what_is_sent_changes(
    announced: Callable[[Settings], bool],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Settings(endpoint="https://a.example/r")
    with caplog.at_level(logging.WARNING, logger="phonehome_plugin"):
        assert announced(first) is True
        assert announced(first) is False, "a restart with the same settings: nothing new"
        assert announced(Settings(endpoint="https://a.example/r", interval=600)) is False
        assert announced(Settings(endpoint="https://a.example/r", timeout=3)) is False
        assert announced(Settings(endpoint="https://b.example/r")) is True
        assert announced(Settings(endpoint="https://b.example/r", mode="log")) is True
        private = Settings(endpoint="https://b.example/r", mode="log", privacy={"email": "omit"})
        assert announced(private) is True
        monkeypatch.setattr(startrecord, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        assert announced(private) is True
        assert announced(private) is False
    shown = _logged(caplog)
    assert len(shown) == 5
    assert "Changed since" not in shown[0], "the first notice is no change"
    assert "Changed since the last notice: endpoint." in shown[1]
    assert "Changed since the last notice: mode." in shown[2]
    assert "privacy.email" in " ".join(shown[3].split())
    assert "Changed since the last notice: schema_version." in shown[4]
    assert all("`phonehome preview` shows the next report." in text for text in shown)


def test_an_installation_told_by_an_older_version_is_told_again_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    try:
        store.set(startrecord.NOTICE_KEY, "logged")  # what versions before the facts kept
        with caplog.at_level(logging.WARNING, logger="phonehome_plugin"):
            assert startrecord.announce(store, Settings()) is True
            assert startrecord.announce(store, Settings()) is False
    finally:
        store.close()
    [text] = _logged(caplog)
    assert "Changed since the last notice: notice." in text
