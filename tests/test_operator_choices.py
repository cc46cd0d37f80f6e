"""What the operator switched off stays off, end to end: ``omit`` makes no lookup at all
(counted at the lookup server), a denied collector's section is absent and named in the
report's diagnostics, and the system details go when they are switched off.

The plugin is loaded through its entry point by the simulated host, with a third-party
distribution installed as real metadata (``acme_distribution``: collectors
``acme.counter`` and ``acme.broken``), reporting to the project's fault server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e_support import GEOIP, Endpoint, make_host, phonehome_config, settle, tick

from phonehome_plugin.reports import schema, shape


def run(endpoint: Endpoint, data_dir: Path, hours: int = 0, **extra: Any) -> list[dict[str, Any]]:
    """A host start with ``extra`` in its phonehome section, its startup report, then
    ``hours`` of periodic ones; every report, in arrival order."""
    host = make_host(phonehome_config(endpoint, **extra), data_dir)
    host.start()
    tick(host)
    for _ in range(hours):
        host.run_for(3600, step=600)
    settle(host)
    host.shutdown()
    reports = endpoint.reports
    assert reports and all(schema.errors(report) == [] for report in reports)
    return reports


# omit: no lookup at all ----------------------------------------------------------------


def test_location_omit_makes_zero_lookups_and_sends_no_location(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    reports = run(endpoint, tmp_path / "data", hours=3, privacy={"location": "omit"})
    assert len(reports) >= 3
    assert endpoint.server.geoip_requests == 0, "the lookup server saw nothing"
    for report in reports:
        assert "location" not in report
        assert report["system"]["public_ip"] is None
        assert report["diagnostics"]["switched_off"] == ["location"]


def test_public_ip_omit_makes_zero_lookups_too(endpoint: Endpoint, tmp_path: Path) -> None:
    reports = run(endpoint, tmp_path / "data", hours=2, privacy={"public_ip": "omit"})
    assert endpoint.server.geoip_requests == 0
    for report in reports:
        assert report["system"]["public_ip"] is None
        assert set(report["location"].values()) == {None}, "nothing looked up"
        assert report["diagnostics"]["switched_off"] == []


def test_location_country_sends_the_country_alone(endpoint: Endpoint, tmp_path: Path) -> None:
    [report] = run(endpoint, tmp_path / "data", privacy={"location": "country"})
    assert endpoint.server.geoip_requests == 1
    assert report["location"] == {
        "country": GEOIP["country"],
        "city": None,
        "region": None,
        "isp": None,
    }
    assert report["system"]["public_ip"] == GEOIP["query"]


def test_by_default_the_location_is_looked_up_once_a_day(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    reports = run(endpoint, tmp_path / "data", hours=2)
    assert endpoint.server.geoip_requests == 1
    assert all(r["location"]["city"] == GEOIP["city"] for r in reports)
    assert all(r["diagnostics"]["switched_off"] == [] for r in reports)


# Collector sections ----------------------------------------------------------------------


def test_a_denied_collectors_section_is_absent_and_named_in_diagnostics(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    [report] = run(
        endpoint, tmp_path / "data", categories={"collectors": {"deny": ["acme.counter"]}}
    )
    assert "acme.counter" not in report["collectors"]
    assert report["diagnostics"]["switched_off"] == ["collectors.acme.counter"]
    # The other collector is not switched off: its error is still told.
    assert "acme.broken" in report["diagnostics"]["collector_errors"]


@pytest.mark.parametrize(
    "collectors",
    [False, {"deny": ["acme.*"]}, {"allow": ["other.*"]}],
    ids=["false", "deny-glob", "allow-other"],
)
def test_third_party_sections_can_be_switched_off_as_a_whole(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path, collectors: Any
) -> None:
    [report] = run(endpoint, tmp_path / "data", categories={"collectors": collectors})
    assert report["collectors"] == {}
    assert report["diagnostics"]["collector_errors"] == {}, "a switched-off error is gone too"
    assert report["diagnostics"]["switched_off"] == [
        "collectors.acme.broken",
        "collectors.acme.counter",
    ]


def test_an_allowed_collector_still_reports(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    [report] = run(
        endpoint, tmp_path / "data", categories={"collectors": {"allow": ["acme.count*"]}}
    )
    assert report["collectors"] == {"acme.counter": {"saves": 0, "by_type": {}}}
    assert report["diagnostics"]["switched_off"] == ["collectors.acme.broken"]


# System details ---------------------------------------------------------------------------


def test_system_details_switched_off_leave_the_pages_examples(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    [report] = run(endpoint, tmp_path / "data", categories={"system_details": False})
    system = report["system"]
    for detail in shape.DETAILS:
        assert detail not in system, detail
    for kept in ("version", "os", "arch", "hostname", "public_ip", "prerelease", "ci"):
        assert kept in system, kept
    assert system["public_ip"] == GEOIP["query"]
    assert report["diagnostics"]["switched_off"] == ["system_details"]


def test_everything_switched_off_at_once_is_named_in_order(
    endpoint: Endpoint, acme_distribution: Path, tmp_path: Path
) -> None:
    [report] = run(
        endpoint,
        tmp_path / "data",
        privacy={"location": "omit"},
        categories={"system_details": False, "collectors": {"deny": ["acme.broken"]}},
    )
    assert report["diagnostics"]["switched_off"] == [
        "location",
        "system_details",
        "collectors.acme.broken",
    ]
    assert endpoint.server.geoip_requests == 0
