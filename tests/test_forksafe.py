"""Fork safety of the state stores, on real SQLite files and real forked children:
a fork waits for a SQLite call in progress to end, or leaves the child's store
refusing all work when it does not end within the fork wait."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import FORK, integrity

from phonehome_plugin.state import forksafe
from phonehome_plugin.state import store as store_module
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.store import Store


@contextmanager
def _inside_a_transaction(store: Store) -> Iterator[threading.Event]:
    """A thread of this process inside a write transaction on ``store`` until the
    yielded event is set (at the latest when the block ends)."""
    inside, release = threading.Event(), threading.Event()

    def slow(c: sqlite3.Connection) -> None:
        c.execute(store_module._UPSERT_ADD, ("sequence", 1))
        inside.set()
        release.wait(10)

    writer = threading.Thread(target=store.run, args=(slow,))
    writer.start()
    try:
        assert inside.wait(5)
        yield release
    finally:
        release.set()
        writer.join(5)


def _child_after_fork(store: Store, data_dir: Path, out: Connection) -> None:
    inherited = store.next_sequence()
    own = open_store(data_dir)
    fresh = own.next_sequence()
    out.send({"inherited": inherited, "fresh": fresh, "memory": store.memory or own.memory})


class _ForkWaits:
    """Stands in for :data:`.forksafe.GUARD` (the same lock underneath) and says when
    the fork starts waiting for it: the before-fork handler is the only caller that
    passes a timeout."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout >= 0:
            self.waiting.set()
        return bool(self.lock.acquire(blocking, timeout))

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return bool(self.lock.__enter__())

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)


def test_a_fork_during_a_transaction_hands_the_child_no_held_lock(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.next_sequence() == 1
    guard = _ForkWaits(forksafe.GUARD)
    monkeypatch.setattr(forksafe, "GUARD", guard)
    # The transaction ends only once the fork waits for it, however long that takes
    # (the backstop is raised out of reach: this test is about the wait, not about it).
    monkeypatch.setattr(forksafe, "FORK_WAIT", 300.0)
    with _inside_a_transaction(store) as release:

        def end_once_the_fork_waits() -> None:
            if guard.waiting.wait(60):
                release.set()

        ender = threading.Thread(target=end_once_the_fork_waits)
        ender.start()
        reader, sender = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_child_after_fork, args=(store, tmp_path, sender))
        child.start()  # waits in os.fork() until the transaction has ended
        ender.join()
        assert guard.waiting.is_set(), "the fork did not wait for the transaction"
        assert reader.poll(60), "the child hung on a lock it inherited"
        found = reader.recv()
        child.join(30)
    assert child.exitcode == 0
    assert found["memory"] is False
    # The parent's transaction committed before the fork; the child counted on from it.
    assert (found["inherited"], found["fresh"]) == (3, 4)
    # The parent is unharmed and sees the child's writes.
    assert store.next_sequence() == 5


class _Released(_ForkWaits):
    """:class:`_ForkWaits` that also says when the forking thread gives it back (its
    after-fork handler in the parent, the only release from that thread)."""

    def __init__(self, lock: Any, forker: list[int]) -> None:
        super().__init__(lock)
        self.forker = forker
        self.given_back = threading.Event()

    def release(self) -> None:
        if threading.get_ident() in self.forker:
            self.given_back.set()
        super().release()


def test_a_thread_leaving_the_guard_steps_aside_until_the_waiting_fork_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocked, the plugin's thread holds no GIL: the forking thread goes on at once
    instead of waiting a switch interval for a worker busy in Python."""
    forker: list[int] = []
    guard = _Released(forksafe.GUARD, forker)
    monkeypatch.setattr(forksafe, "GUARD", guard)
    monkeypatch.setattr(forksafe, "FORK_WAIT", 300.0)  # the backstop out of reach
    seen: list[bool] = []

    def worker() -> None:
        with forksafe.held():
            assert guard.waiting.wait(60), "the fork never waited for the guard"
        # Back from stepping aside: the fork has had the guard and given it back.
        seen.append(guard.given_back.is_set())

    def fork() -> None:
        forker.append(threading.get_ident())
        process = FORK.Process(target=int)
        process.start()
        process.join(30)

    inside = threading.Thread(target=worker)
    inside.start()
    forking = threading.Thread(target=fork)
    forking.start()
    inside.join(60)
    forking.join(60)
    assert seen == [True]


def test_a_fork_waits_for_one_statement_of_a_transaction_not_for_the_rest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction gives way at its next statement: rolled back, then run again
    after the fork, its effect applied once."""
    assert store.next_sequence() == 1
    guard = _ForkWaits(forksafe.GUARD)
    monkeypatch.setattr(forksafe, "GUARD", guard)
    monkeypatch.setattr(forksafe, "FORK_WAIT", 300.0)  # the backstop out of reach
    inside = threading.Event()
    said: list[str] = []

    def work(c: Any) -> None:
        said.append("run")
        c.execute(store_module._UPSERT_ADD, ("sequence", 1))
        if len(said) == 1:
            inside.set()
            assert guard.waiting.wait(60), "the fork never waited for the guard"
        try:
            c.execute(store_module._UPSERT_ADD, ("sequence", 10))  # the first run stops here
        except Exception:  # work that shrugs off a failed statement cannot commit half a run
            said.append("swallowed")
        said.append("done")

    writer = threading.Thread(target=store.run, args=(work,))
    writer.start()
    assert inside.wait(30)
    child = FORK.Process(target=int)
    child.start()  # waits in os.fork() for the statement in progress only
    said.append("forked")
    writer.join(60)
    child.join(30)
    assert child.exitcode == 0
    # The first run gave way and the fork went on; the second ran after the fork (when
    # this thread got back from Process.start() to say so is the scheduler's business).
    assert [step for step in said if step != "forked"] == ["run", "run", "done"]
    assert said.index("forked") > 0
    assert store.next_sequence() == 1 + 11 + 1, "the transaction's effect applied once"


def test_a_fork_keeps_memory_state_in_the_child(tmp_path: Path) -> None:
    memory = open_store(None)
    memory.set("k", "v")
    reader, sender = FORK.Pipe(duplex=False)

    def child() -> None:
        sender.send((memory.get("k"), memory.next_sequence(), memory.memory))

    process = FORK.Process(target=child)
    process.start()
    assert reader.poll(10)
    assert reader.recv() == ("v", 1, True)
    process.join(5)
    assert process.exitcode == 0


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_transaction_outlasting_the_fork_wait_leaves_the_childs_store_refusing_work(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent thread may be inside SQLite at such a fork: the child never calls into
    it again (not even for memory), says so once, and the parent is unharmed."""
    monkeypatch.setattr(forksafe, "FORK_WAIT", 0.05)
    seen = _Seen()  # copied into the child with the fork: it hears the child's warning
    logging.getLogger("phonehome_plugin").addHandler(seen)
    reader, sender = FORK.Pipe(duplex=False)

    def child() -> None:
        refused = []
        for use in (store.next_sequence, lambda: open_store(None).next_sequence()):
            try:
                use()
            except forksafe.ForkedMidCallError as error:
                refused.append(str(error))
        sender.send((refused, seen.messages))

    try:
        with _inside_a_transaction(store):
            process = FORK.Process(target=child)
            process.start()
            assert reader.poll(10), "the child hung on the parent's transaction"
            refused, warnings = reader.recv()
            process.join(5)
    finally:
        logging.getLogger("phonehome_plugin").removeHandler(seen)
    assert process.exitcode == 0
    # Neither the inherited store nor a new one, not even in memory, calls into SQLite.
    assert len(refused) == 2 and "telemetry is off in this process" in refused[0], refused
    assert len([w for w in warnings if "forked while the parent" in w]) == 1, warnings
    assert not store.memory
    assert store.next_sequence() == 2  # the parent's transaction committed after the fork
    assert integrity(tmp_path / store_module.FILENAME) == "ok"


def _pg_child(store: Store, out: Connection) -> None:
    out.send(store.next_sequence())
    # Then a normal exit: the interpreter's finalisers run here, and must not reach
    # the session this process shares with its parent.


@pytest.mark.postgres
def test_a_postgresql_child_never_touches_the_session_it_shares_with_its_parent(
    pg_url: str,
) -> None:
    store = open_store(None, pg_url)
    assert not store.memory
    assert store.next_sequence() == 1

    def backend() -> int:
        return int(store.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]))

    session = backend()
    for round_ in range(2):
        reader, sender = FORK.Pipe(duplex=False)
        with _inside_a_transaction(store):
            # Forked mid-transaction: the fork does not wait for it, and the child
            # neither uses nor closes the session it shares with the parent.
            child = FORK.Process(target=_pg_child, args=(store, sender))
            child.start()
        assert reader.poll(20), "the child hung on the parent's session"
        # The parent's transaction (+1) committed; the child counted on from it.
        assert reader.recv() == 3 + 3 * round_
        child.join(10)
        assert child.exitcode == 0
        assert store.next_sequence() == 4 + 3 * round_
        assert backend() == session, "the parent had to reconnect: the child ended its session"
    store.close()
