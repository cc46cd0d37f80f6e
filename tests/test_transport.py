"""One POST against real loopback servers: body and headers, hard deadlines, TLS,
proxies, Retry-After, and no retries below tenacity."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultservers import (
    Behaviour,
    CloseAfterHeaders,
    Endless,
    FaultServer,
    Hang,
    Linger,
    Proxy,
    Reply,
    Reset,
    Silent,
    Tls,
    Trickle,
    make_tls,
)

from phonehome_plugin import __version__
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.delivery import retry
from phonehome_plugin.delivery.answer import Answer
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.delivery.transport import ANSWER_LIMIT, GZIP_ABOVE, Transport

NEVER = threading.Event()
REPORT_ID = "01890a5d-ac96-774b-bcce-b302099a8057"

Serve = Callable[..., FaultServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fault servers for the test; all are closed after it."""
    started: list[FaultServer] = []

    def start(*script: Behaviour, then: Behaviour | None = None, tls: Any = None) -> FaultServer:
        server = FaultServer(script, then=then or Reply(202), tls=tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy() as running:
        yield running


def transport(url: str, **options: Any) -> Transport:
    return Transport(Settings(endpoint=url, geoip_url="", **options))


class Moved:
    """The deadline's clock, moved only by the test: a deadline falls exactly when the
    test moves past it, never because the machine was slow."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


HANG = 30.0
"""Seconds after which a POST that should have ended counts as hung (a hang detector)."""


class Posting:
    """One :meth:`Transport.post` on a thread of its own, so that the test can move the
    clock or set the cancel while it is in flight."""

    def __init__(self, sender: Transport, report_id: str, deadline: float, cancel: Any) -> None:
        self.answer: Answer | None = None
        self._thread = threading.Thread(
            target=self._run, args=(sender, report_id, deadline, cancel), daemon=True
        )
        self._thread.start()

    def _run(self, sender: Transport, report_id: str, deadline: float, cancel: Any) -> None:
        self.answer = sender.post(b"{}", report_id, deadline, cancel)

    def result(self) -> Answer | None:
        self._thread.join(HANG)
        assert not self._thread.is_alive(), "the POST did not end"
        return self.answer


def body_of(size: int) -> bytes:
    """A report body of exactly ``size`` bytes carrying REPORT_ID."""
    head = json.dumps({"report_id": REPORT_ID, "pad": ""}).encode()
    return json.dumps({"report_id": REPORT_ID, "pad": "x" * (size - len(head))}).encode()


# What goes on the wire --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "gzipped"),
    [(200, False), (GZIP_ABOVE, False), (GZIP_ABOVE + 1, True), (200_000, True)],
)
def test_bodies_above_one_kib_are_gzipped(serve: Serve, size: int, gzipped: bool) -> None:
    server = serve()
    body = body_of(size)
    assert len(body) == size
    assert transport(server.url).post(body, REPORT_ID, 5, NEVER) == Answer(202)
    [seen] = server.requests
    assert seen.body == body
    assert (seen.headers.get("content-encoding") == "gzip") is gzipped
    if gzipped:
        assert gzip.decompress(seen.raw) == body and len(seen.raw) < size
    else:
        assert seen.raw == body
    assert int(seen.headers["content-length"]) == len(seen.raw)


def test_the_headers_name_the_plugin_and_carry_the_report_id_as_idempotency_key(
    serve: Serve,
) -> None:
    server = serve()
    transport(server.url).post(body_of(300), REPORT_ID, 5, NEVER)
    [seen] = server.requests
    assert seen.method == "POST"
    assert seen.target == "/v1/reports"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["idempotency-key"] == REPORT_ID == seen.json()["report_id"]
    assert seen.headers["user-agent"] == f"maestrohub-phonehome/{__version__}"


def test_the_same_report_sent_twice_carries_the_same_key(serve: Serve) -> None:
    server = serve(Reply(503))
    sender = transport(server.url)
    assert sender.post(body_of(300), REPORT_ID, 5, NEVER).status == 503
    assert sender.post(body_of(300), REPORT_ID, 5, NEVER).status == 202
    assert [s.key for s in server.requests] == [REPORT_ID, REPORT_ID]
    assert server.accepted == {REPORT_ID: 1}


def test_redirects_are_answers_not_followed(serve: Serve) -> None:
    elsewhere = serve()
    server = serve(Reply(307, {"Location": elsewhere.url}))
    assert transport(server.url).post(b"{}", REPORT_ID, 5, NEVER).status == 307
    assert elsewhere.connections == 0


# The answer's body: read (bounded) before closing ----------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        Linger(202),
        Linger(503, b'{"error": "busy"}'),
        Linger(202, b""),
        # Larger than http.client's 8 KiB read buffer: without a drain most of it is
        # still in the kernel's buffer at close, so the close is a reset every time.
        Linger(202, b"x" * 32 * 1024),
        Linger(202, b"x" * 32 * 1024, chunked=True),
        Linger(202, b"x" * ANSWER_LIMIT),
    ],
    ids=["json", "error json", "empty", "32 KiB", "32 KiB chunked", "at the limit"],
)
def test_the_answer_is_read_before_closing_so_the_server_sees_no_reset(
    serve: Serve, answer: Linger
) -> None:
    server = serve(answer)
    sender = transport(server.url)
    assert sender.post(body_of(300), REPORT_ID, 5, NEVER) == Answer(answer.status)
    assert server.wait_for(lambda s: len(s.endings) == 1)
    assert server.endings == ["eof"], "a clean close, not a reset"
    assert sender.abandoned == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_endless_answer_is_cut_at_the_limit_well_within_the_deadline(
    serve: Serve, chunked: bool
) -> None:
    server = serve(Endless(202, chunked=chunked))
    sender = transport(server.url)
    assert sender.post(b"{}", REPORT_ID, 10, NEVER) == Answer(202)
    # Not abandoned: the exchange ended by itself, at the limit, not at the deadline.
    assert sender.abandoned == 0
    assert server.wait_for(lambda s: len(s.endings) == 1)
    assert server.endings == ["reset"], "bytes beyond the limit were left unread"
    assert server.accepted == {REPORT_ID: 1}


def test_a_body_that_never_comes_costs_the_deadline_and_the_answer_stands(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(Hang(202, length=10**9))
    clock = Moved()
    sender = Transport(Settings(endpoint=server.url, geoip_url=""), clock=clock)
    head = threading.Event()
    request = sender._post

    def heard_the_head(
        url: str, body: bytes, report_id: str, deadline: float, answered: Any
    ) -> None:
        def answer(value: Answer) -> None:
            answered(value)
            head.set()

        request(url, body, report_id, deadline, answer)

    monkeypatch.setattr(sender, "_post", heard_the_head)
    posting = Posting(sender, REPORT_ID, 5.0, NEVER)
    assert head.wait(HANG)
    clock.now = 5.0  # the deadline falls while the body is still to come
    assert posting.result() == Answer(202)
    assert sender.abandoned == 1, "cut off at the deadline while reading the body"
    assert server.wait_for(lambda s: len(s.hangups) == 1), "and the connection closed"


@pytest.mark.parametrize(
    "url",
    [
        "http://telemetry.example.com/v1/reports",
        "http://10.0.0.1/v1/reports",
        "ftp://127.0.0.1/v1/reports",
    ],
)
def test_plain_http_is_refused_except_to_loopback(url: str) -> None:
    answer = transport(url).post(b"{}", REPORT_ID, 5, NEVER)
    assert answer.status is None and answer.error is not None
    assert answer.error.startswith("refused")


def test_plain_http_to_localhost_is_allowed(serve: Serve) -> None:
    server = serve()
    url = server.url.replace("127.0.0.1", "localhost")
    assert transport(url).post(b"{}", REPORT_ID, 5, NEVER).status == 202


# Deadlines ----------------------------------------------------------------------------


def test_a_server_that_never_answers_costs_the_deadline_and_no_more(serve: Serve) -> None:
    server = serve(Silent())
    clock = Moved()
    sender = Transport(Settings(endpoint=server.url, geoip_url=""), clock=clock)
    posting = Posting(sender, REPORT_ID, 5.0, NEVER)
    assert server.wait_for(lambda s: len(s.requests) == 1, HANG)
    clock.now = 4.9  # just before the deadline: still waiting
    assert posting.answer is None
    clock.now = 5.0
    assert posting.result() == Answer(None, "deadline")
    # The abandoned exchange was cut off, not left hanging.
    assert sender.abandoned == 1
    assert server.wait_for(lambda s: len(s.hangups) == 1, HANG)


def test_cancel_ends_a_post_at_once(serve: Serve) -> None:
    server = serve(Silent())
    cancel = threading.Event()
    # The clock never moves: only the cancel can end this POST.
    sender = Transport(Settings(endpoint=server.url, geoip_url=""), clock=Moved())
    posting = Posting(sender, REPORT_ID, 5.0, cancel)
    assert server.wait_for(lambda s: len(s.requests) == 1, HANG)
    cancel.set()
    assert posting.result() == Answer(None, "cancelled")
    assert server.wait_for(lambda s: len(s.hangups) == 1, HANG)


def test_a_trickling_server_is_cut_off_and_does_not_wedge_later_sends(serve: Serve) -> None:
    # A byte every 50 ms keeps every per-read timeout happy: only the deadline ends it.
    server = serve(*[Trickle(202, every=0.05)] * 6)
    clock = Moved()
    sender = Transport(Settings(endpoint=server.url, geoip_url=""), clock=clock)
    for n in range(6):
        posting = Posting(sender, f"trickled-{n}", 5.0, NEVER)

        def arrived(s: FaultServer, n: int = n) -> bool:
            return len(s.requests) == n + 1

        assert server.wait_for(arrived, HANG)
        clock.now += 5.0
        assert posting.result() == Answer(None, "deadline")
    assert server.wait_for(lambda s: len(s.hangups) == 6, HANG)
    # Six abandoned exchanges later the transport still sends.
    assert sender.post(b"{}", "after", HANG, NEVER) == Answer(202)


def test_a_hung_resolver_is_inside_the_deadline(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    real = socket.getaddrinfo
    resolving, release = threading.Event(), threading.Event()

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            resolving.set()
            release.wait(HANG)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    url = server.url.replace("http://127.0.0.1", "https://slow-dns.test")
    clock = Moved()
    posting = Posting(
        Transport(Settings(endpoint=url, geoip_url=""), clock=clock), REPORT_ID, 5.0, NEVER
    )
    try:
        assert resolving.wait(HANG)
        clock.now = 5.0
        assert posting.result() == Answer(None, "deadline")
    finally:
        release.set()


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        (Reset(), "connection"),
        (Reset(at_once=True), "connection"),
        (CloseAfterHeaders(), "connection"),
    ],
)
def test_broken_connections_are_errors_not_exceptions(
    serve: Serve, behaviour: Behaviour, error: str
) -> None:
    server = serve(behaviour)
    answer = transport(server.url).post(body_of(5000), REPORT_ID, 5, NEVER)
    assert answer == Answer(None, error)
    assert server.accepted == {}


def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answer = transport(f"http://127.0.0.1:{port}/v1/reports").post(b"{}", REPORT_ID, 5, NEVER)
    assert answer == Answer(None, "connection")


# No retries below tenacity --------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour", [Reset(), Reset(at_once=True), CloseAfterHeaders(), Reply(503)]
)
def test_the_server_sees_exactly_the_attempts_tenacity_made(
    serve: Serve, behaviour: Behaviour
) -> None:
    server = serve(then=behaviour)
    sender = transport(server.url)
    policy = RetryPolicy(deadline=5, max_attempts=3, wait_base=0.01, wait_max=0.02)
    outcome = retry.send_series(
        lambda left: sender.post(b"{}", REPORT_ID, left, NEVER), policy, threading.Event()
    )
    assert outcome.attempts == 3
    assert server.connections == 3


def test_one_post_is_one_connection_whatever_goes_wrong(serve: Serve) -> None:
    server = serve(then=Reset())
    sender = transport(server.url)
    for n in range(4):
        sender.post(b"{}", REPORT_ID, 5, NEVER)
        assert server.connections == n + 1


# TLS -----------------------------------------------------------------------------------


def test_tls_is_verified_and_an_untrusted_certificate_fails(serve: Serve, tls: Tls) -> None:
    server = serve(tls=tls.server)
    assert server.url.startswith("https://127.0.0.1:")
    assert transport(server.url).post(b"{}", REPORT_ID, 5, NEVER) == Answer(None, "tls")
    assert server.wait_for(lambda s: s.tls_failures == 1, HANG)
    assert server.requests == []


def test_ca_bundle_trusts_the_private_ca(serve: Serve, tls: Tls) -> None:
    server = serve(tls=tls.server)
    answer = transport(server.url, ca_bundle=tls.ca_file).post(b"{}", REPORT_ID, 5, NEVER)
    assert answer == Answer(202)
    assert server.accepted == {REPORT_ID: 1}


def test_ca_bundle_wins_over_requests_ca_bundle_from_the_environment(
    serve: Serve, tls: Tls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_file))
    server = serve(tls=tls.server)
    answer = transport(server.url, ca_bundle=tls.ca_file).post(b"{}", REPORT_ID, 5, NEVER)
    assert answer == Answer(202)


def test_a_missing_ca_bundle_file_is_an_error_not_an_exception(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    answer = transport(
        server.url.replace("http:", "https:"), ca_bundle=tmp_path / "missing.pem"
    ).post(b"{}", REPORT_ID, 5, NEVER)
    assert answer.status is None and answer.error


# Proxies --------------------------------------------------------------------------------


def test_the_configured_proxy_tunnels_https(serve: Serve, tls: Tls, proxy: Proxy) -> None:
    server = serve(tls=tls.server)
    sender = transport(server.url, ca_bundle=tls.ca_file, proxy=proxy.url)
    assert sender.post(b"{}", REPORT_ID, 5, NEVER) == Answer(202)
    assert proxy.tunnels == [f"127.0.0.1:{server.port}"]
    assert server.accepted == {REPORT_ID: 1}


def test_https_proxy_from_the_environment_is_used(
    serve: Serve, tls: Tls, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    server = serve(tls=tls.server)
    assert transport(server.url, ca_bundle=tls.ca_file).post(b"{}", REPORT_ID, 5, NEVER) == Answer(
        202
    )
    assert proxy.tunnels == [f"127.0.0.1:{server.port}"]


def test_no_proxy_from_the_environment_bypasses_it(
    serve: Serve, tls: Tls, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = serve(tls=tls.server)
    assert transport(server.url, ca_bundle=tls.ca_file).post(b"{}", REPORT_ID, 5, NEVER) == Answer(
        202
    )
    assert proxy.connections == 0


def test_the_configured_proxy_wins_over_the_environment(
    serve: Serve, tls: Tls, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Proxy() as other:
        monkeypatch.setenv("HTTPS_PROXY", other.url)
        server = serve(tls=tls.server)
        sender = transport(server.url, ca_bundle=tls.ca_file, proxy=proxy.url)
        assert sender.post(b"{}", REPORT_ID, 5, NEVER) == Answer(202)
        assert (len(proxy.tunnels), other.connections) == (1, 0)


def test_http_proxy_forwards_a_loopback_http_endpoint(
    serve: Serve, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    server = serve()
    assert transport(server.url).post(body_of(3000), REPORT_ID, 5, NEVER) == Answer(202)
    assert proxy.forwarded == [server.url]
    assert server.accepted == {REPORT_ID: 1}


def test_a_dead_proxy_is_an_error(serve: Serve, tls: Tls) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(tls=tls.server)
    answer = transport(server.url, ca_bundle=tls.ca_file, proxy=f"http://127.0.0.1:{port}").post(
        b"{}", REPORT_ID, 5, NEVER
    )
    assert answer.status is None and answer.error in ("proxy", "connection")
    assert server.connections == 0


# Retry-After ---------------------------------------------------------------------------


def test_retry_after_comes_back_from_a_real_answer(serve: Serve) -> None:
    server = serve(
        Reply(
            503,
            {
                "Retry-After": "Mon, 02 Mar 2026 08:10:00 GMT",
                "Date": "Mon, 02 Mar 2026 08:00:00 GMT",
            },
        ),
        Reply(429, {"Retry-After": "42"}),
    )
    sender = transport(server.url)
    assert sender.post(b"{}", REPORT_ID, 5, NEVER) == Answer(503, None, 600.0)
    assert sender.post(b"{}", REPORT_ID, 5, NEVER) == Answer(429, None, 42.0)
