"""The state store's contract (:mod:`phonehome_plugin.state.store`), run once on each
backend: a SQLite file and a PostgreSQL database. Key-value state, counters, claims and
sequences across connections, processes and threads, transactions, the outbox and the
delivery history. What only one backend does is in ``test_sqlite.py`` and
``test_postgres.py``.

The PostgreSQL case of each test needs a server (see the README's "PostgreSQL tests");
it skips, saying why, when none answers.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection
from typing import Any

import pytest
from store_support import Opener

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state import history
from phonehome_plugin.state.outbox import FAILURES_KEY, GATE_KEY, Entry, Outbox
from phonehome_plugin.state.store import Store

FORK = multiprocessing.get_context("fork")
NOW = 1_772_438_400.0


@pytest.fixture
def opener(any_opener: Opener) -> Opener:
    return any_opener


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def event(entry: Entry, at: float = NOW, result: str = "sent") -> history.Event:
    return history.Event(entry.report_id, entry.sequence, entry.trigger, at, result, "test")


def entry(n: int, trigger: str = "periodic", at: float = NOW, size: int = 10) -> Entry:
    return Entry(f"r{n:04d}", n, trigger, at, bytes([n % 256]) * size)


def test_kv_set_get_and_setdefault(opener: Opener) -> None:
    one, two = opener(), opener()
    assert one.get("k") is None
    one.set("k", "v1")
    one.set("k", "v2")
    assert two.get("k") == "v2"
    assert one.setdefault("salt", lambda: "first") == "first"
    assert two.setdefault("salt", lambda: "second") == "first"
    assert one.setdefault("salt", lambda: "third") == "first"
    assert one.instance_id() == one.instance_id() == two.instance_id()


def test_counters_add_read_and_take(store: Store) -> None:
    store.add({"delivery.failed": 2, "delivery.retried": 3, "delivery.dropped": 0})
    store.add({"delivery.failed": 1, "exec.completed": 5})
    assert store.counters("delivery.") == {"failed": 3, "retried": 3}
    assert store.take("delivery.") == {"failed": 3, "retried": 3}
    assert store.counters("delivery.") == {}
    assert store.counters("exec.") == {"completed": 5}


def test_counters_hold_lifetime_totals_past_32_bits(store: Store) -> None:
    store.add({"exec.completed": 3_000_000_000})
    store.add({"exec.completed": 3_000_000_000})
    assert store.counters("exec.") == {"completed": 6_000_000_000}


def always(holder: str, stamp: float) -> bool:
    return True


def test_a_claim_is_taken_once_until_its_holder_may_be_taken_over(opener: Opener) -> None:
    store, other = opener(), opener()
    assert store.claim("periodic:7", "a", now=1000.0)
    assert store.claim("periodic:7", "a", now=1001.0)  # its owner may go on
    assert not other.claim("periodic:7", "b", now=5000.0)  # never, by default
    seen: list[tuple[str, float]] = []

    def judge(holder: str, stamp: float) -> bool:
        seen.append((holder, stamp))
        return True

    # "a" is gone (the caller's judge says so): another process takes over.
    assert other.claim("periodic:7", "b", now=900.0, may_take=judge)
    assert seen == [("a", 1001.0)]  # the holder and the stamp of its last claim
    assert store.holder("periodic:7") == ("b", False)
    assert not store.claim("periodic:7", "a", now=1122.0)
    other.finish_claim("periodic:7")
    assert store.is_done("periodic:7") and store.holder("periodic:7") == ("b", True)
    # Done is forever, whoever asks, however late, whatever the judge says.
    assert not store.claim("periodic:7", "b", now=10**9, may_take=always)
    assert not store.claim("periodic:7", "c", now=10**9, may_take=always)
    assert not store.is_done("periodic:8") and store.holder("periodic:8") is None


def test_claims_hold_across_connections(opener: Opener) -> None:
    store, other = opener(), opener()
    assert store.claim("first_user", "p1", 0.0)
    assert not other.claim("first_user", "p2", 1.0)
    store.finish_claim("first_user")
    assert other.is_done("first_user")


def test_next_sequence_interleaves_across_connections(opener: Opener) -> None:
    one, two = opener(), opener()
    assert [s.next_sequence() for _ in range(20) for s in (one, two)] == list(range(1, 41))


def _sequences(open_one: Opener, count: int, out: Connection) -> None:
    store = open_one()
    out.send([store.next_sequence() for _ in range(count)])
    store.close()


def test_next_sequence_is_unique_across_processes_and_threads(opener: Opener) -> None:
    store = opener()
    got: list[int] = []
    lock = threading.Lock()

    def in_thread() -> None:
        values = [store.next_sequence() for _ in range(30)]
        with lock:
            got.extend(values)

    pipes = [FORK.Pipe(duplex=False) for _ in range(3)]
    children = [FORK.Process(target=_sequences, args=(opener, 30, w)) for _, w in pipes]
    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for child in children:
        child.start()
    for thread in threads:
        thread.start()
    for (reader, _), child in zip(pipes, children, strict=True):
        assert reader.poll(30)
        got.extend(reader.recv())
        child.join(10)
        assert child.exitcode == 0
    for thread in threads:
        thread.join(10)
    assert sorted(got) == list(range(1, 151))
    # The parent's store still works after the forks.
    assert store.next_sequence() == 151


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    def half(c: Any) -> None:
        c.execute("INSERT INTO kv (key, value) VALUES ('half', 'done')")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        store.run(half)
    assert store.get("half") is None
    store.set("after", "ok")  # the store is usable after a rolled-back transaction
    assert store.get("after") == "ok"


def test_the_outbox_stores_leases_and_settles(opener: Opener) -> None:
    one, two = Outbox(opener(), OutboxLimits()), Outbox(opener(), OutboxLimits())
    body = '{"ünïcode": "ok", "nul": "\\u0000"}'.encode() + bytes(range(256))
    first = Entry("r1", 1, "startup", NOW, body)
    one.put(first, NOW)
    one.put(first, NOW)  # the same report twice is one report
    one.put(entry(2), NOW)
    assert two.pending() == [first, entry(2)]
    assert two.size() == (2, len(body) + 10)
    leased = one.lease(NOW, hold=300.0)
    assert leased == first
    assert two.lease(NOW, hold=300.0) == entry(2)  # the other process gets the next one
    assert two.lease(NOW + 299, hold=300.0) is None
    again = two.lease(NOW + 300, hold=300.0)  # the lease ran out: due again
    assert again is not None and again.report_id == "r1"
    two.sent(again, event(again), {"delivery.retried": 1})
    assert [e.report_id for e in one.pending()] == ["r0002"]
    assert one.store.counters("delivery.") == {"retried": 1}
    assert one.next_due() == NOW + 300


def test_a_failed_series_closes_the_gate_and_a_success_opens_it(store: Store) -> None:
    outbox = Outbox(store, OutboxLimits())
    outbox.put(entry(1), NOW)
    leased = outbox.lease(NOW, 300.0)
    assert leased is not None
    failures, when = outbox.failed(leased, event(leased, result="failed"), {}, lambda n: NOW + 60)
    assert (failures, when) == (1, NOW + 60)
    assert store.get(FAILURES_KEY) == "1" and outbox.gate() == NOW + 60
    assert outbox.lease(NOW + 59, 300.0) is None
    leased = outbox.lease(NOW + 60, 300.0)
    assert leased is not None and leased.attempts == 1
    outbox.sent(leased, event(leased), {})
    assert store.get(FAILURES_KEY) == "0" and store.get(GATE_KEY) == "0"
    assert outbox.pending() == []
    assert store.counters("delivery.") == {"failed": 1}


def test_the_outbox_bounds_evict_periodic_first_and_count_it(store: Store) -> None:
    outbox = Outbox(store, OutboxLimits(max_reports=3))
    outbox.put(entry(1, "first_user"), NOW)
    outbox.put(entry(2, "startup"), NOW)
    for n in range(3, 7):
        outbox.put(entry(n), NOW)
    assert [e.sequence for e in outbox.pending()] == [1, 2, 6]
    assert store.counters("delivery.") == {"dropped": 3, "evicted": 3}
    # The age bound drops on the way to a lease.
    assert outbox.lease(NOW + 8 * 86400, 300.0) is None
    assert outbox.pending() == []


def test_history_is_newest_first_and_trimmed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "KEEP", 5)
    for n in range(1, 9):
        history.record(store, event(entry(n), at=NOW + n))
    recent = history.recent(store, limit=10)
    assert [e.sequence for e in recent] == [8, 7, 6, 5, 4]
    assert recent[0] == history.Event("r0008", 8, "periodic", NOW + 8, "sent", "test")
    assert [e.sequence for e in history.recent(store, limit=2)] == [8, 7]
