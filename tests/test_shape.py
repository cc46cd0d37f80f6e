"""Tests for :mod:`phonehome_plugin.reports.shape`: ids, times, execution summaries,
privacy, bytes, and its types held equal to the published schema."""

from __future__ import annotations

import json
import types
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from phonehome_plugin.counting import inventory as inventory_module
from phonehome_plugin.counting.inventory import Inventory, pipeline_value
from phonehome_plugin.counting.tally import STATUSES
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports import schema, shape, system
from phonehome_plugin.reports.shape import Inputs

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
SALT = bytes(range(32))
DIAGNOSTICS: shape.Diagnostics = {
    **shape.no_diagnostics(),
    "collector_errors": {"acme.broken": "collect() raised ValueError"},
    "suppressed_startups": 2,
}


def _zeros() -> shape.ByStatus:
    return {"completed": 0, "failed": 0, "completed_with_errors": 0, "cancelled": 0, "unknown": 0}


@pytest.fixture
def inventory() -> Inventory:
    inv = Inventory()
    inv.connections.save("c1", "mqtt")
    inv.connections.save("c2", "opcua")
    inv.pipelines.save("p1", pipeline_value(True, ["trigger.manual", "action.http"]))
    inv.users.save("u1", (T0, "alice@example.com"))
    inv.organizations.save("o1")
    inv.data_models.save("d1")
    inv.data_models.save("d2")
    inv.uns = {
        "topic_count": 10,
        "client_count": 2,
        "mqtt_mode": "embedded",
        "storage_mode": "pebble",
    }
    inv.license = {"id": "LIC-1", "status": "trial"}
    return inv


def _inputs(inventory: Inventory, **overrides: Any) -> Inputs:
    values: dict[str, Any] = {
        "instance_id": "inst-1",
        "sequence": 7,
        "trigger": "periodic",
        "now": T0 + timedelta(hours=5, milliseconds=250),
        "started_at": T0,
        "system": {"version": "2.3.0", "hostname": "plant-7", "public_ip": "203.0.113.5"},
        "location": {"country": "DE", "city": "Berlin", "region": "BE", "isp": "ISP", "lat": 52.5},
        "inventory": inventory,
        "first_email": "alice@example.com",
        "executions": {},
        "executions_before": {},
    }
    values.update(overrides)
    return Inputs(**values)


# report_id ------------------------------------------------------------------------------


def test_report_id_is_a_uuid_version_7() -> None:
    value = shape.report_id(T0)
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical, lower-case, hyphenated
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0 + timedelta(milliseconds=1),
        T0 + timedelta(microseconds=999_999),
        datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2024, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_report_id_carries_the_unix_millisecond_of_now(moment: datetime) -> None:
    millis = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert uuid.UUID(shape.report_id(moment)).int >> 80 == millis


def test_report_ids_sort_by_time() -> None:
    moments = [T0 + timedelta(milliseconds=ms) for ms in (0, 1, 2, 999, 1000, 60_000, 86_400_000)]
    for _ in range(20):
        ids = [shape.report_id(moment) for moment in moments]
        assert ids == sorted(ids)


def test_report_ids_are_unique_even_in_one_millisecond() -> None:
    ids = {shape.report_id(T0) for _ in range(20_000)}
    assert len(ids) == 20_000


def test_report_id_random_bits_vary() -> None:
    values = [uuid.UUID(shape.report_id(T0)).int for _ in range(200)]
    rand_a = {(v >> 64) & 0xFFF for v in values}
    rand_b = {v & (2**62 - 1) for v in values}
    assert len(rand_a) > 100
    assert len(rand_b) == 200


# iso ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (T0, "2024-06-01T12:00:00.000Z"),
        (T0 + timedelta(microseconds=123_999), "2024-06-01T12:00:00.123Z"),
        (
            datetime(2024, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
            "2024-06-01T12:30:00.000Z",
        ),
        (
            datetime(2024, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2024-01-01T05:00:00.000Z",
        ),
    ],
)
def test_iso_is_utc_with_z_to_the_millisecond(moment: datetime, expected: str) -> None:
    assert shape.iso(moment) == expected


# executions -----------------------------------------------------------------------------


def test_success_counts_completed_and_failure_counts_failed_and_partial(
    inventory: Inventory,
) -> None:
    totals = {
        "completed": 6,
        "failed": 2,
        "completed_with_errors": 1,
        "cancelled": 5,
        "unknown": 3,
    }
    section = shape.executions(_inputs(inventory, executions=totals))
    assert section["total"] == 17
    assert section["success"] == 6
    assert section["failure"] == 3
    assert section["success_rate"] == round(6 / 9, 6)
    assert section["by_status"] == totals


def test_cancelled_counts_only_in_the_total(inventory: Inventory) -> None:
    base = {"completed": 3, "failed": 1}
    plain = shape.executions(_inputs(inventory, executions=base))
    cancelled = shape.executions(_inputs(inventory, executions={**base, "cancelled": 50}))
    assert cancelled["total"] == plain["total"] + 50
    for key in ("success", "failure", "success_rate"):
        assert cancelled[key] == plain[key]
    assert cancelled["success_rate"] == 0.75


@pytest.mark.parametrize(
    "totals", [{}, {"cancelled": 4}, {"unknown": 2}, {"cancelled": 1, "unknown": 1}]
)
def test_success_rate_is_none_when_nothing_was_decided(
    inventory: Inventory, totals: dict[str, int]
) -> None:
    section = shape.executions(_inputs(inventory, executions=totals))
    assert section["success_rate"] is None
    assert section["success"] == section["failure"] == 0
    assert section["total"] == sum(totals.values())


@pytest.mark.parametrize(
    ("totals", "rate"),
    [
        ({"completed": 5}, 1.0),
        ({"failed": 5}, 0.0),
        ({"completed_with_errors": 1}, 0.0),
        ({"completed": 1, "failed": 2}, 0.333333),
        ({"completed": 2, "failed": 1}, 0.666667),
    ],
)
def test_success_rate_values(inventory: Inventory, totals: dict[str, int], rate: float) -> None:
    assert shape.executions(_inputs(inventory, executions=totals))["success_rate"] == rate


def test_since_previous_report_is_the_difference_never_negative(inventory: Inventory) -> None:
    section = shape.executions(
        _inputs(
            inventory,
            executions={"completed": 10, "failed": 4, "cancelled": 2},
            executions_before={"completed": 7, "failed": 5, "cancelled": 2, "other": 9},
        )
    )
    assert section["since_previous_report"] == {
        "total": 3,
        "success": 3,
        "failure": 0,
        "success_rate": 1.0,
    }
    assert section["by_status"] == {**_zeros(), "completed": 10, "failed": 4, "cancelled": 2}


def test_by_status_lists_every_status_and_ignores_unknown_keys(inventory: Inventory) -> None:
    section = shape.executions(_inputs(inventory, executions={"bogus": 9, "failed": 1}))
    assert section["by_status"] == {**_zeros(), "failed": 1}
    assert section["total"] == 1


def test_uptime_is_whole_seconds_since_start_and_never_negative(inventory: Inventory) -> None:
    section = shape.executions(_inputs(inventory))
    assert section["uptime_seconds"] == 5 * 3600
    early = shape.executions(_inputs(inventory, now=T0 - timedelta(seconds=30)))
    assert early["uptime_seconds"] == 0


def test_summary_directly() -> None:
    assert shape.summary(_zeros()) == {
        "total": 0,
        "success": 0,
        "failure": 0,
        "success_rate": None,
    }


# build ----------------------------------------------------------------------------------


def test_build_fills_every_top_level_field_from_its_source(inventory: Inventory) -> None:
    inputs = _inputs(
        inventory,
        executions={"completed": 2},
        collectors={"acme.historian": {"series": 1}},
        diagnostics=DIAGNOSTICS,
    )
    built = shape.build(inputs)
    assert list(built) == [
        "schema_version",
        "report_id",
        "instance_id",
        "sequence",
        "trigger",
        "generated_at",
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
    ]
    assert built["schema_version"] == shape.SCHEMA_VERSION
    assert uuid.UUID(built["report_id"]).int >> 80 == int(inputs.now.timestamp() * 1000)
    assert (built["instance_id"], built["sequence"], built["trigger"]) == ("inst-1", 7, "periodic")
    assert built["generated_at"] == "2024-06-01T17:00:00.250Z"
    assert built["system"] == inputs.system
    assert built["license"] == {"id": "LIC-1", "status": "trial"}
    assert built["users"] == {"total": 1, "first_email": "alice@example.com"}
    # Only the allowlisted location keys, not everything the lookup returned.
    assert built["location"] == {"country": "DE", "city": "Berlin", "region": "BE", "isp": "ISP"}
    assert built["connections"] == {"total": 2, "by_type": {"mqtt": 1, "opcua": 1}}
    assert built["pipelines"] == {
        "total": 1,
        "enabled": 1,
        "nodes_by_type": {"action.http": 1, "trigger.manual": 1},
    }
    assert built["uns"] == inventory.uns
    assert built["executions"]["success"] == 2
    assert built["other"] == {"organizations": 1, "data_models": 2}
    assert built["collectors"] == {"acme.historian": {"series": 1}}
    assert built["diagnostics"] == DIAGNOSTICS
    assert built["diagnostics"] is not DIAGNOSTICS


def test_build_copies_rather_than_shares_its_inputs(inventory: Inventory) -> None:
    inputs = _inputs(inventory)
    built = shape.build(inputs)
    built["system"]["hostname"] = "changed"
    assert inputs.system["hostname"] == "plant-7"


def test_build_of_an_empty_inventory_has_nulls_not_gaps() -> None:
    built = shape.build(_inputs(Inventory(), first_email=None, location={}))
    assert built["license"] == {"id": None, "status": None}
    assert built["uns"] == dict.fromkeys(
        ("topic_count", "client_count", "mqtt_mode", "storage_mode")
    )
    assert built["location"] == dict.fromkeys(("country", "city", "region", "isp"))
    assert built["users"] == {"total": 0, "first_email": None}


def test_every_trigger_is_listed() -> None:
    assert shape.TRIGGERS == ("startup", "first_user", "periodic")


# apply_privacy --------------------------------------------------------------------------


def _identifying() -> shape.Report:
    # Not a whole report: only the two sections apply_privacy works on, and of them
    # only some fields, so that the tests show it touches nothing else.
    return cast(
        shape.Report,
        {
            "users": {"total": 1, "first_email": "alice@example.com"},
            "system": {"hostname": "plant-7", "public_ip": "203.0.113.5", "os": "Linux"},
        },
    )


def test_apply_privacy_send_leaves_values_alone() -> None:
    built = _identifying()
    shape.apply_privacy(built, {"email": "send", "hostname": "send", "public_ip": "send"}, SALT)
    assert built == _identifying()


def test_apply_privacy_defaults_to_send_for_missing_choices() -> None:
    built = _identifying()
    shape.apply_privacy(built, {}, SALT)
    assert built == _identifying()


def test_apply_privacy_hash_replaces_with_the_keyed_hash() -> None:
    built = _identifying()
    shape.apply_privacy(built, {"email": "hash", "hostname": "hash", "public_ip": "hash"}, SALT)
    assert built["users"]["first_email"] == privacy.pseudonym("alice@example.com", SALT)
    assert built["system"]["hostname"] == privacy.pseudonym("plant-7", SALT)
    assert built["system"]["public_ip"] == privacy.pseudonym("203.0.113.5", SALT)
    assert built["system"]["os"] == "Linux"
    assert built["users"]["total"] == 1
    assert "alice" not in json.dumps(built)


def test_apply_privacy_omit_nulls_the_field() -> None:
    built = _identifying()
    shape.apply_privacy(built, {"email": "omit", "hostname": "send", "public_ip": "omit"}, SALT)
    assert built == {
        "users": {"total": 1, "first_email": None},
        "system": {"hostname": "plant-7", "public_ip": None, "os": "Linux"},
    }


def test_apply_privacy_leaves_missing_values_missing() -> None:
    partial: dict[str, Any] = {"users": {"first_email": None}, "system": {}}
    shape.apply_privacy(
        cast(shape.Report, partial),
        {"email": "hash", "hostname": "hash", "public_ip": "omit"},
        SALT,
    )
    assert partial == {"users": {"first_email": None}, "system": {}}


def test_apply_privacy_on_a_built_report(inventory: Inventory) -> None:
    built = shape.build(_inputs(inventory))
    shape.apply_privacy(built, {"email": "hash", "hostname": "omit", "public_ip": "send"}, SALT)
    email = built["users"]["first_email"]
    assert email is not None and email.startswith("hmac-sha256:")
    assert built["system"]["hostname"] is None
    assert built["system"]["public_ip"] == "203.0.113.5"


# encode ---------------------------------------------------------------------------------


def test_encode_is_compact_utf8_json_in_built_order() -> None:
    value = {"b": 1, "a": [1, 2], "c": {"z": None, "y": True}, "city": "Zürich"}
    body = shape.encode(value)
    assert body == '{"b":1,"a":[1,2],"c":{"z":null,"y":true},"city":"Zürich"}'.encode()
    assert json.loads(body) == value


def test_encode_refuses_nan_and_infinity() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        shape.encode({"rate": float("nan")})
    with pytest.raises(ValueError, match="JSON compliant"):
        shape.encode({"rate": float("inf")})


def test_encode_round_trips_a_built_report(inventory: Inventory) -> None:
    built = shape.build(_inputs(inventory, executions={"completed": 1}))
    body = shape.encode(built)
    assert json.loads(body) == built
    assert b": " not in body
    assert b", " not in body
    assert b"\n" not in body


# The types and the published schema ------------------------------------------------------

JSON_TYPES: dict[object, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}


def _alternatives(hint: object) -> list[object]:
    """The members of a union (``X | None``), else the hint itself."""
    if get_origin(hint) in (Union, types.UnionType):
        return list(get_args(hint))
    return [hint]


def _mismatches(hint: object, rule: Mapping[str, Any], path: str) -> Iterator[str]:
    """How the type ``hint`` and the schema's ``rule`` for ``path`` disagree."""
    if "$ref" in rule:  # "#/$defs/name" only: the report schema uses no other
        rule = schema.load()["$defs"][rule["$ref"].removeprefix("#/$defs/")]
    if is_typeddict(hint):
        assert isinstance(hint, type)
        yield from _typeddict_mismatches(hint, rule, path)
    elif "properties" in rule:
        yield f"{path}: the schema lists properties, the type is {hint} (no TypedDict)"
    elif "const" in rule or "enum" in rule:
        yield from _literal_mismatches(hint, rule, path)
    else:
        yield from _type_mismatches(hint, rule, path)


def _typeddict_mismatches(hint: type, rule: Mapping[str, Any], path: str) -> Iterator[str]:
    hints = get_type_hints(hint)
    properties = rule.get("properties", {})
    if rule.get("type") != "object" or rule.get("additionalProperties") is not False:
        yield f"{path}: the type is a closed TypedDict, the schema no closed object"
    if list(hints) != list(properties):
        yield f"{path}: the type has keys {list(hints)}, the schema {list(properties)}"
    required = set(rule.get("required", ()))
    typed_required: frozenset[str] = vars(hint)["__required_keys__"]  # set by TypedDict
    if typed_required != required:
        yield (
            f"{path}: the type requires {sorted(typed_required)}, the schema {sorted(required)}"
        )
    for key in hints.keys() & properties.keys():
        yield from _mismatches(hints[key], properties[key], f"{path}.{key}")


def _literal_mismatches(hint: object, rule: Mapping[str, Any], path: str) -> Iterator[str]:
    """A ``const`` or ``enum`` rule: the type is a Literal of exactly those values."""
    allowed = [rule["const"]] if "const" in rule else rule["enum"]
    values: list[object] = []
    for option in _alternatives(hint):
        if get_origin(option) is Literal:
            values.extend(get_args(option))
        elif option is type(None):
            values.append(None)
        else:
            yield f"{path}: the type allows any {option}, the schema exactly {allowed}"
    if sorted(map(repr, values)) != sorted(map(repr, allowed)):
        yield f"{path}: the type allows {values}, the schema {allowed}"


def _type_mismatches(hint: object, rule: Mapping[str, Any], path: str) -> Iterator[str]:
    """A ``type`` rule: the type's members are those JSON types; a dict's values match
    the rule of ``additionalProperties`` (unless typed ``Any``: a collector's section)."""
    said = rule.get("type")
    expected = {said} if isinstance(said, str) else set(said or ())
    found = set()
    for option in _alternatives(hint):
        if get_origin(option) is list:
            found.add("array")
            [item_type] = get_args(option)
            if isinstance(rule.get("items"), Mapping):
                yield from _mismatches(item_type, rule["items"], f"{path}[]")
        elif get_origin(option) is dict:
            found.add("object")
            key_type, value_type = get_args(option)
            values = rule.get("additionalProperties")
            if key_type is not str:
                yield f"{path}: keys of {option} are not str"
            if value_type is not Any and isinstance(values, Mapping):
                yield from _mismatches(value_type, values, f"{path}.*")
        else:
            found.add(JSON_TYPES.get(option, repr(option)))
    if found != expected:
        yield f"{path}: the type is {hint} ({sorted(found)}), the schema says {sorted(expected)}"


def test_the_report_types_are_the_published_schema() -> None:
    """Every object of report.schema.json with properties is a TypedDict of the same keys,
    in the same order, with the same required keys and matching value types."""
    assert list(_mismatches(shape.Report, schema.load(), "$")) == []


def test_the_type_check_against_the_schema_sees_a_difference() -> None:
    rule = schema.load()["properties"]["other"]
    assert list(_mismatches(shape.OtherSection, rule, "$")) == []
    looser = {**rule, "required": ["organizations"]}
    assert list(_mismatches(shape.OtherSection, looser, "$")) == [
        "$: the type requires ['data_models', 'organizations'], the schema ['organizations']"
    ]
    grown = {**rule, "properties": {**rule["properties"], "projects": {"type": "integer"}}}
    assert len(list(_mismatches(shape.OtherSection, grown, "$"))) == 1
    retyped = {**rule, "properties": {**rule["properties"], "data_models": {"type": "string"}}}
    assert list(_mismatches(shape.OtherSection, retyped, "$")) == [
        "$.data_models: the type is <class 'int'> (['integer']), the schema says ['string']"
    ]
    narrower = schema.load()["properties"]["license"]
    narrower = {
        **narrower,
        "properties": {**narrower["properties"], "status": {"enum": ["trial", None]}},
    }
    assert len(list(_mismatches(shape.LicenseSection, narrower, "$"))) == 1


def test_the_literal_types_list_what_the_constants_do() -> None:
    assert get_args(shape.Trigger) == shape.TRIGGERS
    assert get_args(shape.Edition) == shape.EDITIONS
    assert list(get_type_hints(shape.ByStatus)) == [*STATUSES, "unknown"]
    assert list(shape.by_status(lambda status: 0)) == [*STATUSES, "unknown"]


def test_the_parts_of_the_system_section_make_it_up() -> None:
    host, machine = get_type_hints(system.HostFacts), get_type_hints(system.MachineFacts)
    whole = get_type_hints(shape.SystemSection)
    assert {**host, **machine, "public_ip": whole["public_ip"]} == whole


def test_the_inventory_snapshots_are_the_report_sections() -> None:
    assert get_type_hints(inventory_module.TypeCounts) == get_type_hints(shape.ConnectionsSection)
    assert get_type_hints(inventory_module.PipelineCounts) == get_type_hints(
        shape.PipelinesSection
    )


def test_no_diagnostics_is_valid_and_all_zero() -> None:
    value = shape.no_diagnostics()
    rule = schema.load()["properties"]["diagnostics"]
    assert schema.errors(value, rule) == []
    assert value["delivery"] == dict.fromkeys(get_type_hints(shape.Delivery), 0)
    assert shape.no_diagnostics() is not value


def test_an_open_vocabulary_keeps_its_largest_entries_and_sums_the_rest_as_other() -> None:
    counts = {f"node.t{n:05d}": 1 for n in range(10_000)} | {"trigger.manual": 50, "other": 3}
    kept = shape.capped(counts)
    assert len(kept) == shape.VOCABULARY_MAX
    assert kept["trigger.manual"] == 50
    assert sum(kept.values()) == sum(counts.values())  # nothing lost: summed into other
    assert shape.capped({"a.b": 1}) == {"a.b": 1}


def test_third_party_sections_share_a_bounded_number_of_keys() -> None:
    sections = {f"acme.c{n}": {f"k{i:03d}": i for i in range(200)} for n in range(50)}
    kept, left_out = shape.trimmed_sections(sections)
    assert sum(len(s) for s in kept.values()) == shape.COLLECTOR_KEYS_MAX
    assert left_out == 50 * 200 - shape.COLLECTOR_KEYS_MAX
    assert all(list(s) == [f"k{i:03d}" for i in range(40)] for s in kept.values())
    small = {"acme.one": {"x": 1}}
    assert shape.trimmed_sections(small) == (small, 0)
