"""The location lookup: one GET to geoip_url, cached a day, never breaking a report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from phonehome_plugin import location
from phonehome_plugin.store import Store, open_store

ANSWER = {
    "status": "success",
    "query": "198.51.100.4",
    "country": "Japan",
    "regionName": "Osaka",
    "city": "Osaka",
    "isp": "Example Fiber",
}
NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def test_success_fills_every_field(httpserver: HTTPServer, store: Store) -> None:
    httpserver.expect_request("/json").respond_with_json(ANSWER)
    found = location.lookup(httpserver.url_for("/json"), store, NOW)
    assert found == {
        "public_ip": "198.51.100.4",
        "country": "Japan",
        "city": "Osaka",
        "region": "Osaka",
        "isp": "Example Fiber",
    }


def test_cached_for_a_day_of_host_clock(httpserver: HTTPServer, store: Store) -> None:
    httpserver.expect_request("/json").respond_with_json(ANSWER)
    url = httpserver.url_for("/json")
    location.lookup(url, store, NOW)
    location.lookup(url, store, NOW + 86_000)
    assert len(httpserver.log) == 1
    location.lookup(url, store, NOW + 86_401)
    assert len(httpserver.log) == 2


def test_empty_url_means_no_request(httpserver: HTTPServer, store: Store) -> None:
    assert location.lookup("", store, NOW) == location.EMPTY
    assert httpserver.log == []


@pytest.mark.parametrize(
    "respond",
    [
        lambda s: s.respond_with_json({"status": "fail", "message": "private range"}),
        lambda s: s.respond_with_data("<html>captive portal</html>", content_type="text/html"),
        lambda s: s.respond_with_data("oops", status=500),
        lambda s: s.respond_with_json(["not", "an", "object"]),
    ],
)
def test_failures_leave_the_fields_empty(
    httpserver: HTTPServer, store: Store, respond: object
) -> None:
    respond(httpserver.expect_request("/json"))  # type: ignore[operator]
    assert location.lookup(httpserver.url_for("/json"), store, NOW) == location.EMPTY


def test_a_refused_connection_leaves_the_fields_empty(store: Store) -> None:
    assert location.lookup("http://127.0.0.1:9/json", store, NOW) == location.EMPTY


def test_a_hung_service_costs_at_most_the_timeout(
    httpserver: HTTPServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "TIMEOUT", (0.3, 0.3))

    def stall(request: Request) -> Response:
        time.sleep(1.0)  # the server's side of a hang; the client must give up first
        return Response("{}")

    httpserver.expect_request("/json").respond_with_handler(stall)
    started = time.monotonic()
    assert location.lookup(httpserver.url_for("/json"), store, NOW) == location.EMPTY
    assert time.monotonic() - started < location.TIMEOUT[1] + 1


def test_odd_values_are_dropped_field_by_field(httpserver: HTTPServer, store: Store) -> None:
    hostile = {
        **ANSWER,
        "query": "not an ip",
        "city": "<script>alert(1)</script>",
        "isp": "x" * 500,
        "regionName": "line\nbreak",
    }
    httpserver.expect_request("/json").respond_with_json(hostile)
    found = location.lookup(httpserver.url_for("/json"), store, NOW)
    assert found == {
        "public_ip": None,
        "country": "Japan",
        "city": None,
        "region": None,
        "isp": None,
    }
