"""Building reports from the state: totals, first email, privacy options, counters carried once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from e2e_support import NEXT_SLOT, Endpoint, make_host, phonehome_config, settle, tick


def test_first_email_outlives_the_first_user(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    first = host.create_user("admin@example.com")
    host.clock.advance(10)
    host.create_user("second@example.com")
    host.delete_user(first["id"])
    tick(host, NEXT_SLOT)
    latest = endpoint.reports[-1]
    assert latest["users"] == {"total": 1, "first_email": "admin@example.com"}
    host.shutdown()


def test_an_earlier_user_learned_of_later_becomes_the_first_email(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """The first email is the earliest-created user ever known, not the first one heard
    of: a user created before the stored one and learned of only at a later sync (here
    restored into the installation while the host was down) replaces it."""
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    tick(host)
    heard_first = host.create_user("later@example.com")
    settle(host)
    assert endpoint.reports[-1]["users"]["first_email"] == "later@example.com"
    later = host.restart()
    earlier = heard_first["created_at"] - timedelta(days=30)
    later.state.modules["users"]["usr-restored"] = {
        "id": "usr-restored",
        "email": "earlier@example.com",
        "created_at": earlier,
    }
    later.start()  # the users module syncs both
    tick(later)
    first_start, second_start = endpoint.by_trigger("startup")
    assert first_start["users"] == {"total": 0, "first_email": None}
    assert second_start["users"] == {"total": 2, "first_email": "earlier@example.com"}
    tick(later, NEXT_SLOT)
    assert endpoint.reports[-1]["users"]["first_email"] == "earlier@example.com"
    assert len(endpoint.by_trigger("first_user")) == 1  # the first-user report stays one
    later.shutdown()


def test_since_previous_report_counts_only_what_is_new(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    host.run_executions(30, ("completed", "failed", "cancelled"))
    tick(host)
    host.run_executions(7, ("completed",))
    tick(host, NEXT_SLOT)
    startup, periodic = endpoint.reports[0], endpoint.reports[-1]
    assert startup["executions"]["since_previous_report"]["total"] == 30
    assert periodic["executions"]["total"] == 37
    assert periodic["executions"]["since_previous_report"] == {
        "total": 7,
        "success": 7,
        "failure": 0,
        "success_rate": 1.0,
    }
    host.shutdown()


def test_privacy_hash_and_omit(endpoint: Endpoint, tmp_path: Path) -> None:
    privacy = {"email": "hash", "hostname": "omit", "public_ip": "hash"}
    host = make_host(phonehome_config(endpoint, privacy=privacy), tmp_path)
    host.start()
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    tick(host, NEXT_SLOT)
    host.shutdown()
    emails = {r["users"]["first_email"] for r in endpoint.reports[1:]}
    [digest] = emails
    assert digest.startswith("hmac-sha256:") and "admin" not in digest
    assert all(r["system"]["hostname"] is None for r in endpoint.reports)
    ips = {r["system"]["public_ip"] for r in endpoint.reports}
    assert len(ips) == 1 and "203.0.113.7" not in ips.pop()


def test_delivery_counts_ride_along_once(endpoint: Endpoint, tmp_path: Path) -> None:
    host = make_host(phonehome_config(endpoint, geoip_url=""), tmp_path)
    host.start()
    endpoint.status = 400  # final: the report is dropped and counted
    tick(host)
    endpoint.status = 202
    tick(host, NEXT_SLOT)
    tick(host, NEXT_SLOT)
    host.shutdown()
    first_after, second_after = endpoint.reports[1], endpoint.reports[2]
    assert first_after["diagnostics"]["delivery"]["rejected"] == 1
    assert first_after["diagnostics"]["delivery"]["dropped"] == 1
    assert second_after["diagnostics"]["delivery"]["rejected"] == 0
