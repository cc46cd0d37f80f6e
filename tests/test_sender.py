"""The sender: real outbox file, real transport, real loopback endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultservers import Behaviour, FaultServer, Reply, Silent

from phonehome_plugin.config.settings import OutboxLimits, Settings
from phonehome_plugin.delivery.retry import BACKOFF_BASE, RetryPolicy
from phonehome_plugin.delivery.sender import LEASE, Sender
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.state import history
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import FAILURES_KEY, Entry, Outbox

NOW = 1_772_438_400.0
HOUR = 3600.0
# Every answer here comes at once, so the series' wall-clock deadline never decides an
# outcome: a series ends by its answers and max_attempts alone, however loaded the
# machine (with a 1 s deadline, a stalled machine could end one early).
QUICK = RetryPolicy(deadline=60.0, max_attempts=4, wait_base=0.01, wait_max=0.05)


class Rig:
    """An outbox under a data dir, and senders for it (one per simulated process)."""

    def __init__(self, data_dir: Path, server: FaultServer) -> None:
        self.data_dir = data_dir
        self.server = server
        self.store = open_store(data_dir)
        self.outbox = Outbox(self.store, OutboxLimits())
        self.cancel = threading.Event()
        self._sequence = 0
        self._closing: list[Callable[[], None]] = [self.store.close]

    def sender(self, policy: RetryPolicy = QUICK, fresh_store: bool = False) -> Sender:
        outbox = self.outbox
        if fresh_store:
            store = open_store(self.data_dir)
            self._closing.append(store.close)
            outbox = Outbox(store, OutboxLimits())
        transport = Transport(Settings(endpoint=self.server.url, geoip_url=""))
        self._closing.append(transport.close)
        return Sender(outbox, transport, policy, HOUR, self.cancel)

    def report(self, trigger: str = "periodic", at: float = NOW) -> Entry:
        self._sequence += 1
        rid = f"0190{self._sequence:04d}-0000-7000-8000-000000000000"
        body = json.dumps({"report_id": rid, "sequence": self._sequence}).encode()
        entry = Entry(rid, self._sequence, trigger, at, body)
        self.outbox.put(entry, at)
        return entry

    def close(self) -> None:
        for close in reversed(self._closing):
            close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(then=Reply(202)) as running:
        yield running


@pytest.fixture
def rig(tmp_path: Path, server: FaultServer) -> Iterator[Rig]:
    made = Rig(tmp_path, server)
    yield made
    made.cancel.set()
    made.close()


def script(server: FaultServer, *behaviours: Behaviour, then: Behaviour | None = None) -> None:
    server.behave(behaviours, then=then or Reply(202))


def test_due_reports_go_out_oldest_first_and_leave_the_outbox(rig: Rig) -> None:
    entries = [rig.report() for _ in range(3)]
    assert rig.sender().deliver_due(NOW) == 3
    assert [seen.key for seen in rig.server.requests] == [e.report_id for e in entries]
    assert rig.outbox.pending() == []
    assert [e.result for e in history.recent(rig.store)] == ["sent"] * 3


def test_a_report_not_yet_due_waits(rig: Rig) -> None:
    rig.outbox.put(Entry("later", 1, "periodic", NOW, b"{}", 0, NOW + 60), NOW)
    assert rig.sender().deliver_due(NOW) == 0
    assert rig.server.connections == 0


def test_a_retry_inside_the_series_is_counted(rig: Rig) -> None:
    script(rig.server, Reply(500), Reply(503))
    entry = rig.report()
    assert rig.sender().deliver_due(NOW) == 1
    assert rig.server.accepted == {entry.report_id: 1}
    assert rig.store.counters("delivery.") == {"retried": 2}


def test_a_final_4xx_drops_the_report_counts_it_and_goes_on(rig: Rig) -> None:
    script(rig.server, Reply(422))
    bad, good = rig.report(), rig.report()
    assert rig.sender().deliver_due(NOW) == 1
    assert rig.outbox.pending() == []
    assert rig.server.accepted == {good.report_id: 1}
    assert rig.store.counters("delivery.") == {"dropped": 1, "rejected": 1}
    assert [(e.report_id, e.result) for e in reversed(history.recent(rig.store))] == [
        (bad.report_id, "rejected"),
        (good.report_id, "sent"),
    ]


@pytest.mark.parametrize(
    "answer", [Reply(307, {"Location": "https://elsewhere.example"}), Reply(501)]
)
def test_an_answer_that_is_neither_is_kept_without_hammering(rig: Rig, answer: Reply) -> None:
    script(rig.server, then=answer)
    entry = rig.report()
    rig.sender().deliver_due(NOW)
    assert rig.server.connections == 1
    assert [e.report_id for e in rig.outbox.pending()] == [entry.report_id]
    assert rig.store.counters("delivery.") == {"failed": 1}


def test_a_failed_series_keeps_the_report_and_closes_the_gate(rig: Rig) -> None:
    script(rig.server, then=Reply(503))
    first, second = rig.report(), rig.report()
    sender = rig.sender()
    assert sender.deliver_due(NOW) == 0
    assert rig.server.connections == QUICK.max_attempts
    # The round stopped at the first failure: the second report was not tried.
    assert {s.key for s in rig.server.requests} == {first.report_id}
    kept = {e.report_id: e for e in rig.outbox.pending()}
    assert set(kept) == {first.report_id, second.report_id}
    assert kept[first.report_id].attempts == 1
    gate = rig.outbox.gate()
    assert NOW + BACKOFF_BASE / 2 <= gate <= NOW + BACKOFF_BASE
    assert rig.outbox.next_due() == gate
    # Before the gate nothing is tried, however often the worker asks.
    for offset in (1.0, 10.0, gate - NOW - 0.001):
        assert sender.deliver_due(NOW + offset) == 0
    assert rig.server.connections == QUICK.max_attempts
    # From the gate on both go out, in order.
    script(rig.server)
    assert sender.deliver_due(gate) == 2
    assert set(rig.server.accepted) == {first.report_id, second.report_id}
    assert rig.store.get(FAILURES_KEY) == "0"
    assert rig.store.counters("delivery.") == {"failed": 1, "retried": 3}


def test_retry_after_longer_than_the_deadline_becomes_the_not_before_time(rig: Rig) -> None:
    script(rig.server, Reply(429, {"Retry-After": "900"}))
    entry = rig.report()
    sender = rig.sender()
    assert sender.deliver_due(NOW) == 0
    assert rig.server.connections == 1  # no in-series wait could fit 900 s
    assert rig.outbox.pending()[0].not_before >= NOW + 900
    assert sender.deliver_due(NOW + 899) == 0
    assert sender.deliver_due(NOW + 900) == 1
    assert rig.server.accepted == {entry.report_id: 1}


def test_the_backoff_grows_to_one_probe_per_interval(rig: Rig) -> None:
    script(rig.server, then=Reply(503))
    rig.report()
    sender = rig.sender(RetryPolicy(deadline=60.0, max_attempts=1))
    now, gaps = NOW, []
    for _ in range(10):
        sender.deliver_due(now)
        gate = rig.outbox.gate()
        gaps.append(gate - now)
        now = gate
    assert gaps[0] <= BACKOFF_BASE
    assert gaps == sorted(gaps)
    assert gaps[-3:] == [HOUR] * 3
    assert rig.server.connections == 10


def test_the_backoff_survives_a_restart(rig: Rig) -> None:
    script(rig.server, then=Reply(503))
    rig.report()
    rig.sender().deliver_due(NOW)
    gate = rig.outbox.gate()
    before = rig.server.connections
    restarted = rig.sender(fresh_store=True)
    assert restarted.deliver_due(NOW + 1) == 0
    assert rig.server.connections == before
    script(rig.server)
    assert restarted.deliver_due(gate) == 1


def cancel_once_held(server: FaultServer, cancel: threading.Event) -> None:
    assert server.wait_for(lambda s: len(s.requests) == 1, 60), "no POST arrived"
    cancel.set()


def test_a_cancelled_series_leaves_the_report_due_at_once(rig: Rig) -> None:
    script(rig.server, Silent())
    entry = rig.report()
    sender = rig.sender(RetryPolicy(deadline=60.0))
    # Shutdown comes while the endpoint holds the POST (not after some wall time).
    cancelling = threading.Thread(target=cancel_once_held, args=(rig.server, rig.cancel))
    cancelling.start()
    assert sender.deliver_due(NOW) == 0
    cancelling.join(60)
    assert len(rig.server.requests) == 1, "the POST was under way when the cancel came"
    [kept] = rig.outbox.pending()
    assert kept == entry  # no attempt counted, no not-before time
    assert rig.outbox.gate() == 0.0
    assert rig.store.counters("delivery.") == {}
    assert history.recent(rig.store) == []


def test_two_processes_never_send_the_same_report_at_once(rig: Rig) -> None:
    script(rig.server, then=Reply(202))
    entries = [rig.report() for _ in range(40)]
    senders = [rig.sender(fresh_store=True) for _ in range(3)]
    threads = [threading.Thread(target=s.deliver_due, args=(NOW,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert rig.outbox.pending() == []
    assert rig.server.accepted == {e.report_id: 1 for e in entries}
    assert sum(rig.server.duplicates.values()) == 0
    assert len(rig.server.requests) == 40


def test_a_report_leased_by_a_process_that_died_is_sent_after_the_lease(rig: Rig) -> None:
    entry = rig.report()
    assert rig.outbox.lease(NOW, LEASE) == entry  # ...and the process dies here
    sender = rig.sender()
    assert sender.deliver_due(NOW + LEASE - 1) == 0
    assert sender.deliver_due(NOW + LEASE) == 1
    assert rig.server.accepted == {entry.report_id: 1}
