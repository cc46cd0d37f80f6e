"""The location lookup: one GET to geoip_url through the plugin's one way out (proxy, CA
bundle, User-Agent, deadline), cached a day, never breaking a report, and made only
as far as the operator's privacy choices allow."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultservers import (
    Behaviour,
    Endless,
    FaultServer,
    Linger,
    Proxy,
    Silent,
    Tls,
    Trickle,
    make_tls,
)

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.delivery.transport import USER_AGENT, Transport
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
FOUND = {
    "public_ip": "198.51.100.4",
    "country": "Japan",
    "city": "Osaka",
    "region": "Osaka",
    "isp": "Example Fiber",
}
NOW = 1_800_000_000.0
HANG = 30.0
"""Seconds after which a lookup that should have ended counts as hung (a hang detector)."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def settings(url: str, **options: Any) -> Settings:
    """Settings that look the location up at ``url``; ``location=``/``public_ip=`` set
    those privacy choices."""
    privacy = {
        "email": "send",
        "hostname": "send",
        "public_ip": options.pop("public_ip", "send"),
        "location": options.pop("location", "send"),
    }
    return Settings(geoip_url=url, privacy=privacy, **options)


def find(url: str, store: Store, **options: Any) -> dict[str, Any]:
    return location.lookup(settings(url, **options), store, NOW)


class Moved:
    """The deadline's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Looking:
    """One lookup on a thread of its own, so that the test can move its clock."""

    def __init__(self, chosen: Settings, store: Store, clock: Moved) -> None:
        self.found: dict[str, Any] | None = None
        transport = Transport.for_lookup(chosen, clock=clock)
        self._thread = threading.Thread(
            target=self._run, args=(chosen, store, transport), daemon=True
        )
        self._thread.start()

    def _run(self, chosen: Settings, store: Store, transport: Transport) -> None:
        self.found = location.lookup(chosen, store, NOW, transport=transport)

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> dict[str, Any] | None:
        self._thread.join(HANG)
        assert not self._thread.is_alive(), "the lookup did not end"
        return self.found


def test_success_fills_every_field(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        assert find(server.geoip_url, store) == FOUND


def test_the_request_names_the_plugin_and_carries_nothing_of_the_relays(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        relay = {"X-Relay-Token": "relay-secret", "Authorization": "Bearer relay-secret"}
        assert find(server.geoip_url, store, headers=relay) == FOUND
        [seen] = server.requests
    assert seen.headers["user-agent"] == USER_AGENT
    assert "relay-secret" not in json.dumps(seen.headers)
    assert "x-relay-token" not in seen.headers and "authorization" not in seen.headers


def test_the_lookup_transport_has_no_relay_settings(tmp_path: Path) -> None:
    chosen = settings(
        "https://geo.example/json",
        headers={"X-Relay-Token": "t"},
        client_cert=tmp_path / "missing.pem",
    )
    transport = Transport.for_lookup(chosen)
    assert transport.settings.headers == {}
    assert (transport.settings.client_cert, transport.settings.client_key) == (None, None)
    assert transport.relay_problem is None, "the relay's certificate is not the lookup's"
    assert transport.settings.geoip_url == chosen.geoip_url


def test_cached_for_a_day_of_host_clock(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        url = server.geoip_url
        location.lookup(settings(url), store, NOW)
        location.lookup(settings(url), store, NOW + 86_000)
        assert server.geoip_requests == 1
        location.lookup(settings(url), store, NOW + 86_401)
        assert server.geoip_requests == 2


def test_the_cache_never_holds_the_url_or_its_key(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        url = f"{server.geoip_url}?key=SECRET-GEO-KEY&fields=status,query"
        assert find(url, store) == FOUND
        raw = store.get(location.CACHE_KEY)
        assert raw is not None
        assert "SECRET-GEO-KEY" not in raw and "127.0.0.1" not in raw
        assert find(url, store) == FOUND
        assert server.geoip_requests == 1, "found in the cache by its digest"


def test_an_earlier_versions_entry_with_the_url_is_emptied_even_when_the_lookup_fails(
    store: Store,
) -> None:
    url = "http://127.0.0.1:9/json?key=SECRET-GEO-KEY"
    store.set(location.CACHE_KEY, json.dumps({"url": url, "at": NOW, "value": FOUND}))
    assert find(url, store) == location.EMPTY, "nothing listens on port 9"
    assert "SECRET" not in (store.get(location.CACHE_KEY) or "")


def test_another_url_or_privacy_choice_is_looked_up_again(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        find(server.geoip_url, store)
        find(server.geoip_url + "?lang=en", store)
        find(server.geoip_url + "?lang=en", store, location="country")
        assert server.geoip_requests == 3


@pytest.mark.parametrize(
    "options",
    [{"location": "omit"}, {"public_ip": "omit"}, {"location": "omit", "public_ip": "hash"}],
    ids=["location-omit", "public-ip-omit", "both"],
)
def test_omit_makes_no_lookup_at_all(store: Store, options: dict[str, str]) -> None:
    with FaultServer(geoip=ANSWER) as server:
        for hour in range(3):
            found = location.lookup(settings(server.geoip_url, **options), store, NOW + hour)
            assert found == location.EMPTY
        assert server.geoip_requests == 0 and server.connections == 0


def test_omit_also_forgets_what_an_earlier_lookup_found(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        find(server.geoip_url, store)
        assert "Osaka" in (store.get(location.CACHE_KEY) or "")
        assert find(server.geoip_url, store, location="omit") == location.EMPTY
    assert not store.get(location.CACHE_KEY)


def test_country_keeps_only_the_country_in_the_answer_and_the_cache(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        found = find(server.geoip_url, store, location="country")
    assert found == {**location.EMPTY, "public_ip": "198.51.100.4", "country": "Japan"}
    raw = store.get(location.CACHE_KEY) or ""
    assert "Japan" in raw
    assert "Osaka" not in raw and "Example Fiber" not in raw


def test_empty_url_means_no_request(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server:
        assert find("", store) == location.EMPTY
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
        assert find(server.geoip_url, store) == location.EMPTY


def test_a_redirect_is_a_failure_not_followed(store: Store) -> None:
    with FaultServer() as server:
        # To the same service: a redirect followed would be a second request here.
        server.behave(then=Linger(302, b"", headers={"Location": server.geoip_url + "?x=1"}))
        assert find(server.geoip_url, store) == location.EMPTY
        assert server.wait_for(lambda s: len(s.endings) == 1)
        assert len(server.requests) == 1


def test_a_refused_connection_leaves_the_fields_empty(store: Store) -> None:
    assert find("http://127.0.0.1:9/json", store) == location.EMPTY


def test_a_failure_is_logged_without_the_url(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with FaultServer(then=Linger(500, b"oops")) as server:
        find(server.geoip_url + "?key=SECRET-GEO-KEY", store)
    assert "location lookup failed (HTTP 500)" in caplog.text
    assert "SECRET-GEO-KEY" not in caplog.text


# The deadline: the whole lookup within `timeout` -----------------------------------------


def test_a_hung_service_is_given_up_on_at_the_timeout(store: Store) -> None:
    # The service reads the request and never answers.
    with FaultServer(then=Silent()) as server:
        clock = Moved()
        looking = Looking(settings(server.geoip_url, timeout=5.0), store, clock)
        assert server.wait_for(lambda s: len(s.requests) == 1, HANG), "the request was made"
        clock.now = 4.9
        assert looking.running(), "still waiting just before the deadline"
        clock.now = 5.0
        assert looking.result() == location.EMPTY
        assert server.wait_for(lambda s: len(s.hangups) == 1, HANG), "and cut off"


def test_a_trickling_service_is_cut_off_at_the_timeout(store: Store) -> None:
    # A byte a second keeps every per-read timeout happy: only the deadline ends it (the
    # whole answer, some 40 bytes, would take longer than the hang detector).
    with FaultServer(then=Trickle(200, every=1.0)) as server:
        clock = Moved()
        looking = Looking(settings(server.geoip_url, timeout=2.0), store, clock)
        assert server.wait_for(lambda s: len(s.requests) == 1, HANG)
        clock.now = 1.9
        assert looking.running()
        clock.now = 2.0
        assert looking.result() == location.EMPTY
        assert server.wait_for(lambda s: len(s.hangups) == 1, HANG)


# The way out: proxy and CA bundle, as for reports ------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


def test_the_lookup_goes_through_the_configured_proxy(store: Store) -> None:
    with FaultServer(geoip=ANSWER) as server, Proxy() as proxy:
        assert find(server.geoip_url, store, proxy=proxy.url) == FOUND
        assert proxy.forwarded == [server.geoip_url]
        [(method, _, headers)] = proxy.heads
    assert method == "GET" and headers["user-agent"] == USER_AGENT


def test_the_configured_proxy_wins_over_the_environments(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultServer(geoip=ANSWER) as server, Proxy() as proxy, Proxy() as other:
        monkeypatch.setenv("HTTP_PROXY", other.url)
        assert find(server.geoip_url, store, proxy=proxy.url) == FOUND
        assert (len(proxy.forwarded), other.connections) == (1, 0)


def test_an_https_lookup_tunnels_through_the_proxy_trusting_the_ca_bundle(
    store: Store, tls: Tls
) -> None:
    with FaultServer(geoip=ANSWER, tls=tls.server) as server, Proxy() as proxy:
        found = find(server.geoip_url, store, proxy=proxy.url, ca_bundle=tls.ca_file)
        assert found == FOUND
        assert proxy.tunnels == [f"127.0.0.1:{server.port}"]
        [(method, _, headers)] = proxy.heads
    assert method == "CONNECT" and headers["user-agent"] == USER_AGENT


def test_an_untrusted_certificate_is_a_failed_lookup(store: Store, tls: Tls) -> None:
    with FaultServer(geoip=ANSWER, tls=tls.server) as server:
        assert find(server.geoip_url, store) == location.EMPTY
        assert server.wait_for(lambda s: s.tls_failures == 1, HANG)
        assert server.geoip_requests == 0


def test_odd_values_are_dropped_field_by_field(store: Store) -> None:
    hostile = {
        **ANSWER,
        "query": "not an ip",
        "city": "<script>alert(1)</script>",
        "isp": "x" * 500,
        "regionName": "line\nbreak",
    }
    with FaultServer(geoip=hostile) as server:
        found = find(server.geoip_url, store)
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
        found = find(f"http://127.0.0.1:{server.port}/json", store)
        assert found["public_ip"] == "198.51.100.4"
        assert server.wait_for(lambda s: len(s.endings) == 1)
        assert server.endings == ["eof"], "a clean close, not a reset"
        [seen] = server.requests
        assert seen.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_endless_answer_is_a_failure_cut_off_at_the_limit(store: Store, chunked: bool) -> None:
    with FaultServer(then=Endless(200, chunked=chunked)) as server:
        assert find(f"http://127.0.0.1:{server.port}/json", store) == location.EMPTY
        assert server.wait_for(lambda s: len(s.endings) == 1)
        assert server.endings == ["reset"], "hung up on, the rest left unread"


def test_an_answer_one_byte_over_the_limit_is_a_failure(store: Store) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT + 1 - len(padded))})
    assert len(body) == location.ANSWER_LIMIT + 1
    with FaultServer(then=Linger(200, body.encode())) as server:
        assert find(server.geoip_url, store) == location.EMPTY


def test_an_answer_at_the_limit_is_read(store: Store) -> None:
    padded = json.dumps({**ANSWER, "pad": ""})
    body = json.dumps({**ANSWER, "pad": "x" * (location.ANSWER_LIMIT - len(padded))})
    assert len(body) == location.ANSWER_LIMIT
    with FaultServer(then=Linger(200, body.encode())) as server:
        assert find(server.geoip_url, store)["city"] == "Osaka"


def test_a_compressed_answer_sent_anyway_is_a_failure(store: Store) -> None:
    compressed = gzip.compress(_json(ANSWER))
    with FaultServer(then=Linger(200, compressed, headers={"Content-Encoding": "gzip"})) as server:
        assert find(server.geoip_url, store) == location.EMPTY
