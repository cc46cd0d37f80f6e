"""The location lookup: one GET to geoip_url, cached a day, never breaking a report."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultservers import Behaviour, Endless, FaultServer, Linger, Silent

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


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def test_success_fills_every_field(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        found = location.lookup(server.geoip_url, store, NOW)
    assert found == {
        "public_ip": "198.51.100.4",
        "country": "Japan",
        "city": "Osaka",
        "region": "Osaka",
        "isp": "Example Fiber",
    }


def test_cached_for_a_day_of_host_clock(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        url = server.geoip_url
        location.lookup(url, store, NOW)
        location.lookup(url, store, NOW + 86_000)
        assert server.geoip_requests == 1
        location.lookup(url, store, NOW + 86_401)
        assert server.geoip_requests == 2


def test_empty_url_means_no_request(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        assert location.lookup("", store, NOW) == location.EMPTY
        assert server.connections == 0


@pytest.mark.parametrize(
    "answer",
    [
        Linger(200, _json({"status": "fail", "message": "private range"})),
        Linger(200, b"<html>captive portal</html>", headers={"Content-Type": "text/html"}),
        Linger(500, b"oops", headers={"Content-Type": "text/plain; charset=utf-8"}),
        Linger(200, _json(["not", "an", "object"])),
    ],
    ids=["fail", "captive-portal", "500", "not-an-object"],
)
def test_failures_leave_the_fields_empty(store: Store, answer: Behaviour) -> None:
    with FaultServer(then=answer) as server:
        assert location.lookup(server.geoip_url, store, NOW) == location.EMPTY


def test_a_refused_connection_leaves_the_fields_empty(store: Store) -> None:
    assert location.lookup("http://127.0.0.1:9/json", store, NOW) == location.EMPTY


def test_a_hung_service_is_given_up_on_at_the_timeout(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "TIMEOUT", (0.3, 0.3))
    # The service reads the request and never answers: a lookup that returns at all
    # gave up at its timeout.
    with FaultServer(then=Silent()) as server:
        assert location.lookup(server.geoip_url, store, NOW) == location.EMPTY
        assert server.wait_for(lambda s: len(s.requests) == 1), "the request was made"


def test_odd_values_are_dropped_field_by_field(store: Store) -> None:
    hostile = {
        **ANSWER,
        "query": "not an ip",
        "city": "<script>alert(1)</script>",
        "isp": "x" * 500,
        "regionName": "line\nbreak",
    }
    with FaultServer(geoip=hostile) as server:
        found = location.lookup(server.geoip_url, store, NOW)
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


def test_an_answer_one_byte_over_the_limit_is_a_failure(store: Store) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT + 1 - len(padded))})
    assert len(body) == location.ANSWER_LIMIT + 1
    with FaultServer(then=Linger(200, body.encode())) as server:
        assert location.lookup(server.geoip_url, store, NOW) == location.EMPTY


def test_an_answer_at_the_limit_is_read(store: Store) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT - len(padded))})
    assert len(body) == location.ANSWER_LIMIT
    with FaultServer(then=Linger(200, body.encode())) as server:
        assert location.lookup(server.geoip_url, store, NOW)["city"] == "Osaka"


def test_a_compressed_answer_sent_anyway_is_a_failure(store: Store) -> None:
    compressed = gzip.compress(_json(ANSWER))
    with FaultServer(then=Linger(200, compressed, headers={"Content-Encoding": "gzip"})) as server:
        assert location.lookup(server.geoip_url, store, NOW) == location.EMPTY
