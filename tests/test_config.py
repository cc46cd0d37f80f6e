"""Tests for :mod:`phonehome_plugin.config.settings`: reading ``modules.phonehome`` into
Settings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_bounded import PEAK_MAX, growing_bombs, traced

from phonehome_plugin.config import settings as config
from phonehome_plugin.config.settings import ConfigError, OutboxLimits, Settings, parse, section_of


def _error_of(section: dict[Any, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(section)
    return str(caught.value)


# Defaults -------------------------------------------------------------------------------


def test_empty_section_gives_the_documented_defaults() -> None:
    settings = parse({})
    assert settings == Settings()
    assert settings.enabled is True
    assert settings.mode == "send"
    assert settings.endpoint == "https://telemetry.maestrohub.com/api/v1/reports"
    assert settings.interval == 3600
    assert settings.geoip_url.startswith("http://ip-api.com/json/")
    assert settings.proxy is None
    assert settings.ca_bundle is None
    assert settings.state_url is None
    assert settings.outbox == OutboxLimits(256, 8 * 1024 * 1024, 7.0)
    assert settings.privacy == {
        "email": "send",
        "hostname": "send",
        "public_ip": "send",
        "location": "send",
    }
    assert settings.categories == config.Categories(True, ("*",), ())
    assert settings.prerelease_endpoint is None
    assert settings.headers == {}
    assert (settings.client_cert, settings.client_key) == (None, None)


def test_settings_are_frozen() -> None:
    settings = parse({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.enabled = False  # type: ignore[misc]


def test_default_privacy_mapping_is_not_shared_between_instances() -> None:
    first, second = Settings(), Settings()
    assert first.privacy == second.privacy
    assert first.privacy is not second.privacy


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# section_of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host_config",
    [
        {},
        {"modules": None},
        {"modules": {}},
        {"modules": {"phonehome": None}},
        {"modules": {"other": {"enabled": False}}},
        {"server": {"port": 8080}},
    ],
)
def test_section_of_is_empty_when_the_section_is_absent(host_config: dict[str, Any]) -> None:
    assert section_of(host_config) == {}


@pytest.mark.parametrize("host_config", [None, ["modules"], "modules: {}", 3])
def test_section_of_rejects_a_config_that_is_not_a_mapping(host_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"^config\.yaml: expected a mapping"):
        section_of(host_config)


def test_section_of_returns_the_phonehome_mapping() -> None:
    section = {"enabled": False, "interval": 120}
    assert section_of({"modules": {"phonehome": section, "other": {}}}) is section


@pytest.mark.parametrize("modules", [["phonehome"], "phonehome", 3, True])
def test_section_of_rejects_modules_that_is_not_a_mapping(modules: Any) -> None:
    with pytest.raises(ConfigError, match=r"^modules: expected a mapping"):
        section_of({"modules": modules})


@pytest.mark.parametrize("section", [False, "off", ["enabled"], 0])
def test_section_of_rejects_a_phonehome_section_that_is_not_a_mapping(section: Any) -> None:
    with pytest.raises(ConfigError, match=r"^modules\.phonehome: expected a mapping"):
        section_of({"modules": {"phonehome": section}})


# Unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["enabeld", "Enabled", "disabled", "url", "intervall"])
def test_unknown_key_is_an_error_naming_the_key(key: str) -> None:
    assert _error_of({key: False}) == f"modules.phonehome.{key}: unknown key"


def test_misspelt_switch_is_an_error_even_beside_valid_keys() -> None:
    message = _error_of({"interval": 120, "enabeld": False})
    assert "enabeld" in message


def test_non_string_key_is_an_unknown_key() -> None:
    assert "unknown key" in _error_of({1: True})


# enabled --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_enabled_accepts_booleans(value: bool) -> None:
    assert parse({"enabled": value}).enabled is value


@pytest.mark.parametrize("value", ["false", "no", "off", 0, 1, None, "", [], {}])
def test_enabled_rejects_everything_but_booleans(value: Any) -> None:
    message = _error_of({"enabled": value})
    assert message.startswith("modules.phonehome.enabled: expected true or false")


# mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["send", "log", "offline"])
def test_mode_accepts_each_documented_mode(mode: str) -> None:
    assert parse({"mode": mode}).mode == mode


@pytest.mark.parametrize("mode", ["SEND", "debug", "", None, 1, ["send"]])
def test_mode_rejects_anything_else(mode: Any) -> None:
    assert _error_of({"mode": mode}).startswith("modules.phonehome.mode: expected one of")


# endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://telemetry.example.com/reports",
        "https://10.0.0.5:8443/x",
        "http://localhost:8080/reports",
        "http://LOCALHOST/reports",
        "http://127.0.0.1:9/r",
        "http://127.42.0.9/r",
        "http://[::1]:8080/r",
    ],
)
def test_endpoint_accepts_https_and_loopback_http(url: str) -> None:
    assert parse({"endpoint": url}).endpoint == url


@pytest.mark.parametrize(
    "url",
    [
        "http://telemetry.example.com/reports",
        "http://10.0.0.5/reports",
        "http://[2001:db8::1]/r",
        "http://localhost.example.com/r",
    ],
)
def test_endpoint_refuses_plain_http_off_loopback(url: str) -> None:
    assert "plain http:// is allowed only for loopback" in _error_of({"endpoint": url})


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "telemetry.example.com", "https://", "https:///path", ""]
)
def test_endpoint_must_be_an_http_url_with_a_host(url: str) -> None:
    assert "expected an http(s) URL" in _error_of({"endpoint": url})


@pytest.mark.parametrize("url", [None, 42, b"https://example.com", ["https://example.com"]])
def test_endpoint_must_be_a_string(url: Any) -> None:
    assert "expected a URL string" in _error_of({"endpoint": url})


@pytest.mark.parametrize("url", ["https://[::1", "https://[not-an-ip]/x", "http://[::1/x"])
def test_malformed_url_is_a_config_error_not_a_bare_value_error(url: str) -> None:
    # urlsplit raises a plain ValueError for these; callers only catch ConfigError.
    assert _error_of({"endpoint": url}).startswith("modules.phonehome.endpoint:")
    assert _error_of({"geoip_url": url}).startswith("modules.phonehome.geoip_url:")


# interval -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [60, 61, 3600, 86400 * 365])
def test_interval_accepts_whole_seconds_of_at_least_a_minute(value: int) -> None:
    assert parse({"interval": value}).interval == value


@pytest.mark.parametrize("value", [59, 0, -3600, 3600.0, 90.5, "3600", True, None])
def test_interval_rejects_short_fractional_and_non_numbers(value: Any) -> None:
    message = _error_of({"interval": value})
    assert message.startswith("modules.phonehome.interval: expected a whole number of at least 60")


# geoip_url ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", None])
def test_geoip_url_empty_turns_the_lookup_off(value: Any) -> None:
    assert parse({"geoip_url": value}).geoip_url == ""


def test_geoip_url_may_be_plain_http_anywhere() -> None:
    url = "http://geo.example.com/json"
    assert parse({"geoip_url": url}).geoip_url == url


@pytest.mark.parametrize("value", ["geo.example.com", "file:///etc/passwd", 7, False])
def test_geoip_url_rejects_non_urls(value: Any) -> None:
    assert _error_of({"geoip_url": value}).startswith("modules.phonehome.geoip_url:")


# timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.1, 1, 2.5, 30])
def test_timeout_accepts_numbers_of_at_least_a_tenth(value: float) -> None:
    assert parse({"timeout": value}).timeout == value


@pytest.mark.parametrize(
    "value", [0.05, 0, -1, True, "10", None, float("nan"), float("inf"), float("-inf")]
)
def test_timeout_rejects_small_non_numbers_and_non_finite(value: Any) -> None:
    assert _error_of({"timeout": value}).startswith("modules.phonehome.timeout: expected a number")


# proxy, ca_bundle, state_url ------------------------------------------------------------


def test_optional_strings_accept_none_and_text() -> None:
    settings = parse(
        {
            "proxy": "http://proxy.internal:3128",
            "ca_bundle": "/etc/ssl/corp.pem",
            "state_url": "postgresql://db/maestro",
        }
    )
    assert settings.proxy == "http://proxy.internal:3128"
    assert settings.ca_bundle == Path("/etc/ssl/corp.pem")
    assert settings.state_url == "postgresql://db/maestro"
    nones = parse({"proxy": None, "ca_bundle": None, "state_url": None})
    assert (nones.proxy, nones.ca_bundle, nones.state_url) == (None, None, None)


@pytest.mark.parametrize("key", ["proxy", "ca_bundle", "state_url"])
@pytest.mark.parametrize("value", ["", 3, ["x"], False])
def test_optional_strings_reject_empty_and_non_strings(key: str, value: Any) -> None:
    assert _error_of({key: value}).startswith(f"modules.phonehome.{key}: expected a non-empty")


# outbox ---------------------------------------------------------------------------------


def test_outbox_keys_override_defaults_one_by_one() -> None:
    limits = parse({"outbox": {"max_reports": 10}}).outbox
    assert limits == OutboxLimits(max_reports=10)
    full = parse({"outbox": {"max_reports": 1, "max_bytes": 1024, "max_age_days": 0.5}}).outbox
    assert full == OutboxLimits(1, 1024, 0.5)


@pytest.mark.parametrize(
    ("outbox", "key"),
    [
        ({"max_reports": 0}, "max_reports"),
        ({"max_reports": 2.0}, "max_reports"),
        ({"max_bytes": 1023}, "max_bytes"),
        ({"max_age_days": 0}, "max_age_days"),
        ({"max_age_days": float("nan")}, "max_age_days"),
        ({"max_age_days": "7"}, "max_age_days"),
        ({"max_reportz": 5}, "max_reportz"),
    ],
)
def test_outbox_rejects_bad_values_naming_the_nested_key(outbox: dict[str, Any], key: str) -> None:
    assert _error_of({"outbox": outbox}).startswith(f"modules.phonehome.outbox.{key}:")


@pytest.mark.parametrize("value", [None, 256, ["max_reports"]])
def test_outbox_must_be_a_mapping(value: Any) -> None:
    assert _error_of({"outbox": value}).startswith("modules.phonehome.outbox: expected a mapping")


# privacy --------------------------------------------------------------------------------


def test_privacy_choices_merge_with_send_defaults() -> None:
    privacy = parse({"privacy": {"email": "hash", "public_ip": "omit"}}).privacy
    assert privacy == {
        "email": "hash",
        "hostname": "send",
        "public_ip": "omit",
        "location": "send",
    }


@pytest.mark.parametrize("choice", ["send", "country", "omit"])
def test_privacy_location_takes_send_country_or_omit(choice: str) -> None:
    assert parse({"privacy": {"location": choice}}).privacy["location"] == choice


@pytest.mark.parametrize("choice", ["hash", "city", True, None])
def test_privacy_location_rejects_anything_else(choice: Any) -> None:
    assert _error_of({"privacy": {"location": choice}}).startswith(
        "modules.phonehome.privacy.location: expected one of send, country, omit"
    )


@pytest.mark.parametrize(
    ("privacy", "where"),
    [
        ({"email": "encrypt"}, "privacy.email"),
        ({"hostname": None}, "privacy.hostname"),
        ({"phone": "omit"}, "privacy.phone"),
    ],
)
def test_privacy_rejects_unknown_fields_and_choices(privacy: dict[str, Any], where: str) -> None:
    assert _error_of({"privacy": privacy}).startswith(f"modules.phonehome.{where}:")


def test_privacy_must_be_a_mapping() -> None:
    assert _error_of({"privacy": "omit"}).startswith(
        "modules.phonehome.privacy: expected a mapping"
    )


# A complete section ---------------------------------------------------------------------


def test_a_complete_valid_section_is_read_key_by_key() -> None:
    settings = parse(
        {
            "enabled": False,
            "mode": "log",
            "endpoint": "https://t.example.com/r",
            "interval": 600,
            "geoip_url": "",
            "timeout": 2.5,
            "proxy": "http://proxy:3128",
            "ca_bundle": "/ca.pem",
            "state_url": "sqlite:///x",
            "outbox": {"max_reports": 3},
            "privacy": {"hostname": "hash"},
            "categories": {"system_details": False, "collectors": {"deny": ["acme.*"]}},
            "prerelease_endpoint": "https://t.example.com/pre",
            "headers": {"X-Relay-Token": "t0ken"},
            "client_cert": "/client.pem",
            "client_key": "/client.key",
        }
    )
    assert settings == Settings(
        enabled=False,
        mode="log",
        endpoint="https://t.example.com/r",
        interval=600,
        geoip_url="",
        timeout=2.5,
        proxy="http://proxy:3128",
        ca_bundle=Path("/ca.pem"),
        state_url="sqlite:///x",
        outbox=OutboxLimits(max_reports=3),
        privacy={"email": "send", "hostname": "hash", "public_ip": "send", "location": "send"},
        categories=config.Categories(False, ("*",), ("acme.*",)),
        prerelease_endpoint="https://t.example.com/pre",
        headers={"X-Relay-Token": "t0ken"},
        client_cert=Path("/client.pem"),
        client_key=Path("/client.key"),
    )


# is_loopback_host -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.localdomain", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_host(host: str | None, expected: bool) -> None:
    assert config.is_loopback_host(host) is expected


# Bounded work on bad input --------------------------------------------------------------

# Where a YAML alias bomb sits in modules.phonehome, and how the error must begin.
BOMB_SITES: dict[str, tuple[str, str]] = {
    "enabled": ("enabled: {bomb}", "modules.phonehome.enabled: expected true or false, got a "),
    "mode": ("mode: {bomb}", "modules.phonehome.mode: expected one of send, log, offline, got a "),
    "endpoint": ("endpoint: {bomb}", "modules.phonehome.endpoint: expected a URL string, got a "),
    "proxy": ("proxy: {bomb}", "modules.phonehome.proxy: expected a non-empty string, got a "),
    "outbox": ("outbox: {bomb}", "modules.phonehome.outbox"),
    "outbox.max_reports": (
        "outbox: {{max_reports: {bomb}}}",
        "modules.phonehome.outbox.max_reports: expected a whole number of at least 1, got a ",
    ),
    "privacy": ("privacy: {bomb}", "modules.phonehome.privacy"),
    "privacy.email": (
        "privacy: {{email: {bomb}}}",
        "modules.phonehome.privacy.email: expected one of send, hash, omit, got a ",
    ),
    "categories": ("categories: {bomb}", "modules.phonehome.categories"),
    "categories.collectors": (
        "categories: {{collectors: {bomb}}}",
        "modules.phonehome.categories.collectors",
    ),
    "categories.collectors.deny": (
        "categories: {{collectors: {{deny: [{bomb}]}}}}",
        "modules.phonehome.categories.collectors.deny: expected globs over collector names",
    ),
    "headers": ("headers: {{X-Relay: {bomb}}}", "modules.phonehome.headers.X-Relay: expected a"),
    "unknown key": ("enabeld: {bomb}", "modules.phonehome.enabeld: unknown key"),
    "unknown key beside valid ones": (
        "interval: 600, enabeld: {bomb}",
        "modules.phonehome.enabeld: unknown key",
    ),
    "unknown key in outbox": (
        "outbox: {{max_reportz: {bomb}}}",
        "modules.phonehome.outbox.max_reportz: unknown key",
    ),
}


def _bounded_error_of(host_config: Any) -> tuple[str, int]:
    """The ConfigError's message for ``host_config``, and tracemalloc's peak while parsing."""

    def read() -> str:
        with pytest.raises(ConfigError) as caught:
            parse(section_of(host_config))
        return str(caught.value)

    return traced(read)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("site", list(BOMB_SITES))
def test_an_alias_bomb_anywhere_in_the_section_is_refused_in_bounded_work(
    site: str, kind: str
) -> None:
    at, start = BOMB_SITES[site]
    # Each level multiplies the value's repr by 9; 10 levels would be 3.5 billion leaves.
    for levels, host_config in growing_bombs(at=at, kind=kind):
        message, peak = _bounded_error_of(host_config)
        assert len(message) <= 200, (levels, message[:300])
        assert message.isprintable(), (levels, message[:300])
        assert peak < PEAK_MAX, (levels, peak)
        assert message.startswith(start), message
        if site in ("outbox", "privacy"):
            # a list is no mapping; a mapping bomb's keys k0... are unknown keys
            assert message.endswith(
                ": expected a mapping, got a list of 9 items"
                if kind == "list"
                else ".k0: unknown key"
            ), message


def test_a_self_referencing_value_is_refused_without_walking_it() -> None:
    host_config = yaml.safe_load("loop: &loop [*loop]\nmodules: {phonehome: {enabled: *loop}}\n")
    message, peak = _bounded_error_of(host_config)
    assert message == "modules.phonehome.enabled: expected true or false, got a list of 1 item"
    assert peak < PEAK_MAX


def test_a_huge_string_value_is_quoted_by_a_short_prefix() -> None:
    message, peak = _bounded_error_of({"modules": {"phonehome": {"mode": "x" * 10_000_000}}})
    assert message == (
        "modules.phonehome.mode: expected one of send, log, offline, got "
        f"'{'x' * 40}'... (10000000 characters)"
    )
    assert peak < PEAK_MAX


@pytest.mark.parametrize("key", ["endpoint", "geoip_url", "proxy", "ca_bundle", "state_url"])
def test_a_string_setting_past_string_max_is_refused_before_it_is_parsed(key: str) -> None:
    # 10 MB: urlsplit or Path would copy it, and urlsplit would keep it in its cache.
    huge = "https://example.com/" + "a" * 10_000_000
    message, peak = _bounded_error_of({"modules": {"phonehome": {key: huge}}})
    assert message.startswith(
        f"modules.phonehome.{key}: expected at most {config.STRING_MAX} characters, got "
    ), message
    assert len(message) <= 200
    assert peak < PEAK_MAX


def test_string_max_itself_is_accepted() -> None:
    url = "https://example.com/"
    url += "a" * (config.STRING_MAX - len(url))
    assert parse({"endpoint": url}).endpoint == url
    assert "at most" in _error_of({"endpoint": url + "a"})


def test_a_huge_or_multi_line_unknown_key_is_named_on_one_short_line() -> None:
    assert _error_of({"k" * 10_000_000: 1}) == (
        f"modules.phonehome.'{'k' * 40}'... (10000000 characters): unknown key"
    )
    assert _error_of({"enabled\nERROR forged": 1}) == (
        "modules.phonehome.'enabled\\nERROR forged': unknown key"
    )


class CountingKeys(Mapping[Any, Any]):
    """A mapping of ``size`` unknown keys that counts the keys read from it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        for number in range(self.size):
            self.read += 1
            yield f"key{number}"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError("the value of an unknown key was read")


@pytest.mark.parametrize("where", ["section", "outbox", "privacy"])
def test_at_most_keys_scan_keys_of_a_mapping_are_read(where: str) -> None:
    keys = CountingKeys(1_000_000)
    section: Mapping[Any, Any] = keys if where == "section" else {where: keys}
    message = _error_of(section)  # type: ignore[arg-type]
    assert message.endswith(": unknown key")
    assert keys.read == config.KEYS_SCAN


def test_a_section_within_keys_scan_names_its_first_unknown_key_in_sorted_order() -> None:
    section = {f"zz{n}": 1 for n in range(config.KEYS_SCAN - 2)} | {"aa": 1, "enabled": True}
    assert _error_of(section) == "modules.phonehome.aa: unknown key"


_FOREIGN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**200, max_value=2**20_000)
    | st.floats()
    | st.text()
    | st.binary()
    | st.dates(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(
    key=st.sampled_from([*config._PARSERS, "outbox.max_reports", "privacy.email"]), value=_FOREIGN
)
def test_every_config_error_is_one_line_of_less_than_error_max(key: str, value: Any) -> None:
    outer, _, inner = key.partition(".")
    section = {outer: {inner: value}} if inner else {outer: value}
    try:
        parse(section)
    except ConfigError as error:
        assert len(str(error)) < config.ERROR_MAX, str(error)
        assert str(error).isprintable(), str(error)


# categories -------------------------------------------------------------------------------


def test_categories_default_to_everything_on() -> None:
    categories = parse({"categories": {}}).categories
    assert categories == config.Categories()
    assert categories.system_details is True
    assert categories.collector_on("acme.historian")


@pytest.mark.parametrize(
    ("collectors", "on", "off"),
    [
        (True, ["acme.historian", "b.c"], []),
        (False, [], ["acme.historian", "b.c"]),
        ({"deny": ["acme.*"]}, ["b.c", "acmex.y"], ["acme.historian", "acme.billing"]),
        ({"deny": "acme.billing"}, ["acme.historian"], ["acme.billing"]),
        ({"allow": ["acme.*"]}, ["acme.historian"], ["b.c"]),
        ({"allow": ["acme.*"], "deny": ["acme.bill?ng"]}, ["acme.historian"], ["acme.billing"]),
        ({"allow": []}, [], ["acme.historian"]),
        ({"allow": ["[ab].*"]}, ["a.x", "b.x"], ["c.x"]),
    ],
)
def test_collector_sections_are_switched_off_as_a_whole_or_by_glob(
    collectors: Any, on: list[str], off: list[str]
) -> None:
    categories = parse({"categories": {"collectors": collectors}}).categories
    assert [name for name in on + off if categories.collector_on(name)] == on


def test_deny_wins_over_allow() -> None:
    categories = parse(
        {"categories": {"collectors": {"allow": ["acme.*"], "deny": ["*"]}}}
    ).categories
    assert not categories.collector_on("acme.historian")


def test_system_details_can_be_switched_off() -> None:
    assert parse({"categories": {"system_details": False}}).categories.system_details is False


@pytest.mark.parametrize(
    ("categories", "where"),
    [
        ({"location": False}, "categories.location: unknown key"),
        ({"system_details": "no"}, "categories.system_details: expected true or false"),
        ({"collectors": "none"}, "categories.collectors: expected true, false or a mapping"),
        ({"collectors": {"only": ["a.b"]}}, "categories.collectors.only: unknown key"),
        ({"collectors": {"deny": [3]}}, "categories.collectors.deny: expected globs"),
        ({"collectors": {"deny": ["Acme.*"]}}, "categories.collectors.deny: expected globs"),
        ({"collectors": {"deny": ["a b"]}}, "categories.collectors.deny: expected globs"),
        ({"collectors": {"allow": {"a": 1}}}, "categories.collectors.allow: expected a list"),
        (
            {"collectors": {"deny": ["a.*"] * (config.GLOBS_MAX + 1)}},
            f"categories.collectors.deny: expected at most {config.GLOBS_MAX} globs",
        ),
    ],
)
def test_categories_reject_bad_values_naming_the_key(
    categories: dict[str, Any], where: str
) -> None:
    assert _error_of({"categories": categories}).startswith(f"modules.phonehome.{where}")


# Relays: headers, client certificate, the pre-release endpoint ----------------------------


def test_headers_are_read_as_given() -> None:
    headers = {"Authorization": "Bearer abc.def", "X-Relay-Site": "plant-7"}
    assert parse({"headers": headers}).headers == headers


@pytest.mark.parametrize(
    ("headers", "where"),
    [
        ({"Bad Name": "v"}, "headers.Bad Name: not a header name"),
        ({3: "v"}, "headers.3: not a header name"),
        ({"User-Agent": "me"}, "headers.User-Agent: set by the plugin itself"),
        ({"idempotency-key": "x"}, "headers.idempotency-key: set by the plugin itself"),
        ({"Host": "x"}, "headers.Host: set by the plugin itself"),
        ({"X-A": "1", "x-a": "2"}, "headers.x-a: given twice"),
        ({"X-A": ""}, "headers.X-A: expected a non-empty string"),
        ({"X-A": 3}, "headers.X-A: expected a non-empty string"),
        ({"X-A": "a\r\nX-Injected: 1"}, "headers.X-A: expected one of line of printable ASCII"),
        ({"X-A": " padded "}, "headers.X-A: expected one line of printable ASCII"),
        ({f"X-{n}": "v" for n in range(config.HEADERS_MAX + 1)}, "headers: expected at most"),
    ],
)
def test_headers_reject_bad_names_and_values(headers: dict[Any, Any], where: str) -> None:
    message = _error_of({"headers": headers})
    assert message.startswith(f"modules.phonehome.{where.replace('one of line', 'one line')}")


def test_a_header_value_is_never_quoted_in_an_error() -> None:
    message = _error_of({"headers": {"Authorization": "Bearer SECRET-4711\n"}})
    assert (
        message == "modules.phonehome.headers.Authorization: expected one line of printable ASCII"
    )


def test_headers_must_be_a_mapping() -> None:
    assert _error_of({"headers": ["Authorization: x"]}).startswith(
        "modules.phonehome.headers: expected a mapping"
    )


def test_a_client_key_needs_a_client_certificate() -> None:
    assert _error_of({"client_key": "/k.pem"}) == (
        "modules.phonehome.client_key: set client_cert too (the certificate)"
    )
    alone = parse({"client_cert": "/both.pem"})
    assert (alone.client_cert, alone.client_key) == (Path("/both.pem"), None)


@pytest.mark.parametrize("value", [None, ""])
def test_no_prerelease_endpoint_by_default(value: Any) -> None:
    assert parse({"prerelease_endpoint": value}).prerelease_endpoint is None


def test_the_prerelease_endpoint_is_checked_as_the_endpoint_is() -> None:
    assert parse({"prerelease_endpoint": "https://pre.example/r"}).prerelease_endpoint == (
        "https://pre.example/r"
    )
    assert "plain http:// is allowed only for loopback" in _error_of(
        {"prerelease_endpoint": "http://pre.example/r"}
    )


# Secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("endpoint", "http://ingest:SECRET-1@telemetry.example/v1?token=SECRET-2"),
        ("endpoint", "ftp://telemetry.example/v1?token=SECRET-2"),
        ("prerelease_endpoint", "http://telemetry.example/v1?token=SECRET-2"),
        ("geoip_url", "gopher://geo.example/json?key=SECRET-2"),
        ("endpoint", "https://[::1/x?token=SECRET-2"),
    ],
)
def test_an_error_quotes_a_url_only_masked(key: str, url: str) -> None:
    message = _error_of({key: url})
    assert message.startswith(f"modules.phonehome.{key}:")
    assert "SECRET" not in message and "ingest" not in message


SECRET_SECTION = {
    "endpoint": "https://ingest:SECRET-A@telemetry.example/v1?token=SECRET-B",
    "prerelease_endpoint": "https://telemetry.example/pre?token=SECRET-C",
    "geoip_url": "https://pro.ip-api.com/json/?key=SECRET-D",
    "proxy": "http://proxyuser:SECRET-E@proxy.example:3128",
    "state_url": "postgresql://phonehome:SECRET-F@db.example/telemetry",
    "headers": {"Authorization": "Bearer SECRET-G"},
}


def test_effective_lists_every_setting_with_secrets_masked() -> None:
    settings = parse({**SECRET_SECTION, "client_cert": "/c.pem"})
    shown = dict(config.effective(settings))
    assert "SECRET" not in json.dumps(shown)
    assert shown["endpoint"] == "https://***@telemetry.example/v1?token=***"
    assert shown["geoip_url"] == "https://pro.ip-api.com/json/?key=***"
    assert shown["state_url"] == "postgresql://***@db.example/telemetry"
    assert shown["headers.Authorization"] == "***"
    assert shown["client_cert"] == "/c.pem" and shown["client_key"] is None
    assert shown["privacy.location"] == "send"
    assert shown["categories.collectors.allow"] == "*"
    assert shown["categories.collectors.deny"] == ""
    assert shown["categories.system_details"] is True
    # Every field is there, under its own name or as its dotted parts.
    for item in dataclasses.fields(Settings):
        assert any(key == item.name or key.startswith(item.name + ".") for key in shown), item
    assert all(isinstance(v, str | int | float | bool | type(None)) for v in shown.values())


def test_the_repr_of_settings_shows_no_secret() -> None:
    settings = parse(SECRET_SECTION)
    assert "SECRET" not in repr(settings) and "SECRET" not in str(settings)
    assert repr(settings).startswith("Settings(enabled=True, mode='send', endpoint='https://***@")


def test_secret_values_are_every_secret_of_every_url_and_header() -> None:
    found = config.secret_values(parse(SECRET_SECTION))
    for letter in "ABCDEFG":
        assert any(f"SECRET-{letter}" in secret for secret in found), letter
    assert "Bearer SECRET-G" in found and "SECRET-F" in found
