"""The state store's interface on a real SQLite file: claims, counters and
sequences, across connections."""

from __future__ import annotations

from pathlib import Path

from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import Store

# Claims and counters ---------------------------------------------------------------


def test_a_claim_is_taken_once_until_its_lease_runs_out(store: Store) -> None:
    assert store.claim("periodic:7", "a", now=1000.0, lease=120.0)
    assert store.claim("periodic:7", "a", now=1001.0, lease=120.0)  # its owner may go on
    assert not store.claim("periodic:7", "b", now=1100.0, lease=120.0)
    # "a" died without finishing: after the lease another process takes over.
    assert store.claim("periodic:7", "b", now=1121.0, lease=120.0)
    assert not store.claim("periodic:7", "a", now=1122.0, lease=120.0)
    store.finish_claim("periodic:7")
    assert store.is_done("periodic:7")
    # Done is forever, whoever asks and however late.
    assert not store.claim("periodic:7", "b", now=10**9, lease=120.0)
    assert not store.claim("periodic:7", "c", now=10**9, lease=120.0)
    assert not store.is_done("periodic:8")


def test_claims_hold_across_connections(tmp_path: Path, store: Store) -> None:
    other = open_store(tmp_path)
    assert store.claim("first_user", "p1", 0.0, 120.0)
    assert not other.claim("first_user", "p2", 1.0, 120.0)
    store.finish_claim("first_user")
    assert other.is_done("first_user")
    other.close()


def test_counters_add_read_and_take(store: Store) -> None:
    store.add({"delivery.failed": 2, "delivery.retried": 3, "delivery.dropped": 0})
    store.add({"delivery.failed": 1, "exec.completed": 5})
    assert store.counters("delivery.") == {"failed": 3, "retried": 3}
    assert store.take("delivery.") == {"failed": 3, "retried": 3}
    assert store.counters("delivery.") == {}
    assert store.counters("exec.") == {"completed": 5}


def test_setdefault_keeps_the_first_value(store: Store) -> None:
    assert store.setdefault("salt", lambda: "one") == "one"
    assert store.setdefault("salt", lambda: "two") == "one"
    assert store.instance_id() == store.instance_id()


def test_next_sequence_interleaves_across_two_connections(tmp_path: Path, store: Store) -> None:
    other = open_store(tmp_path)
    seen = [s.next_sequence() for _ in range(20) for s in (store, other)]
    assert seen == list(range(1, 41))
    other.close()
