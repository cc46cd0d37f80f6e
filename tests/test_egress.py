"""One way out, end to end: every request of the plugin through the operator's proxy under
the plugin's User-Agent, a lookup that cannot hold a report back beyond ``timeout``,
pre-release reports to their own endpoint, and a corporate relay that wants a header
and a client certificate.

Real parts throughout: the plugin loaded through its entry point by the simulated host,
the project's fault servers and proxy on 127.0.0.1, certificates made with trustme.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from e2e_support import GEOIP, START, settle, tick
from faultservers import FaultServer, Proxy, Reply, Seen, Tls, Trickle, make_tls

from phonehome_plugin import plugin
from phonehome_plugin.delivery.transport import USER_AGENT
from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.faults import Behaviour
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

RELAY_HEADER = "X-Relay-Token"
RELAY_TOKEN = "relay-7f3a9c"


@pytest.fixture
def servers() -> Iterator[list[FaultServer]]:
    """Servers started by a test, all closed after it."""
    started: list[FaultServer] = []
    yield started
    for server in started:
        server.close()


def serve(started: list[FaultServer], **options: Any) -> FaultServer:
    server = FaultServer(**options)
    started.append(server)
    return server


def host_for(data_dir: Path, version: str = "2.3.0", **section: Any) -> SimHost:
    """A host whose phonehome section is ``section`` (no location lookup unless given)."""
    config = {"modules": {"phonehome": {"geoip_url": "", **section}}}
    return SimHost(config, data_dir, clock=SimClock(START), version=version)


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


# The proxy sees every request ------------------------------------------------------------


def test_a_forward_proxy_sees_the_lookup_and_the_reports_with_the_plugins_user_agent(
    servers: list[FaultServer], tls: Tls, tmp_path: Path
) -> None:
    endpoint = serve(servers, then=Reply(202), tls=tls.server)
    geo = serve(servers, geoip=GEOIP)
    with Proxy() as proxy:
        host = host_for(
            tmp_path / "data",
            endpoint=endpoint.url,
            geoip_url=geo.geoip_url,
            proxy=proxy.url,
            ca_bundle=str(tls.ca_file),
            headers={RELAY_HEADER: RELAY_TOKEN},
        )
        host.start()
        tick(host)
        host.shutdown()
        heads = list(proxy.heads)
    [report] = endpoint.reports.values()
    assert report["system"]["public_ip"] == GEOIP["query"], "the lookup's answer came back"
    # The report went through a CONNECT tunnel, the lookup was forwarded: the proxy saw
    # both, each under the plugin's User-Agent.
    asked = [(method, target) for method, target, _ in heads]
    assert ("CONNECT", f"127.0.0.1:{endpoint.port}") in asked
    assert ("GET", geo.geoip_url) in asked
    assert all(headers["user-agent"] == USER_AGENT for _, _, headers in heads)
    assert endpoint.connections == 1 and geo.connections == 1, "nothing went direct"
    # The relay's header went with the report only, inside the tunnel.
    [(_, _, forwarded)] = [head for head in heads if head[0] == "GET"]
    assert RELAY_TOKEN not in str(forwarded)
    [lookup] = geo.requests
    assert lookup.headers["user-agent"] == USER_AGENT
    assert RELAY_TOKEN not in str(lookup.headers)
    [post] = endpoint.requests
    assert post.headers[RELAY_HEADER.lower()] == RELAY_TOKEN
    assert post.headers["user-agent"] == USER_AGENT


# A trickling lookup --------------------------------------------------------------------


def test_a_trickling_lookup_holds_the_startup_report_back_by_at_most_timeout(
    servers: list[FaultServer], tmp_path: Path
) -> None:
    # One byte a second: the lookup's answer would take about 40 s, every wait for a
    # byte well within any per-read timeout. Only the lookup's deadline (timeout: 1 s)
    # ends it; settle() gives the worker 20 s, so the report arriving at all shows the
    # cut-off (the exact bound, on a clock the test moves, is test_location's).
    geo = serve(servers, then=Trickle(200, every=1.0))
    endpoint = serve(servers, then=Reply(202))
    host = host_for(tmp_path / "data", endpoint=endpoint.url, geoip_url=geo.geoip_url, timeout=1.0)
    host.start()
    tick(host)
    [report] = endpoint.reports.values()
    assert report["trigger"] == "startup"
    assert report["system"]["public_ip"] is None
    assert set(report["location"].values()) == {None}
    assert geo.wait_for(lambda s: len(s.hangups) == 1), "the lookup was cut off, not waited out"
    host.shutdown()


# Pre-releases --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "marked"), [("2.3.0-rc1", True), ("2.3-dev", True), ("2.3.0", False)]
)
def test_a_pre_release_hosts_reports_are_marked_and_go_to_the_prerelease_endpoint(
    servers: list[FaultServer], tmp_path: Path, version: str, marked: bool
) -> None:
    endpoint = serve(servers, then=Reply(202))
    pre = serve(servers, then=Reply(202))
    host = host_for(tmp_path / "data", version, endpoint=endpoint.url, prerelease_endpoint=pre.url)
    host.start()
    tick(host)
    host.shutdown()
    went, stayed = (pre, endpoint) if marked else (endpoint, pre)
    [report] = went.reports.values()
    assert stayed.connections == 0
    assert report["system"]["prerelease"] is marked
    assert report["system"]["version"] == version
    assert report["system"]["ci"] is False


def test_without_a_prerelease_endpoint_a_pre_release_report_is_marked_only(
    servers: list[FaultServer], tmp_path: Path
) -> None:
    endpoint = serve(servers, then=Reply(202))
    host = host_for(tmp_path / "data", "2.3.0-rc1", endpoint=endpoint.url)
    host.start()
    tick(host)
    host.shutdown()
    [report] = endpoint.reports.values()
    assert report["system"]["prerelease"] is True


def test_a_ci_runs_reports_are_marked(
    servers: list[FaultServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITLAB_CI", "true")
    endpoint = serve(servers, then=Reply(202))
    host = host_for(tmp_path / "data", endpoint=endpoint.url)
    host.start()
    tick(host)
    host.shutdown()
    [report] = endpoint.reports.values()
    assert (report["system"]["ci"], report["system"]["prerelease"]) == (True, False)


# A relay that wants a header and a client certificate -------------------------------------


@dataclass(frozen=True)
class Relay:
    """A relay's TLS context (it wants a client certificate signed by its CA), and a
    client certificate and key it accepts, as files."""

    server: ssl.SSLContext
    ca_file: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A certificate and key (one file) from a CA the relay does not know."""


def make_relay(directory: Path) -> Relay:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)  # the relay trusts client certificates of its own CA
    ca_file = directory / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("phonehome-client.example")
    client_cert, client_key = directory / "client.pem", directory / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    stranger = trustme.CA().issue_cert("phonehome-client.example")
    stranger_cert = directory / "stranger.pem"
    stranger.private_key_and_cert_chain_pem.write_to_path(str(stranger_cert))
    return Relay(server, ca_file, client_cert, client_key, stranger_cert)


def wants_the_header(seen: Seen) -> Behaviour | None:
    """The relay's rule: no header, no entry (401); with it, the script's answer."""
    return None if seen.headers.get(RELAY_HEADER.lower()) == RELAY_TOKEN else Reply(401)


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    return make_relay(tmp_path)


def relay_section(relay: Relay, server: FaultServer, **extra: Any) -> dict[str, Any]:
    return {"endpoint": server.url, "ca_bundle": str(relay.ca_file), **extra}


def test_a_relay_wanting_a_header_and_a_client_certificate_accepts_the_plugins_reports(
    servers: list[FaultServer], relay: Relay, tmp_path: Path
) -> None:
    server = serve(servers, then=Reply(202), tls=relay.server, admit=wants_the_header)
    host = host_for(
        tmp_path / "data",
        **relay_section(
            relay,
            server,
            headers={RELAY_HEADER: RELAY_TOKEN},
            client_cert=str(relay.client_cert),
            client_key=str(relay.client_key),
        ),
    )
    host.start()
    tick(host)
    host.create_user("admin@example.com")
    settle(host)
    host.shutdown()
    assert sorted(r["trigger"] for r in server.reports.values()) == ["first_user", "startup"]
    assert server.tls_failures == 0


def test_a_certificate_and_key_in_one_file_are_accepted(
    servers: list[FaultServer], relay: Relay, tmp_path: Path
) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(relay.client_key.read_bytes() + relay.client_cert.read_bytes())
    server = serve(servers, then=Reply(202), tls=relay.server, admit=wants_the_header)
    section = relay_section(
        relay, server, headers={RELAY_HEADER: RELAY_TOKEN}, client_cert=str(both)
    )
    host = host_for(tmp_path / "data", **section)
    host.start()
    tick(host)
    host.shutdown()
    assert len(server.reports) == 1


@pytest.mark.parametrize("without", ["header", "certificate", "a known certificate"])
def test_the_relay_rejects_a_plugin_without_them_and_the_report_waits(
    servers: list[FaultServer], relay: Relay, tmp_path: Path, without: str
) -> None:
    server = serve(servers, then=Reply(202), tls=relay.server, admit=wants_the_header)
    section = relay_section(
        relay,
        server,
        headers={} if without == "header" else {RELAY_HEADER: RELAY_TOKEN},
        client_cert=str(
            relay.stranger_cert if without == "a known certificate" else relay.client_cert
        ),
        client_key=None if without == "a known certificate" else str(relay.client_key),
    )
    if without == "certificate":
        del section["client_cert"], section["client_key"]
    host = host_for(tmp_path / "data", **section)
    host.start()
    tick(host)
    assert server.reports == {}, "nothing got through"
    if without == "header":
        assert [seen.method for seen in server.requests] == ["POST"], "answered 401, not retried"
    else:
        assert server.wait_for(lambda s: s.tls_failures >= 1), "refused in the handshake"
        assert server.requests == []
    # Refused credentials are the operator's to fix: the report waits, not dropped.
    runtime = host.app.plugin_manager.get_plugin(plugin.RUNTIME_NAME)
    assert isinstance(runtime, Runtime)
    sender = runtime.worker.sender
    assert sender is not None
    assert [entry.trigger for entry in sender.outbox.pending()] == ["startup"]
    host.shutdown()


@pytest.mark.parametrize(
    ("problem", "key"),
    [("missing key file", "client_key"), ("wrong key", "client_key"), ("no cert", "client_cert")],
)
def test_an_unusable_client_certificate_is_one_log_line_naming_the_key_and_nothing_is_sent(
    servers: list[FaultServer],
    relay: Relay,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    problem: str,
    key: str,
) -> None:
    server = serve(servers, then=Reply(202), tls=relay.server)
    cert, client_key = relay.client_cert, relay.client_key
    if problem == "missing key file":
        client_key = tmp_path / "nowhere.key"
    elif problem == "wrong key":
        client_key = tmp_path / "other.key"
        trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(client_key))
    else:
        cert = relay.client_key  # a key where the certificate should be
    caplog.set_level(logging.INFO)
    host = host_for(
        tmp_path / "data",
        **relay_section(relay, server, client_cert=str(cert), client_key=str(client_key)),
    )
    host.start()
    tick(host)
    host.tick(3600)
    settle(host)
    host.shutdown()
    lines = [
        r.getMessage() for r in caplog.records if f"modules.phonehome.{key}" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert "reports are kept, not sent" in lines[0]
    assert server.connections == 0
