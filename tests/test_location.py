"""The location lookup: one GET to geoip_url, cached a day, never breaking a report."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultservers import Endless, FaultServer, Linger
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from phonehome_plugin.reports import location
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import Store

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


def test_a_hung_service_is_given_up_on_at_the_timeout(
    httpserver: HTTPServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "TIMEOUT", (0.3, 0.3))
    release = threading.Event()

    def stall(request: Request) -> Response:
        # Held until the lookup is over; a client that waited for this answer would
        # report a location, so an empty one proves it gave up first.
        release.wait(30)
        return Response(json.dumps(ANSWER), content_type="application/json")

    httpserver.expect_request("/json").respond_with_handler(stall)
    try:
        assert location.lookup(httpserver.url_for("/json"), store, NOW) == location.EMPTY
    finally:
        release.set()


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


# The answer's body: read to its end, never past the limit ---------------------------------


def test_the_answer_is_read_to_its_end_so_the_service_sees_a_clean_close(store: Store) -> None:
    with FaultServer(then=Linger(200, json.dumps(ANSWER).encode())) as server:
        found = location.lookup(f"http://127.0.0.1:{server.port}/json", store, NOW)
        assert found["public_ip"] == "198.51.100.4"
        assert server.wait_for(lambda s: len(s.endings) == 1)
        assert server.endings == ["eof"], "a clean close, not a reset"
        [seen] = server.requests
        assert seen.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_endless_answer_is_a_failure_cut_off_at_the_limit(store: Store, chunked: bool) -> None:
    with FaultServer(then=Endless(200, chunked=chunked)) as server:
        assert location.lookup(f"http://127.0.0.1:{server.port}/json", store, NOW) == (
            location.EMPTY
        )
        assert server.wait_for(lambda s: len(s.endings) == 1)
        assert server.endings == ["reset"], "hung up on, the rest left unread"


def test_an_answer_one_byte_over_the_limit_is_a_failure(
    httpserver: HTTPServer, store: Store
) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT + 1 - len(padded))})
    assert len(body) == location.ANSWER_LIMIT + 1
    httpserver.expect_request("/json").respond_with_data(body, content_type="application/json")
    assert location.lookup(httpserver.url_for("/json"), store, NOW) == location.EMPTY


def test_an_answer_at_the_limit_is_read(httpserver: HTTPServer, store: Store) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT - len(padded))})
    assert len(body) == location.ANSWER_LIMIT
    httpserver.expect_request("/json").respond_with_data(body, content_type="application/json")
    assert location.lookup(httpserver.url_for("/json"), store, NOW)["city"] == "Osaka"


def test_a_compressed_answer_sent_anyway_is_a_failure(
    httpserver: HTTPServer, store: Store
) -> None:
    httpserver.expect_request("/json").respond_with_data(
        gzip.compress(json.dumps(ANSWER).encode()),
        content_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )
    assert location.lookup(httpserver.url_for("/json"), store, NOW) == location.EMPTY
