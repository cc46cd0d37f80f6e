"""Thread churn: a host that runs each execution on a short-lived thread.

Every thread that sends ``execution-finished`` gets a seat in the plugin's tally
(its own counts, see :mod:`phonehome_plugin.counting.tally`), and the worker's
fold walks the seats, retiring those of ended threads. Measured here, on the
plugin's runtime of a real host:

- a new thread's first event (the one that takes a seat) with 100,000 ended
  threads' seats not yet folded, while a fold of them runs on another thread:
  its thread CPU time (the budget), and its wall time less run-queue wait beside
  (it includes waiting for the GIL the fold's Python code holds, at most a switch
  interval at a time: machine- and load-dependent);
- whether a first event can complete while a fold holds the tally's lock (the
  lock a fold holds for its whole walk): the benchmark holds it, as a fold does;
- the memory the tally keeps per ended thread before a fold, and what is left of
  it after one fold (``tracemalloc``, allocations made by the tally's module), and
  whether any ``Thread`` object of an ended thread is kept alive.
"""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
import tracemalloc
import weakref
from typing import Any

from bench import clocks
from bench.host import TYPICAL, Host, host_with, make_inventory
from bench.results import Row
from hookspecs import signals

SECTION = "Thread churn (each execution on a short-lived thread)"
FIRST_EVENT_LIMIT = 50e-6
AFTER_FOLD_LIMIT = 1024
"""Bytes the tally may still hold for the ended threads after one fold (in all)."""
BATCH = 64


def _event(app: Any) -> None:
    signals.execution_finished.send(app, pipeline_id="p1", status="completed", duration_ms=3)


def churn(app: Any, count: int, keep: list[weakref.ref[threading.Thread]] | None = None) -> None:
    """Run ``count`` threads that each send one event and end (``BATCH`` at a time)."""
    done = 0
    while done < count:
        batch = [
            threading.Thread(target=_event, args=(app,), name="churn")
            for _ in range(min(BATCH, count - done))
        ]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
            if keep is not None:
                keep.append(weakref.ref(thread))
        done += len(batch)


class _Newcomers:
    """Threads started and parked before a moment, that each send their first event when
    released, measuring it (CPU, wall, run-queue wait, end time)."""

    def __init__(self, app: Any, count: int) -> None:
        self.go = threading.Event()
        self.found: list[tuple[int, int, int, int]] = []
        self._lock = threading.Lock()
        self._ready = threading.Barrier(count + 1)
        self.threads = [
            threading.Thread(target=self._run, args=(app,), name="newcomer") for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()
        self._ready.wait()

    def _run(self, app: Any) -> None:
        self._ready.wait()
        self.go.wait()
        queued = clocks.run_queue_ns()
        wall = time.perf_counter_ns()
        cpu = time.thread_time_ns()
        _event(app)
        cpu = time.thread_time_ns() - cpu
        end = time.perf_counter_ns()
        queued = clocks.run_queue_ns() - queued
        with self._lock:
            self.found.append((cpu, end - wall, queued, end))

    def release(self) -> None:
        self.go.set()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)

    @property
    def cpu(self) -> list[int]:
        return [f[0] for f in self.found]

    @property
    def unpreempted(self) -> list[int]:
        return [max(f[0], f[1] - f[2]) for f in self.found]


def _memory(app: Any, tally: Any, count: int) -> dict[str, Any]:
    """Bytes still allocated for ``count`` ended threads (anything the process keeps of
    them: the tally's seats, and what they keep alive), before and after one fold; and
    how many of their Thread objects are still alive."""
    # Everything but this module's own allocations (the weak references it keeps to the
    # threads, its lists), the filters' pattern caches (fnmatch, re), and threading's own
    # bookkeeping (its tables of threads grow and shrink on their own schedule; a Thread
    # object kept alive is counted by the weak references instead).
    only = [
        tracemalloc.Filter(False, pattern)
        for pattern in (
            __file__,
            tracemalloc.__file__,
            "*/fnmatch.py",
            "*/re/*",
            "*/threading.py",
            "*/_weakrefset.py",
        )
    ]

    def held() -> int:
        gc.collect()
        return sum(t.size for t in tracemalloc.take_snapshot().filter_traces(only).traces)

    # A round of the same churn first: what threading itself keeps for a batch of
    # threads at once (its table of live threads) is then in the floor.
    churn(app, 2 * BATCH)
    tally.take_delta()
    tracemalloc.start()
    try:
        floor = held()
        refs: list[weakref.ref[threading.Thread]] = []
        churn(app, count, refs)
        before = held()
        alive = sum(ref() is not None for ref in refs)
        seats_before = tally.seats()
        tally.take_delta()
        after = held()
    finally:
        tracemalloc.stop()
    return {
        "threads": count,
        "bytes_per_thread_before_fold": (before - floor) / count,
        "bytes_after_fold": max(0, after - floor),
        "thread_objects_alive": alive,
        "seats_before_fold": seats_before,
        "seats_after_fold": tally.seats(),
    }


def churn_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    dead = 3_000 if quick else 100_000
    sample = 1_000 if quick else 10_000
    newcomers = 8 if quick else 16
    host: Host = host_with("http://127.0.0.1:9/r")  # a closed port: reports wait in the outbox
    host.boot(make_inventory(TYPICAL, host.started_at))
    app, tally = host.app, host.runtime.tally
    try:
        memory = _memory(app, tally, sample)

        # A first event with no ended thread behind it (the baseline), then 100,000 of them.
        quiet = _Newcomers(app, newcomers)
        quiet.release()
        quiet.join()
        t0 = time.perf_counter()
        churn(app, dead)
        churned = time.perf_counter() - t0

        # First events while a fold walks the ended threads' seats.
        during = _Newcomers(app, newcomers)
        fold: dict[str, int] = {}

        def folding() -> None:
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            fold["seats"] = tally.seats()
            during.release()  # from inside the fold's thread: the fold starts at once
            tally.take_delta()
            fold["cpu"] = time.thread_time_ns() - cpu
            fold["end"] = time.perf_counter_ns()
            fold["wall"] = fold["end"] - wall

        folder = threading.Thread(target=folding, name="fold")
        switch = sys.getswitchinterval()
        folder.start()
        folder.join()
        during.join()
        finished_first = sum(f[3] < fold["end"] for f in during.found)

        # The lock a fold holds for its whole walk, held by the benchmark: does a new
        # thread's first event complete meanwhile?
        held = _Newcomers(app, 1)
        with tally._lock:  # as take_delta holds it
            held.release()
            held.threads[0].join(5.0)
            completed = not held.threads[0].is_alive()
        held.join()
        seats_after = tally.seats()
        counted = tally.totals()["completed"]
    finally:
        host.close()
    sent = 2 * BATCH + sample + dead + 2 * newcomers + 1
    cpu = statistics.median(during.cpu) / 1e9
    base = statistics.median(quiet.cpu) / 1e9
    rows = [
        Row(
            "churn.first_event",
            SECTION,
            f"a new thread's first event, {dead:,} ended threads behind it, a fold of them "
            "running: CPU",
            cpu,
            baseline="no ended thread, no fold",
            baseline_value=base,
            ratio=cpu / base if base else None,
            limit=FIRST_EVENT_LIMIT,
            budget="<= 50 µs CPU",
            note=f"{len(during.found)} new threads, released together from inside the fold "
            f"(which walked {fold['seats']:,} seats in {fold['wall'] / 1e6:.1f} ms wall, "
            f"{fold['cpu'] / 1e6:.1f} ms CPU); median thread CPU of the first event, largest "
            f"{max(during.cpu) / 1e3:.1f} µs (with no ended thread and no fold: largest "
            f"{max(quiet.cpu) / 1e3:.1f} µs: a new thread's first Python code touches new "
            "memory). Wall less run-queue wait (machine-dependent: "
            f"it includes waiting for the GIL the fold's Python holds, at most "
            f"{switch * 1e3:.0f} ms at a time): median "
            f"{statistics.median(during.unpreempted) / 1e3:.0f} µs, largest "
            f"{max(during.unpreempted) / 1e3:.0f} µs; {finished_first} of "
            f"{len(during.found)} finished before the fold did. Churning {dead:,} threads "
            f"took {churned:.1f} s.",
        ),
        Row(
            "churn.lock",
            SECTION,
            "a new thread's first event completes while a fold holds the tally's lock",
            None,
            budget="completes",
            ok=completed,
            note="The benchmark holds the lock `take_delta` holds for its whole walk, and "
            "waits up to 5 s for a new thread's first event: "
            + ("it completed." if completed else "it did not (it waits for the fold).")
            + f" Exact totals afterwards: {counted:,} completed counted of {sent:,} sent"
            + (" (match)." if counted == sent else " (DIFFERENT).")
            + f" Seats kept afterwards: {seats_after}.",
        ),
        Row(
            "churn.memory_before",
            SECTION,
            "memory the tally keeps per ended thread, before the next fold",
            memory["bytes_per_thread_before_fold"],
            unit="B/thread",
            note=f"tracemalloc: what is still allocated after {sample:,} threads "
            "that each sent one event and ended, the benchmark's own allocations left out; "
            f"{memory['seats_before_fold']:,} seats before the fold.",
        ),
        Row(
            "churn.memory_after",
            SECTION,
            "memory still kept for those ended threads after one fold",
            float(memory["bytes_after_fold"]),
            unit="bytes",
            budget="<= 1 KiB in all, no Thread kept",
            ok=memory["bytes_after_fold"] <= AFTER_FOLD_LIMIT
            and memory["thread_objects_alive"] == 0,
            note=f"{memory['seats_after_fold']} seats left after the fold; Thread objects of "
            f"the ended threads still alive (before the fold): "
            f"{memory['thread_objects_alive']}.",
        ),
    ]
    details = {
        "memory": memory,
        "fold": fold,
        "first_event_cpu_ns": sorted(during.cpu),
        "first_event_unpreempted_ns": sorted(during.unpreempted),
        "first_event_quiet_cpu_ns": sorted(quiet.cpu),
        "churn_seconds": churned,
    }
    return rows, details
