"""Tests for :mod:`phonehome_plugin.config.switch`: any "off" wins, nothing turns on what
is off."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pluggy
import pytest
from test_bounded import PEAK_MAX, growing_bombs, traced

import hookspecs.host
from phonehome_plugin import plugin
from phonehome_plugin.config import switch
from phonehome_plugin.config.settings import Settings

UNSET = None
ABSENT = "<absent>"
INVALID = "<invalid>"

DNT_VALUES: list[str | None] = [UNSET, "", "0", "false", "1", "true", "yes"]
DNT_OFF = {"1", "true", "yes"}
ENABLED_VALUES: list[str | None] = [UNSET, "false", "true", "garbage"]
ENABLED_OFF = {"false", "garbage"}
CONFIG_VALUES: list[Any] = [ABSENT, True, False, INVALID]
CONFIG_OFF = {False, INVALID}


def _host_config(enabled: Any) -> dict[str, Any]:
    """A section with a non-default interval, so an "on" decision shows it was read."""
    section: dict[str, Any] = {"interval": 600}
    if enabled == INVALID:
        section["enabled"] = "no"
    elif enabled != ABSENT:
        section["enabled"] = enabled
    return {"modules": {"phonehome": section}}


def _label(value: Any) -> str:
    return "unset" if value is None else repr(value)


TABLE = list(itertools.product(DNT_VALUES, ENABLED_VALUES, CONFIG_VALUES))


@pytest.mark.parametrize(
    ("dnt", "flag", "enabled"),
    TABLE,
    ids=[f"DNT={_label(d)}-ENABLED={_label(f)}-config={_label(c)}" for d, f, c in TABLE],
)
def test_any_off_wins_and_nothing_turns_on_what_another_turned_off(
    monkeypatch: pytest.MonkeyPatch, dnt: str | None, flag: str | None, enabled: Any
) -> None:
    if dnt is not None:
        monkeypatch.setenv("DO_NOT_TRACK", dnt)
    if flag is not None:
        monkeypatch.setenv("MAESTROHUB_PHONEHOME_ENABLED", flag)
    offs = {
        "DO_NOT_TRACK": dnt in DNT_OFF,
        "MAESTROHUB_PHONEHOME_ENABLED": flag in ENABLED_OFF,
        "config.yaml": enabled in CONFIG_OFF,
    }

    decision = switch.resolve(_host_config(enabled))

    assert decision.on is not any(offs.values())
    if decision.on:
        assert decision.reason.startswith("on:")
        assert decision.settings is not None
        assert decision.settings.enabled is True
        assert decision.settings.interval == 600
        assert decision.config_error is None
    else:
        assert decision.reason.startswith("off:")
        # The reason names one of the sources that actually said off.
        assert any(source in decision.reason for source, off in offs.items() if off)


def test_only_combinations_without_any_off_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    on = []
    for dnt, flag, enabled in TABLE:
        environ = {
            name: value
            for name, value in (("DO_NOT_TRACK", dnt), ("MAESTROHUB_PHONEHOME_ENABLED", flag))
            if value is not None
        }
        if switch.resolve(_host_config(enabled), environ).on:
            on.append((dnt, flag, enabled))
    assert sorted(on, key=repr) == sorted(
        itertools.product([UNSET, "", "0", "false"], [UNSET, "true"], [ABSENT, True]), key=repr
    )


# DO_NOT_TRACK ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["1", "true", "TRUE", "yes", "anything", "2", " 1 ", "no", "off"]
)
def test_do_not_track_with_any_other_value_is_off(value: str) -> None:
    decision = switch.resolve({}, {"DO_NOT_TRACK": value})
    assert decision.on is False
    assert "DO_NOT_TRACK" in decision.reason
    assert decision.settings is None


@pytest.mark.parametrize("value", ["", "0", "false", "FALSE", "False", " 0 ", "  "])
def test_do_not_track_empty_zero_or_false_leaves_telemetry_on(value: str) -> None:
    assert switch.resolve({}, {"DO_NOT_TRACK": value}).on is True


# MAESTROHUB_PHONEHOME_ENABLED -----------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "FALSE", "0", "no", "off", "garbage", "ture", "2"])
def test_enabled_variable_false_or_unrecognised_is_off(value: str) -> None:
    decision = switch.resolve({}, {"MAESTROHUB_PHONEHOME_ENABLED": value})
    assert decision.on is False
    assert f"MAESTROHUB_PHONEHOME_ENABLED={value}" in decision.reason


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "on", " true ", ""])
def test_enabled_variable_true_or_empty_leaves_the_decision_to_config(value: str) -> None:
    environ = {"MAESTROHUB_PHONEHOME_ENABLED": value}
    assert switch.resolve({}, environ).on is True
    config_off = {"modules": {"phonehome": {"enabled": False}}}
    assert switch.resolve(config_off, environ).on is False


# config.yaml ----------------------------------------------------------------------------


def test_config_false_is_off_and_keeps_its_settings() -> None:
    decision = switch.resolve({"modules": {"phonehome": {"enabled": False, "mode": "log"}}}, {})
    assert decision.on is False
    assert "enabled is false" in decision.reason
    assert decision.settings is not None
    assert decision.settings.mode == "log"
    assert decision.config_error is None


@pytest.mark.parametrize(
    "host_config",
    [
        {"modules": {"phonehome": {"enabeld": False}}},
        {"modules": {"phonehome": {"enabled": "false"}}},
        {"modules": {"phonehome": {"interval": 1}}},
        {"modules": {"phonehome": "off"}},
        {"modules": ["phonehome"]},
        {"modules": {"phonehome": {"endpoint": "https://[::1"}}},
        {"modules": {"phonehome": {"timeout": float("nan")}}},
        None,
        ["modules"],
        "modules: {phonehome: {enabled: false}}",
    ],
)
def test_invalid_config_is_off_with_the_error_reported(host_config: Any) -> None:
    decision = switch.resolve(host_config, {})
    assert decision.on is False
    assert decision.settings is None
    assert decision.config_error is not None
    assert decision.config_error in decision.reason
    assert decision.reason.startswith("off: invalid config.yaml")


def test_valid_config_without_switches_is_on_in_the_configured_mode() -> None:
    decision = switch.resolve(
        {"modules": {"phonehome": {"mode": "offline", "endpoint": "https://t.example.com/r"}}}, {}
    )
    assert decision.on is True
    assert decision.settings is not None
    assert decision.settings.mode == "offline"
    assert "mode offline" in decision.reason
    assert "https://t.example.com/r" in decision.reason


def test_no_config_at_all_is_on_with_defaults() -> None:
    decision = switch.resolve({}, {})
    assert decision.on is True
    assert decision.settings == Settings()


# Where the environment comes from -------------------------------------------------------


def test_default_environment_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert switch.resolve({}).on is True
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    assert switch.resolve({}).on is False


def test_explicit_environment_replaces_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    assert switch.resolve({}, {}).on is True
    monkeypatch.delenv("DO_NOT_TRACK")
    assert switch.resolve({}, {"MAESTROHUB_PHONEHOME_ENABLED": "false"}).on is False


def test_environment_off_wins_without_even_reading_an_invalid_config() -> None:
    decision = switch.resolve(
        {"modules": {"phonehome": {"enabled": "maybe"}}}, {"DO_NOT_TRACK": "1"}
    )
    assert decision.on is False
    assert "DO_NOT_TRACK" in decision.reason


def test_credentials_in_the_endpoint_never_reach_the_log_line() -> None:
    config = {"modules": {"phonehome": {"endpoint": "https://ingest:s3cret@telemetry.example/v1"}}}
    decision = switch.resolve(config, {})
    assert decision.on
    assert "s3cret" not in decision.reason and "ingest" not in decision.reason
    assert "telemetry.example/v1" in decision.reason


def test_a_token_in_the_endpoint_query_never_reaches_the_log_line() -> None:
    url = "https://telemetry.example/v1?token=s3cret-token&site=7"
    decision = switch.resolve({"modules": {"phonehome": {"endpoint": url}}}, {})
    assert decision.on
    assert "s3cret" not in decision.reason
    assert (
        decision.reason
        == "on: mode send, sending to https://telemetry.example/v1?token=***&site=***"
    )
    assert switch.without_credentials(url) == "https://telemetry.example/v1?token=***&site=***"


# Bounded work on bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    ["enabled: {bomb}", "outbox: {bomb}", "outbox: {{max_reports: {bomb}}}", "enabeld: {bomb}"],
)
def test_an_alias_bomb_config_is_off_with_a_short_config_error(at: str) -> None:
    for levels, host_config in growing_bombs(at=at):
        decision, peak = traced(switch.resolve, host_config, {})
        assert decision.on is False and decision.settings is None
        assert decision.config_error is not None
        assert len(decision.config_error) <= 200, (levels, decision.config_error[:300])
        assert decision.reason == f"off: invalid config.yaml, {decision.config_error}"
        assert peak < PEAK_MAX, (levels, peak)


@pytest.mark.parametrize("name", ["DO_NOT_TRACK", "MAESTROHUB_PHONEHOME_ENABLED"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x" * 100_000, f"'{'x' * 40}'... (100000 characters)"),
        ("1\nERROR forged line", "'1\\nERROR forged line'"),
    ],
    ids=["100 kB", "two lines"],
)
def test_an_environment_value_is_quoted_on_one_short_line(
    name: str, value: str, shown: str
) -> None:
    decision = switch.resolve({}, {name: value})
    assert decision.on is False
    assert f"{name}={shown}" in decision.reason
    assert decision.reason.isprintable() and len(decision.reason) <= 200


class Host:
    """The part of a MaestroHub app ``on_startup`` uses, with a fresh plugin manager."""

    def __init__(self, config: Any, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.plugin_manager = pluggy.PluginManager("maestrohub")
        self.plugin_manager.add_hookspecs(hookspecs.host)


def test_on_startup_with_an_alias_bomb_config_stays_off_with_one_short_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for levels, host_config in growing_bombs():
        host = Host(host_config, tmp_path / "data")
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="phonehome_plugin"):
            _, peak = traced(plugin.on_startup, host)
        assert host.plugin_manager.get_plugin(plugin.RUNTIME_NAME) is None, "telemetry is off"
        [record] = [r for r in caplog.records if r.name.startswith("phonehome_plugin")]
        message = record.getMessage()
        assert record.levelno == logging.ERROR and record.exc_info is None
        assert message.startswith("phonehome: off: invalid config.yaml, modules.phonehome.enabled")
        assert len(message) <= 200 and message.isprintable(), (levels, message[:300])
        assert peak < PEAK_MAX, (levels, peak)
        assert not (tmp_path / "data").exists(), "nothing written"


def test_enabled_false_is_off_whatever_else_the_section_holds() -> None:
    section = {"enabled": False, "interval": 1, "colour": "blue"}
    decision = switch.resolve({"modules": {"phonehome": section}}, {})
    assert decision.on is False
    assert decision.switch == "modules.phonehome.enabled"
    assert decision.reason == "off: modules.phonehome.enabled is false in config.yaml"
    # What is wrong in the rest is still there for whoever asks (status shows it).
    assert decision.settings is None
    assert decision.config_error is not None
    assert "modules.phonehome" in decision.config_error


def test_enabled_false_in_a_mapping_of_another_type_is_read_in_full() -> None:
    from types import MappingProxyType

    section = MappingProxyType({"enabled": False, "mode": "log"})
    decision = switch.resolve({"modules": {"phonehome": section}}, {})
    assert decision.on is False and decision.switch == "modules.phonehome.enabled"
    assert decision.settings is not None and decision.settings.mode == "log"


def test_only_the_boolean_false_takes_the_short_way() -> None:
    """Anything else under ``enabled`` is read in full, and refused: not a boolean."""
    values: list[Any] = [0, "false", None, [], "no"]
    for value in values:
        decision = switch.resolve({"modules": {"phonehome": {"enabled": value}}}, {})
        assert (decision.on, decision.switch) == (False, switch.INVALID), value
