"""docs/telemetry.md: generated from the report's JSON Schema, and kept so.

The committed page must be exactly what ``phonehome docs`` renders; its field table
must list every field path of the schema and no other (found here by walking the
schema independently, not with the generator's own walker); and it must name every
way to turn telemetry off that :mod:`phonehome_plugin.config.switch` implements, each of
which must really turn it off.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from phonehome_plugin.cli import telemetry_doc
from phonehome_plugin.config import switch
from phonehome_plugin.reports import schema

DOCS = Path(__file__).parents[1] / "docs" / "telemetry.md"
REGENERATE = "python -m phonehome_plugin docs > docs/telemetry.md"
ROW = re.compile(r"^\| `(?P<path>[^`]+)` \| (?P<kind>.*?) \| (?P<meaning>.*) \|$")


def schema_paths(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted field path the schema names (``properties``, at any depth)."""
    for name, sub in node.get("properties", {}).items():
        yield f"{prefix}{name}"
        yield from schema_paths(sub, f"{prefix}{name}.")


def documented_fields(page: str) -> dict[str, tuple[str, str]]:
    """The rows of the page's field table: path -> (type, meaning)."""
    table = page.split("\n## Fields\n", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        match = ROW.match(line)
        if match:
            assert match["path"] not in rows, f"{match['path']} is listed twice"
            rows[match["path"]] = (match["kind"], match["meaning"])
    return rows


@pytest.fixture(scope="module")
def page() -> str:
    return DOCS.read_text("utf-8")


def test_the_committed_page_is_what_the_schema_renders(page: str) -> None:
    assert page == telemetry_doc.render(), (
        f"docs/telemetry.md is out of date with the report schema; regenerate it with "
        f"`{REGENERATE}` and commit the result"
    )


def test_the_field_table_lists_every_schema_field_and_no_other(page: str) -> None:
    rows = documented_fields(page)
    expected = list(schema_paths(schema.load()))
    assert len(expected) > 60  # a real schema, walked to the leaves
    assert sorted(rows) == sorted(expected)
    assert list(rows) == expected, "in schema order"


def test_every_field_is_described_with_its_type_and_allowed_values(page: str) -> None:
    rows = documented_fields(page)
    root = schema.load()
    for path, (kind, meaning) in rows.items():
        node: Mapping[str, Any] = root
        for part in path.split("."):
            node = node["properties"][part]
        assert meaning and meaning == " ".join(node["description"].split()), path
        for value in node.get("enum", []):
            assert ("null" if value is None else f"`{value}`") in kind, (path, value)
        if "const" in node:
            assert f"`{node['const']}`" in kind
        types = node.get("type", [])
        for name in [types] if isinstance(types, str) else types:
            assert name in kind or kind == "map", (path, name)


def test_no_description_breaks_the_table() -> None:
    for path, _, meaning in telemetry_doc.fields(schema.load()):
        assert "|" not in meaning and "\n" not in meaning, path


# Turning it off ------------------------------------------------------------------------


def _off_section(page: str) -> str:
    return page.split("## Turning it off", 1)[1].split("\n## ", 1)[0]


def test_the_page_names_every_way_to_turn_telemetry_off(page: str) -> None:
    off = _off_section(page)
    variables = [value for name, value in vars(switch).items() if name.startswith("ENV_")]
    assert {switch.ENV_DNT, switch.ENV_ENABLED} <= set(variables)
    for variable in variables:
        assert f"`{variable}=" in off, f"{variable} turns telemetry off but is not documented"
    assert f"{switch.ENV_ENABLED}=false" in off
    assert "enabled: false" in off
    assert "invalid" in off and "modules.phonehome" in off, "a broken section leaves it off"
    assert "any value but empty, `0` or `false`" in off


def test_every_way_the_page_names_really_turns_telemetry_off(page: str) -> None:
    off = _off_section(page)
    env_settings = re.findall(r"`([A-Z_]+)=([^`]+)`", off)
    assert {name for name, _ in env_settings} == {switch.ENV_DNT, switch.ENV_ENABLED}
    for name, value in env_settings:
        decision = switch.resolve({}, {name: value})
        assert not decision.on, f"{name}={value} as documented"
        assert name in decision.reason
    [snippet] = re.findall(r"`(modules: \{[^`]*\})`", off)
    config = yaml.safe_load(snippet)
    decision = switch.resolve(config, {})
    assert not decision.on and "enabled is false" in decision.reason
    assert switch.resolve({"modules": {"phonehome": {"enabeld": False}}}, {}).on is False


def test_the_documented_dnt_values_that_leave_telemetry_on(page: str) -> None:
    for value in ("", "0", "false"):
        assert switch.resolve({}, {switch.ENV_DNT: value}).on, f"DO_NOT_TRACK={value!r}"
    assert not switch.resolve({}, {switch.ENV_DNT: "yes"}).on


def test_the_page_says_where_reports_go_and_how_to_check_them(page: str) -> None:
    from phonehome_plugin.config.settings import DEFAULT_ENDPOINT, DEFAULT_GEOIP_URL

    assert DEFAULT_ENDPOINT in page and DEFAULT_GEOIP_URL in page
    assert "Idempotency-Key" in page
    for command in ("status", "preview", "history", "export", "schema"):
        assert f"`phonehome {command}" in page
    for mode in ("`log`", "`offline`"):
        assert mode in page
    for option in ("`send`", "`hash`", "`omit`"):
        assert option in page


# Sections and settings -------------------------------------------------------------------


def test_the_page_lists_every_section_with_what_it_can_hold(page: str) -> None:
    part = page.split("\n## Sections\n", 1)[1].split("\n## ", 1)[0]
    root = schema.load()
    objects = [name for name, node in root["properties"].items() if node.get("type") == "object"]
    assert {"system", "location", "collectors", "diagnostics"} <= set(objects)
    for name in objects:
        description = " ".join(root["properties"][name]["description"].split())
        assert f"| `{name}` |" in part and description in part, name
    assert "| `location` | unless switched off |" in part
    # The third-party section: what one collector's section can hold, from $defs.
    assert "`collectors.<name>`" in part
    assert root["$defs"]["leaf"]["description"][1:] in part
    assert root["$defs"]["section"]["description"][1:] in part


def test_the_page_documents_every_privacy_and_category_setting(page: str) -> None:
    from phonehome_plugin.config.settings import Settings, effective

    keys = [key for key, _ in effective(Settings()) if key.startswith(("privacy.", "categories."))]
    assert "privacy.location" in keys and "categories.collectors.deny" in keys
    chosen = page.split("## Choosing what is sent", 1)[1].split("\n## ", 1)[0]
    for key in keys:
        assert f"| `{key}` |" in chosen, key
    assert "| `categories.collectors` |" in chosen, "the whole-section switch"
    for option in ("`send`", "`country`", "`omit`"):
        assert option in chosen


def test_the_page_says_what_the_location_service_sees(page: str) -> None:
    part = page.split("### The location lookup", 1)[1].split("\n## ", 1)[0]
    for said in ("public IP", "User-Agent", "https://pro.ip-api.com", "no lookup is made"):
        assert said in part, said
    for relay in ("prerelease_endpoint", "`headers`", "client_cert", "401, 403 or 407"):
        assert relay in page, relay


def test_the_page_names_the_user_agent_the_transport_sends() -> None:
    from phonehome_plugin import __version__
    from phonehome_plugin.delivery.transport import USER_AGENT

    assert telemetry_doc.USER_AGENT.replace("<version>", __version__) == USER_AGENT
