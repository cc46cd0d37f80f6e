"""Tests for :mod:`phonehome_plugin.counting.tally`: exact execution counts from many threads."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from state_walk import strings_in

from hookspecs import signals
from phonehome_plugin.counting.tally import STATUSES, UNKNOWN, ExecutionTally

THREADS = 8
SENDS = 12_500
BUCKETS = (*STATUSES, UNKNOWN)


class FakeApp:
    """The sender of every signal; only its identity matters here."""


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def tally(app: FakeApp) -> Iterator[ExecutionTally]:
    """A tally whose receiver is connected to the real ``execution-finished`` signal."""
    counting = ExecutionTally()
    signals.execution_finished.connect(counting.receiver, sender=app, weak=False)
    yield counting
    signals.execution_finished.disconnect(counting.receiver)  # from every sender


def _send(app: Any, status: Any, **extra: Any) -> None:
    signals.execution_finished.send(
        app, pipeline_id="pipe-1", status=status, duration_ms=12, **extra
    )


def _zeros() -> dict[str, int]:
    return dict.fromkeys(BUCKETS, 0)


def _status_of(thread: int, index: int) -> str:
    return BUCKETS[(thread + index) % len(BUCKETS)]


def _expected(threads: range, sends: int) -> dict[str, int]:
    expected = _zeros()
    for thread in threads:
        for index in range(sends):
            expected[_status_of(thread, index)] += 1
    return expected


def _run_threads(app: Any, threads: range, sends: int) -> list[threading.Thread]:
    """Start real threads together, each sending ``sends`` signals; return them joined."""
    start = threading.Barrier(len(threads))

    def emit(thread: int) -> None:
        start.wait()
        for index in range(sends):
            status = _status_of(thread, index)
            _send(app, "bogus-status" if status == UNKNOWN else status)

    workers = [threading.Thread(target=emit, args=(t,)) for t in threads]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return workers


def test_exact_totals_from_eight_threads_through_the_real_signal(
    app: FakeApp, tally: ExecutionTally
) -> None:
    workers = _run_threads(app, range(THREADS), SENDS)
    expected = _expected(range(THREADS), SENDS)
    assert sum(expected.values()) == THREADS * SENDS
    assert all(not worker.is_alive() for worker in workers)
    # The threads have exited; their counts stay.
    assert tally.totals() == expected
    assert tally.take_delta() == expected
    # Retiring the dead threads' dicts keeps the totals exact.
    assert tally.totals() == expected
    assert tally.take_delta() == _zeros()


def test_counts_of_exited_threads_survive_later_threads(
    app: FakeApp, tally: ExecutionTally
) -> None:
    _run_threads(app, range(4), 1_000)
    first = _expected(range(4), 1_000)
    assert tally.take_delta() == first
    _run_threads(app, range(4, 8), 1_000)
    second = _expected(range(4, 8), 1_000)
    assert tally.take_delta() == second
    assert tally.totals() == {s: first[s] + second[s] for s in BUCKETS}


def test_totals_include_live_threads_mid_run(app: FakeApp, tally: ExecutionTally) -> None:
    sent = threading.Event()
    release = threading.Event()

    def emit() -> None:
        for _ in range(10):
            _send(app, "failed")
        sent.set()
        release.wait(5)

    worker = threading.Thread(target=emit)
    worker.start()
    try:
        assert sent.wait(5)
        assert worker.is_alive()
        assert tally.totals()["failed"] == 10
        assert tally.take_delta()["failed"] == 10
    finally:
        release.set()
        worker.join()
    assert tally.take_delta() == _zeros()
    assert tally.totals()["failed"] == 10


def test_each_status_has_its_bucket(app: FakeApp, tally: ExecutionTally) -> None:
    for status, times in zip(STATUSES, (1, 2, 3, 4), strict=True):
        for _ in range(times):
            _send(app, status)
    assert tally.totals() == {
        "completed": 1,
        "failed": 2,
        "completed_with_errors": 3,
        "cancelled": 4,
        "unknown": 0,
    }


@pytest.mark.parametrize(
    "status",
    [
        None,
        "",
        "COMPLETED",
        "running",
        "unknown",
        3,
        1.5,
        True,
        ("completed",),
        ["completed"],
        {"status": "completed"},
        {"completed"},
    ],
)
def test_unexpected_statuses_count_as_unknown_and_never_raise(
    app: FakeApp, tally: ExecutionTally, status: Any
) -> None:
    _send(app, status)
    expected = _zeros()
    expected[UNKNOWN] = 1
    assert tally.totals() == expected


def test_missing_status_counts_as_unknown(app: FakeApp, tally: ExecutionTally) -> None:
    signals.execution_finished.send(app, pipeline_id="p", duration_ms=1)
    assert tally.totals()[UNKNOWN] == 1


def test_other_senders_are_not_counted(app: FakeApp, tally: ExecutionTally) -> None:
    _send(FakeApp(), "completed")
    _send(app, "completed")
    assert tally.totals()["completed"] == 1


def test_receiver_stays_connected_without_other_references(app: FakeApp) -> None:
    counting = ExecutionTally()
    signals.execution_finished.connect(counting.receiver, sender=app, weak=False)
    try:
        gc.collect()
        _send(app, "completed")
        assert counting.totals()["completed"] == 1
    finally:
        signals.execution_finished.disconnect(counting.receiver)  # from every sender


# Riders ---------------------------------------------------------------------------------


class Rider:
    """A third-party receiver of ``execution-finished``: records what it was passed."""

    def __init__(self, raising: bool = False) -> None:
        self.raising = raising
        self.got: list[tuple[Any, dict[str, Any]]] = []
        self.failures: list[Exception] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.got.append((sender, kwargs))
        if self.raising:
            raise RuntimeError("a third party's bug")

    def failed(self, error: Exception) -> None:
        self.failures.append(error)


def test_riders_get_what_the_host_sent_as_it_came(app: FakeApp, tally: ExecutionTally) -> None:
    rider = Rider()
    tally.board(((rider, rider.failed),))
    _send(app, "failed", token="t")
    signals.execution_finished.send(app, pipeline_id="p", duration_ms=1)  # no status
    assert rider.got == [
        (app, {"pipeline_id": "pipe-1", "status": "failed", "duration_ms": 12, "token": "t"}),
        (app, {"pipeline_id": "p", "duration_ms": 1}),  # not a status=None the host never sent
    ]
    assert tally.totals()["failed"] == 1 and tally.totals()[UNKNOWN] == 1


def test_a_raising_rider_costs_neither_the_count_nor_the_host(
    app: FakeApp, tally: ExecutionTally
) -> None:
    bad, good = Rider(raising=True), Rider()
    tally.board(((bad, bad.failed), (good, good.failed)))
    for _ in range(5):
        _send(app, "completed")  # raises nothing into the sender
    assert tally.totals()["completed"] == 5
    assert len(good.got) == 5 and len(bad.failures) == 5


def test_riders_stop_when_the_board_is_cleared(app: FakeApp, tally: ExecutionTally) -> None:
    rider = Rider()
    tally.board(((rider, rider.failed),))
    _send(app, "completed")
    tally.board(())
    _send(app, "completed")
    assert len(rider.got) == 1 and tally.totals()["completed"] == 2


def test_extra_arguments_are_never_kept(app: FakeApp, tally: ExecutionTally) -> None:
    secret = "hunter2-PASSWORD-in-workflow"
    _send(
        app,
        "completed",
        workflow={"credentials": secret},
        user={"email": "alice@example.com"},
        token=secret,
    )
    assert tally.totals()["completed"] == 1
    seen = strings_in(tally)
    assert "completed" in seen  # the walk reaches the counts themselves
    assert not any(secret in text or "alice@example.com" in text for text in seen)


# take_delta -----------------------------------------------------------------------------


def test_take_delta_returns_counts_since_the_previous_call(
    app: FakeApp, tally: ExecutionTally
) -> None:
    assert tally.take_delta() == _zeros()
    for _ in range(3):
        _send(app, "completed")
    _send(app, "cancelled")
    assert tally.take_delta() == {**_zeros(), "completed": 3, "cancelled": 1}
    assert tally.take_delta() == _zeros()
    _send(app, "failed")
    assert tally.take_delta() == {**_zeros(), "failed": 1}
    # totals keep counting the whole life of the process.
    assert tally.totals() == {**_zeros(), "completed": 3, "cancelled": 1, "failed": 1}


def test_take_delta_reports_every_bucket(tally: ExecutionTally) -> None:
    assert set(tally.take_delta()) == set(BUCKETS)


# forget ---------------------------------------------------------------------------------


def test_forget_starts_again_from_zero(app: FakeApp, tally: ExecutionTally) -> None:
    _run_threads(app, range(2), 100)
    for _ in range(5):
        _send(app, "completed")
    tally.take_delta()
    _send(app, "failed")
    tally.forget()
    assert tally.totals() == _zeros()
    assert tally.take_delta() == _zeros()
    # This thread keeps counting after forget, from zero.
    _send(app, "failed")
    _run_threads(app, range(1), 10)
    expected = _expected(range(1), 10)
    expected["failed"] += 1
    assert tally.totals() == expected
    assert tally.take_delta() == expected


def test_forget_replaces_a_lock_left_held(app: FakeApp, tally: ExecutionTally) -> None:
    # In a forked child the lock may have been copied while a vanished thread held it.
    assert tally._lock.acquire(timeout=1)
    results: list[dict[str, int]] = []

    def in_the_child() -> None:
        tally.forget()
        _send(app, "completed")
        results.append(tally.take_delta())

    child = threading.Thread(target=in_the_child, daemon=True)
    child.start()
    child.join(5)
    assert not child.is_alive(), "forget() blocked on the inherited lock"
    assert results == [{**_zeros(), "completed": 1}]


def test_separate_tallies_count_separately(app: FakeApp, tally: ExecutionTally) -> None:
    other = ExecutionTally()
    other_app = FakeApp()
    signals.execution_finished.connect(other.receiver, sender=other_app, weak=False)
    try:
        _send(app, "completed")
        _send(other_app, "failed")
        _send(other_app, "failed")
    finally:
        signals.execution_finished.disconnect(other.receiver)
    assert tally.totals() == {**_zeros(), "completed": 1}
    assert other.totals() == {**_zeros(), "failed": 2}


# Thread churn -----------------------------------------------------------------------------


class _PausedSeat:
    """Stands in for a seat's weak reference: the fold's walk stops on it until released,
    so a test can act at the exact moment a fold is in progress (its lock held)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> object:
        self.reached.set()
        assert self.release.wait(10), "the test never released the fold"
        return self  # alive: the seat is kept


def test_a_new_threads_first_event_does_not_wait_for_a_fold_in_progress(
    app: FakeApp, tally: ExecutionTally
) -> None:
    # Churn before the fold: these threads' seats are what it walks.
    _run_threads(app, range(4), 10)
    paused = _PausedSeat()
    tally._seats.insert(0, (paused, _zeros()))  # type: ignore[arg-type]
    folds: list[dict[str, int]] = []
    fold = threading.Thread(target=lambda: folds.append(tally.take_delta()), daemon=True)
    fold.start()
    try:
        assert paused.reached.wait(5)  # the fold holds the readers' lock, mid-walk
        # A thread's first event, and its exit, while the fold is stopped inside its walk.
        newcomer = threading.Thread(target=_send, args=(app, "failed"), daemon=True)
        newcomer.start()
        newcomer.join(5)
        assert not newcomer.is_alive(), "a thread's first event waited for the fold"
    finally:
        paused.release.set()
        fold.join(5)
    # The seat appended while the fold walked was kept, not overwritten by the walk's
    # result: the fold (which sums after its walk) and every later read count its event.
    expected = _expected(range(4), 10)
    expected["failed"] += 1
    assert folds == [expected]
    tally._seats.pop(0)  # the stand-in (its counts are zero)
    assert tally.take_delta() == _zeros()
    assert tally.totals() == expected
    assert tally.seats() == 0


def test_an_ended_threads_seat_is_dropped_by_one_fold(app: FakeApp, tally: ExecutionTally) -> None:
    _send(app, "completed")  # this (live) thread's seat stays
    _run_threads(app, range(50), 3)
    assert tally.seats() == 51
    expected = _expected(range(50), 3)
    expected["completed"] += 1
    assert tally.take_delta() == expected
    assert tally.seats() == 1
    assert tally.totals() == expected  # the dropped seats' counts are kept, retired
    _send(app, "completed")
    assert tally.take_delta() == {**_zeros(), "completed": 1}


def test_the_tally_keeps_no_ended_thread_alive(app: FakeApp, tally: ExecutionTally) -> None:
    workers = _run_threads(app, range(20), 2)
    refs = [weakref.ref(worker) for worker in workers]
    del workers
    gc.collect()
    # Before any fold: nothing of an ended thread but its counts is kept.
    assert [ref for ref in refs if ref() is not None] == []
    assert tally.totals() == _expected(range(20), 2)


def test_totals_stay_exact_while_threads_come_and_go_during_folds(
    app: FakeApp, tally: ExecutionTally
) -> None:
    folded = _zeros()
    stop = threading.Event()

    def folding() -> None:
        while not stop.is_set():
            for status, n in tally.take_delta().items():
                folded[status] += n

    folder = threading.Thread(target=folding)
    folder.start()
    try:
        for wave in range(10):
            _run_threads(app, range(wave * 8, wave * 8 + 8), 200)
    finally:
        stop.set()
        folder.join()
    for status, n in tally.take_delta().items():
        folded[status] += n
    expected = _expected(range(80), 200)
    assert folded == expected
    assert tally.totals() == expected
