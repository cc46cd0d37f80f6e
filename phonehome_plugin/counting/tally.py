"""Lock-free counting of execution outcomes on the emitting threads.

``execution-finished`` is the hottest signal (hundreds of millions a day), so
its receiver must cost about what incrementing a dict costs. Each emitting
thread increments a dict of its own, reached through ``threading.local``; a
dict is written only by its thread, so no increment can be lost, and readers on
other threads sum the dicts. The list of dicts keeps a thread's counts alive
after the thread exits, which ``threading.local`` alone would not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

STATUSES = ("completed", "failed", "completed_with_errors", "cancelled")
UNKNOWN = "unknown"
_BUCKETS = (*STATUSES, UNKNOWN)


class ExecutionTally:
    """Counts ``execution-finished`` by status since this process started counting."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._per_thread: list[tuple[threading.Thread, dict[str, int]]] = []
        self._retired = dict.fromkeys(_BUCKETS, 0)
        self._folded = dict.fromkeys(_BUCKETS, 0)
        self.receiver = self._make_receiver()

    def _make_receiver(self) -> Callable[..., None]:
        local = self._local
        join = self._join

        # A closure, not a method: the two lookups it saves are a measurable share
        # of the per-event cost. Connect it with weak=False, since nothing else
        # holds it.
        def on_execution_finished(sender: Any, status: Any = None, **extra: Any) -> None:
            try:
                counts = local.counts
            except AttributeError:
                counts = join()
            try:
                counts[status] += 1
            except (KeyError, TypeError):  # not a known status, or not even hashable
                counts[UNKNOWN] += 1

        return on_execution_finished

    def _join(self) -> dict[str, int]:
        counts = dict.fromkeys(_BUCKETS, 0)
        self._local.counts = counts
        with self._lock:
            self._per_thread.append((threading.current_thread(), counts))
        return counts

    def totals(self) -> dict[str, int]:
        """Everything counted by this process, by status."""
        with self._lock:
            totals = dict(self._retired)
            live = list(self._per_thread)
        for _, counts in live:
            for status in _BUCKETS:
                totals[status] += counts[status]
        return totals

    def take_delta(self) -> dict[str, int]:
        """Counts since the previous call, for folding into the state store.

        Call from one thread at a time (the plugin's worker). Dicts of threads
        that have exited are merged so the list does not grow with thread churn.
        """
        self._retire_dead()
        totals = self.totals()
        delta = {status: totals[status] - self._folded[status] for status in _BUCKETS}
        self._folded = totals
        return delta

    def _retire_dead(self) -> None:
        with self._lock:
            alive = []
            for thread, counts in self._per_thread:
                if thread.is_alive():
                    alive.append((thread, counts))
                else:
                    for status in _BUCKETS:
                        self._retired[status] += counts[status]
            self._per_thread = alive

    def forget(self) -> None:
        """Start from zero; for a forked child, whose parent counts what it inherited.

        The lock is replaced first because the fork may have copied it held.
        """
        self._lock = threading.Lock()
        with self._lock:
            for _, counts in self._per_thread:
                for status in _BUCKETS:
                    counts[status] = 0
            self._retired = dict.fromkeys(_BUCKETS, 0)
            self._folded = dict.fromkeys(_BUCKETS, 0)

    def give_back(self, delta: dict[str, int]) -> None:
        """Undo a :meth:`take_delta` whose counts were not stored: they ride with the
        next take. (Worker thread only, as :meth:`take_delta`.)"""
        self._folded = {status: self._folded[status] - delta.get(status, 0) for status in _BUCKETS}
