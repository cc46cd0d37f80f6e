"""The embedded receiver, over real loopback HTTP: the telemetry service's contract
(section 6a) and the GeoIP service the demo points the plugin at."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

from phonehome_plugin.testing.endpoint import GEOIP_ANSWER, MAX_BODY, REPORTS_PATH, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _report(**fields: Any) -> dict[str, Any]:
    return {"report_id": str(uuid.uuid4()), "trigger": "periodic", "sequence": 1, **fields}


def _request(
    url: str,
    method: str = "POST",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    path: str | None = None,
) -> tuple[int, Any]:
    """One request on a connection of its own; returns the status and the JSON answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path or parts.path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _post(
    receiver: Receiver,
    report: Mapping[str, Any],
    key: str | None = "",
    *,
    compress: bool = False,
    headers: Mapping[str, str] | None = None,
) -> int:
    """POST ``report`` as the plugin would; ``key`` defaults to its report_id, None omits it."""
    body = json.dumps(report).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if compress:
        body = gzip.compress(body)
        sent["Content-Encoding"] = "gzip"
    if key is not None:
        sent["Idempotency-Key"] = key or str(report["report_id"])
    status, _ = _request(receiver.url, body=body, headers=sent)
    return status


def test_a_new_report_is_202_and_a_repeat_of_its_key_is_200(receiver: Receiver) -> None:
    report = _report()
    assert _post(receiver, report, headers={"User-Agent": "maestrohub-phonehome/test"}) == 202
    assert _post(receiver, report) == 200
    assert _post(receiver, {**report, "sequence": 2}) == 200, "the key decides, not the body"

    assert receiver.reports == [report]
    assert receiver.duplicates == 2
    requests = receiver.requests
    assert [r.status for r in requests] == [202, 200, 200]
    assert {(r.method, r.path, r.idempotency_key) for r in requests} == {
        ("POST", REPORTS_PATH, report["report_id"])
    }
    assert requests[0].user_agent == "maestrohub-phonehome/test"


def test_the_answer_names_the_outcome(receiver: Receiver) -> None:
    report = _report()
    body = json.dumps(report).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": report["report_id"]}
    assert _request(receiver.url, body=body, headers=headers) == (
        202,
        {"status": "accepted", "id": report["report_id"]},
    )
    assert _request(receiver.url, body=body, headers=headers) == (
        200,
        {"status": "duplicate", "id": report["report_id"]},
    )


def test_a_gzip_body_is_decoded(receiver: Receiver) -> None:
    report = _report(payload="x" * 10_000)
    assert _post(receiver, report, compress=True) == 202
    assert receiver.reports == [report]
    assert receiver.requests[0].content_encoding == "gzip"
    assert _post(receiver, report) == 200, "plain or gzip, the same key is the same report"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not gzip at all", 400),
        (gzip.compress(b'{"report_id": "k"}')[:-12], 400),  # truncated
        (gzip.compress(b" " * (MAX_BODY + 1)), 413),  # a small bomb
    ],
    ids=["garbage", "truncated", "too-large-once-inflated"],
)
def test_bad_gzip_is_refused(receiver: Receiver, body: bytes, status: int) -> None:
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Idempotency-Key": "k",
    }
    assert _request(receiver.url, body=body, headers=headers)[0] == status
    assert receiver.reports == []


def test_no_idempotency_key_is_400(receiver: Receiver) -> None:
    assert _post(receiver, _report(), key=None) == 400
    assert receiver.reports == [] and receiver.duplicates == 0
    assert receiver.requests[0].idempotency_key is None


def test_a_key_other_than_the_report_id_is_400(receiver: Receiver) -> None:
    report = _report()
    assert _post(receiver, report, key=str(uuid.uuid4())) == 400
    assert _post(receiver, {"trigger": "periodic"}, key="anything") == 400, "no report_id"
    assert receiver.reports == []
    assert _post(receiver, report) == 202, "a refused key was not remembered"


@pytest.mark.parametrize(
    ("headers", "body", "path", "status"),
    [
        ({"Content-Type": "text/plain"}, b"{}", REPORTS_PATH, 415),
        ({"Content-Encoding": "br"}, b"{}", REPORTS_PATH, 415),
        ({}, b"[1, 2]", REPORTS_PATH, 400),
        ({}, b"{not json", REPORTS_PATH, 400),
        ({}, b"{}", "/v2/elsewhere", 404),
    ],
    ids=["content-type", "encoding", "not-an-object", "not-json", "path"],
)
def test_requests_out_of_contract_are_refused(
    receiver: Receiver, headers: dict[str, str], body: bytes, path: str, status: int
) -> None:
    sent = {"Content-Type": "application/json", "Idempotency-Key": "k", **headers}
    assert _request(receiver.url, body=body, headers=sent, path=path)[0] == status
    assert receiver.reports == []


def test_a_body_without_content_length_is_411(receiver: Receiver) -> None:
    parts = urlsplit(receiver.url)
    # The whole chunked request in one write: the receiver may answer (and close)
    # as soon as it has read the headers, which must not break the sending side.
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nIdempotency-Key: k\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"411"


def test_fail_next_answers_without_storing_then_accepts(receiver: Receiver) -> None:
    report = _report()
    receiver.fail_next(2, status=503)
    assert [_post(receiver, report) for _ in range(3)] == [503, 503, 202]
    assert receiver.reports == [report] and receiver.duplicates == 0


def test_wait_for_returns_once_the_reports_are_there(receiver: Receiver) -> None:
    assert receiver.wait_for(0, timeout=0)
    assert not receiver.wait_for(1, timeout=0.05)

    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(receiver.wait_for(2, timeout=10)))
    waiter.start()
    _post(receiver, _report())
    _post(receiver, _report())
    waiter.join(timeout=10)
    assert outcome == [True], "woken by the second report, not by the timeout"
    _post(receiver, receiver.reports[0])  # a duplicate is not a new report
    assert not receiver.wait_for(3, timeout=0.05)


def test_one_hundred_parallel_posts_are_each_stored_once(receiver: Receiver) -> None:
    reports = [_report(sequence=n) for n in range(100)]
    gate = threading.Barrier(100)

    def send(report: dict[str, Any]) -> int:
        gate.wait()
        return _post(receiver, report)

    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(send, reports))

    assert statuses == [202] * 100
    assert receiver.wait_for(100, timeout=0)
    assert sorted(r["sequence"] for r in receiver.reports) == list(range(100))
    assert len(receiver.requests) == 100 and receiver.duplicates == 0


def test_one_hundred_parallel_posts_of_one_report_store_it_once(receiver: Receiver) -> None:
    report = _report()
    gate = threading.Barrier(100)

    def send(_: int) -> int:
        gate.wait()
        return _post(receiver, report)

    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = Counter(pool.map(send, range(100)))

    assert statuses == {202: 1, 200: 99}
    assert receiver.reports == [report] and receiver.duplicates == 99


def test_geoip_answers_in_ip_api_format_with_a_documentation_address(
    receiver: Receiver,
) -> None:
    status, answer = _request(receiver.geoip_url, method="GET")
    assert status == 200
    assert answer == GEOIP_ANSWER
    assert {"status", "query", "country", "regionName", "city", "isp"} <= set(answer)
    assert answer["query"].startswith("203.0.113."), "RFC 5737 TEST-NET-3, never a real one"
    query = "/json/?fields=status,query,country,regionName,city,isp"
    assert _request(receiver.geoip_url, method="GET", path=query) == (200, GEOIP_ANSWER)
    assert _request(receiver.geoip_url, method="GET", path="/elsewhere")[0] == 404
    assert receiver.geoip_requests == 2
    assert receiver.reports == []


def test_geoip_can_answer_a_failed_lookup() -> None:
    failed = {"status": "fail", "message": "private range"}
    with Receiver(geoip=failed) as receiver:
        assert _request(receiver.geoip_url, method="GET") == (200, failed)


def _serving_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "phonehome-receiver"}


def test_close_releases_the_port_and_is_idempotent() -> None:
    before = _serving_threads()
    receiver = Receiver()
    assert len(_serving_threads() - before) == 1
    port = urlsplit(receiver.url).port
    assert urlsplit(receiver.url).hostname == "127.0.0.1"
    assert urlsplit(receiver.geoip_url).port == port
    assert _post(receiver, _report()) == 202
    receiver.close()
    receiver.close()

    assert _serving_threads() - before == set(), "the serving thread ended"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port or 0), timeout=2).close()
    assert len(receiver.reports) == 1, "what arrived stays readable after close"


def test_leaving_the_with_block_closes() -> None:
    with Receiver() as inner:
        port = urlsplit(inner.url).port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port or 0), timeout=2).close()


# Clients that hang up, and handlers that fail: counted, never printed ---------------------


def _raw_post(receiver: Receiver, report: Mapping[str, Any]) -> socket.socket:
    """A connection that has sent ``report`` as a POST (nothing read yet)."""
    body = json.dumps(report).encode()
    head = (
        f"POST {REPORTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: {report['report_id']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    port = urlsplit(receiver.url).port or 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a kernel does for a socket closed with unread bytes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_that_resets_after_the_answer_is_counted_not_printed(
    receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    report = _report()
    sock = _raw_post(receiver, report)
    assert sock.recv(1) == b"H", "the answer has begun"
    _reset(sock)

    assert receiver.wait_for_disconnects(1, timeout=10)
    assert receiver.reports == [report], "the report itself was accepted"
    assert (receiver.disconnects, receiver.errors) == (1, [])
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "no traceback, nothing at all"


def test_a_client_that_resets_mid_request_is_counted_not_printed(
    receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    port = urlsplit(receiver.url).port or 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {REPORTS_PATH} HTTP/1.1\r\nContent-Type: application/json\r\n"
        "Idempotency-Key: k\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    _reset(sock)

    assert receiver.wait_for_disconnects(1, timeout=10)
    assert (receiver.reports, receiver.errors) == ([], [])
    assert capfd.readouterr() == ("", "")


def test_a_client_that_reads_its_answer_and_closes_is_no_disconnect(receiver: Receiver) -> None:
    sock = _raw_post(receiver, _report())
    with sock:
        answer = b""
        while not answer.endswith(b"}"):  # the JSON answer is the last thing sent
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the answer did"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 202")
        sock.shutdown(socket.SHUT_WR)  # a clean close of the keep-alive connection
        # socketserver closes its end once the handler is done (any failure counted).
        assert sock.recv(65536) == b""
    assert (receiver.disconnects, receiver.errors) == (0, [])


def test_a_failing_handler_is_recorded_in_one_line_not_printed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with Receiver(geoip={"unserializable": object()}) as receiver:
        port = urlsplit(receiver.geoip_url).port or 0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            # socketserver records the failure, then closes: the EOF comes after it.
            assert sock.recv(65536) == b""
        assert receiver.errors == ["TypeError: Object of type object is not JSON serializable"]
        assert (receiver.error_count, receiver.disconnects) == (1, 0)
    assert capfd.readouterr() == ("", "")
