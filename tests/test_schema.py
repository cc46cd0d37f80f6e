"""The report's JSON Schema, shipped in the package, and the check every report passes
before it is stored.

The plugin's own checker (:func:`phonehome_plugin.reports.schema.errors`, no dependency at
run time) is held to agree with ``jsonschema``'s Draft 2020-12 validator: on every
report the plugin builds, and on reports mutated by hypothesis.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e_support
import operator_support
import pytest
from e2e_support import settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from operator_support import (
    CountingServer,
    config_of,
    make,
    pending_bodies,
    phonehome_section,
    running,
    stored_bytes,
)

from hookspecs import hookimpl
from phonehome_plugin.reports import schema, shape
from phonehome_plugin.testing.activity import Activity
from phonehome_plugin.testing.simhost import SimHost

acme_distribution = e2e_support.acme_distribution  # fixture
counting_server = operator_support.counting_server  # fixture

VALIDATOR = Draft202012Validator(schema.load())
LOG_PREFIX = "phonehome: mode log, report not sent: "


class RichCollector:
    """A collector whose section uses every shape the contract allows."""

    name = "acme.rich"

    def collect(self) -> dict[str, Any]:
        return {
            "writes": 1200,
            "ratio": 0.25,
            "healthy": True,
            "backend": "influx",
            "negative": -3,
            "by_kind": {"float": 3, "bool": 1, "latest": "v2.1", "share": 0.5},
        }


class RichPlugin:
    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Any) -> None:
        register(RichCollector())


def both_verdicts(document: Any) -> tuple[list[str], list[str]]:
    """Our lines and jsonschema's; our compiled check must say what our walk says."""
    ours = schema.walk(document)
    assert schema.valid(document) is not bool(ours), f"the compiled check disagrees: {ours}"
    assert schema.errors(document) == ours
    theirs = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(document)]
    return ours, theirs


def assert_agree(document: Any) -> bool:
    ours, theirs = both_verdicts(document)
    assert bool(ours) == bool(theirs), f"ours: {ours}\njsonschema: {theirs}"
    return not ours


def life(host: SimHost, hours: int = 2) -> None:
    activity = Activity(seed=7)
    activity.populate_factory(host)
    with running(host):
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
        for _ in range(hours):
            activity.hour_of_work(host, tick_every=600)
        settle(host)


# Every report the plugin builds ---------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "privacy hash": {"privacy": {"email": "hash", "hostname": "hash", "public_ip": "hash"}},
    "privacy omit": {"privacy": {"email": "omit", "hostname": "omit", "public_ip": "omit"}},
    "no location": {"geoip_url": ""},
    "switched off": {
        "privacy": {"location": "omit"},
        "categories": {"system_details": False, "collectors": {"deny": ["acme.counter"]}},
    },
    "country only": {"privacy": {"location": "country"}},
}


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_every_report_sent_validates_with_both_checkers(
    variant: str, counting_server: CountingServer, acme_distribution: Path, tmp_path: Path
) -> None:
    section = phonehome_section(counting_server, **CONFIGS[variant])
    life(make(config_of(section), tmp_path / "data", extra_plugins=[RichPlugin()]))

    reports = [json.loads(body) for body in counting_server.traffic.bodies]
    assert {r["trigger"] for r in reports} == {"startup", "first_user", "periodic"}
    assert reports[-1]["collectors"]["acme.rich"] == RichCollector().collect()
    assert "acme.broken" in reports[-1]["diagnostics"]["collector_errors"]
    for built in reports:
        assert assert_agree(built), built


def test_reports_of_an_unwell_endpoint_validate_with_both_checkers(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    traffic = counting_server.traffic
    traffic.status, traffic.retry_after = 503, "60"
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
        traffic.status = 400  # a final answer: the report is dropped, counted
        host.run_for(3 * 3600, step=600)
        settle(host)
        traffic.status = 202
        host.run_for(2 * 3600, step=600)
        settle(host)

    reports = [json.loads(body) for body in traffic.bodies]
    deliveries = [r["diagnostics"]["delivery"] for r in reports]
    assert any(d["failed"] >= 1 for d in deliveries), "a 503 is counted as a failed series"
    assert any(d["rejected"] >= 1 and d["dropped"] >= 1 for d in deliveries), "and a 400"
    for built in reports:
        assert assert_agree(built)


def test_every_report_logged_in_log_mode_validates_with_both_checkers(
    counting_server: CountingServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    section = phonehome_section(counting_server, mode="log")
    with caplog.at_level(logging.WARNING, logger="phonehome_plugin"):
        # Two hours: the first periodic report falls due up to an hour and its jitter
        # after the start, by the installation's random id (1 id in 40 missed it in one).
        life(make(config_of(section), tmp_path / "data", extra_plugins=[RichPlugin()]), hours=2)

    logged = [
        json.loads(r.getMessage()[len(LOG_PREFIX) :])
        for r in caplog.records
        if r.getMessage().startswith(LOG_PREFIX)
    ]
    assert len(logged) >= 3
    for built in logged:
        assert assert_agree(built)


# The schema itself ---------------------------------------------------------------------


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema.load())
    assert schema.load()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(schema.text()) == schema.load()


def test_the_schema_is_shipped_as_package_data() -> None:
    import tomllib

    pyproject = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["phonehome_plugin.reports"]
    assert "*.json" in patterns
    assert Path(schema.__file__).with_name(schema.SCHEMA_FILE).is_file()


def test_the_checker_fails_closed_on_a_keyword_it_does_not_know() -> None:
    assert schema.errors("x", {"type": "string", "format": "email"}) == [
        "$: schema keyword 'format' is not supported"
    ]
    assert schema.errors(1, {"oneOf": [{"type": "integer"}]}) != []


# Agreement on mutated reports -------------------------------------------------------------


@pytest.fixture(scope="module")
def base_reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Reports of every trigger, built by the plugin (offline mode: nothing sent)."""
    data = tmp_path_factory.mktemp("schema") / "data"
    section = {"endpoint": "http://127.0.0.1:9/v1/reports", "mode": "offline"}
    life(make(config_of(section), data, extra_plugins=[RichPlugin()]), hours=1)
    return [json.loads(body) for body in pending_bodies(data)]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-5, max_value=10**6).map(float)  # integral floats: 3.0
    | st.text(max_size=70)
    | st.sampled_from(
        [
            "",
            " mqtt",
            "mqtt\n",
            "a" * 64,
            "a" * 65,
            "ümlaut",
            "x y",
            "LIC-2026",
            "startup",
            "trial",
            "embedded",
            "hmac-sha256:00ff",
            "2026-03-02T08:00:00.000Z",
            "other",
        ]
    )
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=6,
)


def _containers(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(value, dict | list):
                yield from _containers(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            if isinstance(value, dict | list):
                yield from _containers(value, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def _nudges(value: Any) -> list[Any]:
    """Values close to ``value`` that sit on a boundary of the schema's rules."""
    if isinstance(value, bool):
        return [int(value), "true", None, not value]
    if isinstance(value, int):
        return [float(value), value + 0.5, -1, -value - 1, True, str(value), None, 2**63]
    if isinstance(value, float):
        return [int(value), -value - 1, 1.5, float(round(value)), None, "0.5"]
    if isinstance(value, str):
        return [value + "\n", " " + value, value * 70, "", value.upper() + "!", None, 1, [value]]
    if value is None:
        return [0, "", False, {}, []]
    return [None, "x", 0]


@st.composite
def mutated(draw: st.DrawFn, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """A built report changed in one or two places: a field replaced, removed, added or
    nudged across a boundary (3 for 3.0, a trailing newline, one character too many)."""
    document: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(reports)))
    for _ in range(draw(st.integers(1, 2))):
        container = _at(document, draw(st.sampled_from(list(_containers(document)))))
        op = draw(st.sampled_from(["nudge", "nudge", "replace", "delete", "add", "collector"]))
        if op == "collector" and isinstance(document.get("collectors"), dict):
            key = draw(st.sampled_from(["acme.rich", "acme.new", "Acme", "acme", "a.b.c"]))
            document["collectors"][key] = draw(JSON_VALUES)
        elif isinstance(container, dict) and container and op != "add":
            key = draw(st.sampled_from(sorted(container)))
            if op == "delete":
                del container[key]
            elif op == "nudge":
                container[key] = draw(st.sampled_from(_nudges(container[key])))
            else:
                container[key] = draw(JSON_VALUES)
        elif isinstance(container, dict):
            container[draw(st.text(max_size=12))] = draw(JSON_VALUES)
        elif isinstance(container, list) and container:
            container[draw(st.integers(0, len(container) - 1))] = draw(JSON_VALUES)
    return document


def test_both_checkers_agree_on_every_missing_field(base_reports: list[dict[str, Any]]) -> None:
    for built in base_reports:
        for path in list(_containers(built)):
            container = _at(built, path)
            for key in list(container) if isinstance(container, dict) else []:
                document = copy.deepcopy(built)
                del _at(document, path)[key]
                assert_agree(document)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_checkers_agree_on_mutated_reports(
    base_reports: list[dict[str, Any]], data: st.DataObject
) -> None:
    assert_agree(data.draw(mutated(base_reports)))


@settings(max_examples=200, deadline=None)
@given(section=JSON_VALUES)
def test_both_checkers_agree_on_any_collector_section(
    base_reports: list[dict[str, Any]], section: Any
) -> None:
    document = copy.deepcopy(base_reports[0])
    document["collectors"]["acme.any"] = section
    assert_agree(document)


SWITCHED_OFF_NAMES = st.sampled_from(
    [
        "location",
        "system_details",
        "collectors.acme.rich",
        "collectors.acme",
        "collectors.Acme.x",
        "system",
        "",
        "collectors." + "a." * 40 + "b",
    ]
)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(SWITCHED_OFF_NAMES | JSON_SCALARS, max_size=4))
def test_both_checkers_agree_on_any_switched_off_list(
    base_reports: list[dict[str, Any]], names: list[Any]
) -> None:
    document = copy.deepcopy(base_reports[0])
    document["diagnostics"]["switched_off"] = names
    assert_agree(document)


def test_both_checkers_agree_on_the_switched_off_lists_length() -> None:
    rule = schema.load()["properties"]["diagnostics"]["properties"]["switched_off"]
    most = rule["maxItems"]
    for length in (most, most + 1):
        document = ["location"] * length
        ours = schema.errors(document, rule)
        theirs = list(Draft202012Validator(rule).iter_errors(document))
        assert bool(ours) == bool(theirs) == (length > most)


def test_a_report_without_a_switched_off_section_is_valid_and_with_it_missing_invalid(
    base_reports: list[dict[str, Any]],
) -> None:
    document = copy.deepcopy(base_reports[0])
    document.pop("location")
    assert assert_agree(document), "location may be switched off"
    document["system"].pop("cpu_count")
    assert assert_agree(document), "so may the system details"
    document["system"].pop("prerelease")
    assert not assert_agree(document), "the pre-release mark may not"


def test_an_integral_float_is_an_integer_for_both() -> None:
    assert schema.errors(3.0, {"type": "integer"}) == []
    assert schema.errors(3.5, {"type": "integer"}) != []
    assert schema.errors(True, {"type": "integer"}) != []


# Bounded work on what is checked ---------------------------------------------------------

_BY_TYPE = {"type": "object", "propertyNames": {"pattern": "^[a-z]{1,8}$"}}


def test_errors_stop_after_errors_max_lines() -> None:
    document = {f"BAD{i}": 1 for i in range(100_000)}
    problems = schema.errors(document, _BY_TYPE)
    assert len(problems) == schema.ERRORS_MAX
    assert schema.errors({"ok": 1}, _BY_TYPE) == []


def test_values_and_names_in_errors_are_quoted_by_a_short_prefix() -> None:
    huge = "X" * 10_000_000
    [named] = schema.errors({huge: 1}, _BY_TYPE)
    assert named.startswith(f"$['{'X' * 40}'... (10000000 characters)]: does not match")
    [listed] = schema.errors(huge, {"enum": ["a", "b"]})
    assert listed == f"$: '{'X' * 40}'... (10000000 characters) is not one of ['a', 'b']"
    [unexpected] = schema.errors({huge: 1}, {"type": "object", "additionalProperties": False})
    assert len(unexpected) <= 200 and unexpected.isprintable()
    for problem in (named, listed, unexpected):
        assert len(problem) <= 250, problem


def test_a_huge_int_is_checked_without_being_turned_into_digits() -> None:
    # str() of an int past 4300 digits raises ValueError: the check would crash, not fail.
    huge = 10**5000
    assert schema.errors(huge, {"maximum": 10}) == ["$: an int of 16610 bits is above 10"]
    assert schema.errors(-huge, {"minimum": 0}) == ["$: an int of 16610 bits is below 0"]
    assert schema.errors(huge, {"enum": [1]}) == ["$: an int of 16610 bits is not one of [1]"]


def test_any_of_rules_an_option_out_on_its_first_error() -> None:
    # Every option fails on each of 100_000 keys; one error of each is enough to say so.
    document = {f"BAD{i}": 1 for i in range(100_000)}
    rule = {"anyOf": [_BY_TYPE, _BY_TYPE]}
    assert schema.errors(document, rule) == ["$: matches none of the allowed shapes"]


# An invalid report is never stored or sent, and is counted ------------------------------

MARKER = "Zq7-forced-invalid-value"


def _force_invalid(monkeypatch: pytest.MonkeyPatch, triggers: set[str]) -> None:
    original = shape.build

    def build(inputs: shape.Inputs) -> shape.Report:
        built = original(inputs)
        if built["trigger"] in triggers:
            built["collectors"]["acme.forced"] = {"bad key": MARKER}
        return built

    monkeypatch.setattr(shape, "build", build)


def test_an_invalid_report_is_never_stored_or_sent_and_the_next_report_counts_it(
    counting_server: CountingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _force_invalid(monkeypatch, {"startup"})
    data = tmp_path / "data"
    traffic = counting_server.traffic
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
        assert traffic.bodies == []
        stored = stored_bytes(data)
        host.create_user("admin@example.com")
        settle(host)
        host.run_for(2 * 3600, step=600)
        settle(host)
        stored.update({f"later/{k}": v for k, v in stored_bytes(data).items()})
    stored.update({f"after/{k}": v for k, v in stored_bytes(data).items()})

    reports = [json.loads(body) for body in traffic.bodies]
    assert [r["trigger"] for r in reports][:2] == ["first_user", "periodic"]
    assert reports[0]["diagnostics"]["invalid_reports"] == 1
    assert all(r["diagnostics"]["invalid_reports"] == 0 for r in reports[1:])
    for name, blob in stored.items():
        assert MARKER.encode() not in blob, name
    assert all(MARKER.encode() not in body for body in traffic.bodies)
    errors = [r for r in caplog.records if "failed its schema" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR


def test_consecutive_invalid_reports_are_all_counted(
    counting_server: CountingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force_invalid(monkeypatch, {"startup", "first_user"})
    with running(make(config_of(phonehome_section(counting_server)), tmp_path / "data")) as host:
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
        host.run_for(2 * 3600, step=600)
        settle(host)

    first = json.loads(counting_server.traffic.bodies[0])
    assert first["trigger"] == "periodic"
    assert first["diagnostics"]["invalid_reports"] == 2
