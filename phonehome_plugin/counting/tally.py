"""Lock-free counting of execution outcomes on the emitting threads.

``execution-finished`` is the hottest signal (hundreds of millions a day), so
its receiver must cost about what incrementing a dict costs. Each emitting
thread increments a dict of its own, reached through ``threading.local``; a
dict is written only by its thread, so no increment can be lost, and readers on
other threads sum the dicts.

Thread churn (a host running each execution on a short-lived thread) costs the
emitting threads nothing that grows with it:

- A thread's first event takes no lock: it appends its *seat* (its dict, and a
  weak reference to a token kept in the thread's ``threading.local`` storage) to
  a list, one atomic operation. The readers' lock (totals, folds, fork) is never
  on an emitting thread's path, so a fold walking many seats holds up no event.
- A thread's storage is freed when the thread ends, and with it the token: a
  seat whose token is gone belongs to a thread that can never count again
  (this works for threads the ``threading`` module did not start, too). Nothing
  else of the thread is kept: no ``Thread`` object stays alive because of the
  tally. The next fold (:meth:`ExecutionTally.take_delta`) adds such a seat's
  counts to the retired totals and drops it, so a dead thread's memory is
  reclaimed within one fold.

Third-party receivers of ``execution-finished`` ride in this receiver (see
:mod:`.riders`): called after the count, each in its own ``try``, for about one
Python call a send instead of a receiver of blinker's own.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from phonehome_plugin.counting.riders import Board, Riders, ride

STATUSES = ("completed", "failed", "completed_with_errors", "cancelled")
UNKNOWN = "unknown"
_BUCKETS = (*STATUSES, UNKNOWN)
_ABSENT: Any = object()
"""``status`` when the host sent none: counted as unknown, and not passed on to riders."""


class _Presence:
    """Kept in a thread's local storage only: it dies when the thread ends."""

    __slots__ = ("__weakref__",)


Seat = tuple["weakref.ref[_Presence]", dict[str, int]]
"""One counting thread: a weak reference to its :class:`_Presence`, and its counts."""


class ExecutionTally:
    """Counts ``execution-finished`` by status since this process started counting."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        """Held by readers only (totals, folds, forget), never by an emitting thread."""
        self._seats: list[Seat] = []
        """Appended to by emitting threads (atomic), rewritten only under ``_lock``."""
        self._retired = dict.fromkeys(_BUCKETS, 0)
        self._folded = dict.fromkeys(_BUCKETS, 0)
        self.receiver, self.board = self._make_receiver()

    def _make_receiver(self) -> tuple[Callable[..., None], Board]:
        """The receiver of ``execution-finished``, and the board of its riders
        (third-party receivers of the signal, called after the count: see .riders)."""
        local = self._local
        join = self._join
        riders: Riders = ()

        # A closure, not a method: the two lookups it saves are a measurable share
        # of the per-event cost, and its riders are one cell away (a truth test when
        # there are none). Connect it with weak=False, since nothing else holds it.
        def on_execution_finished(sender: Any, status: Any = _ABSENT, **extra: Any) -> None:
            try:
                counts = local.counts
            except AttributeError:
                counts = join()
            try:
                counts[status] += 1
            except (KeyError, TypeError):  # not a known status, or not even hashable
                counts[UNKNOWN] += 1
            if riders:
                # What blinker passed, as it came: ``status`` only if the host sent it.
                ride(riders, sender, extra if status is _ABSENT else {"status": status, **extra})

        def board(new: Riders) -> None:
            nonlocal riders
            riders = new

        return on_execution_finished, board

    def _join(self) -> dict[str, int]:
        """A seat for the calling thread (its first event); takes no lock."""
        counts = dict.fromkeys(_BUCKETS, 0)
        presence = _Presence()
        local = self._local
        local.presence = presence  # freed with the thread's storage when it ends
        local.counts = counts
        # One atomic append: readers rewrite the list only under their lock, and a
        # slice assignment there keeps whatever was appended meanwhile.
        self._seats.append((weakref.ref(presence), counts))
        return counts

    def totals(self) -> dict[str, int]:
        """Everything counted by this process, by status."""
        with self._lock:
            totals = dict(self._retired)
            live = self._seats[:]
        for _, counts in live:
            for status in _BUCKETS:
                totals[status] += counts[status]
        return totals

    def take_delta(self) -> dict[str, int]:
        """Counts since the previous call, for folding into the state store.

        Call from one thread at a time (the plugin's worker). Seats of threads
        that have ended are merged into the retired totals and dropped, so
        neither the list nor the memory grows with thread churn.
        """
        self._retire_dead()
        totals = self.totals()
        delta = {status: totals[status] - self._folded[status] for status in _BUCKETS}
        self._folded = totals
        return delta

    def seats(self) -> int:
        """Threads whose counts are kept one by one (those alive, and those that
        ended since the last fold); for the benchmarks."""
        return len(self._seats)

    def _retire_dead(self) -> None:
        with self._lock:
            seats = self._seats
            walked = seats[:]  # emitting threads may append while this runs
            kept = []
            retired = self._retired
            for seat in walked:
                if seat[0]() is None:  # its thread has ended: its counts are final
                    counts = seat[1]
                    for status in _BUCKETS:
                        retired[status] += counts[status]
                else:
                    kept.append(seat)
            if len(kept) < len(walked):
                # Only the walked prefix is replaced: seats appended meanwhile stay.
                seats[: len(walked)] = kept

    def forget(self) -> None:
        """Start from zero; for a forked child, whose parent counts what it inherited.

        The lock is replaced first because the fork may have copied it held.
        """
        self._lock = threading.Lock()
        with self._lock:
            for _, counts in self._seats:
                for status in _BUCKETS:
                    counts[status] = 0
            self._retired = dict.fromkeys(_BUCKETS, 0)
            self._folded = dict.fromkeys(_BUCKETS, 0)

    def give_back(self, delta: dict[str, int]) -> None:
        """Undo a :meth:`take_delta` whose counts were not stored: they ride with the
        next take. (Worker thread only, as :meth:`take_delta`.)"""
        self._folded = {status: self._folded[status] - delta.get(status, 0) for status in _BUCKETS}
