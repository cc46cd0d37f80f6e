"""Fork safety of the state stores: a child never inherits a SQLite call in progress.

A host may fork at any moment, from any thread, while the plugin's worker is
inside the state store. SQLite keeps per-process state that a fork copies as it
is (its mutexes, and its record of which file locks this process holds), so a
child that touches a connection, or even opens a new one, while a parent thread
was inside a SQLite call can crash or hang. The rules, enforced by construction:

1. Every SQLite call of the plugin, on any thread, holds :data:`GUARD`: the
   SQLite store keeps its connection where only :meth:`~.sqlite.SqliteStore.session`
   reaches it, and that takes the guard. The guard is never held while waiting
   for anything outside this process (a busy file is retried with the guard
   released), so it is held for microseconds at a time.
2. ``os.fork()`` takes the guard for the instant of the fork, so no thread of
   the plugin is inside SQLite when the child is made. It does not close or
   flush anything: the fork costs the host no more than without the plugin.
   A thread of the plugin that leaves the guard while a fork waits for it then
   steps aside until the fork is done (:func:`held`): blocked, it holds no GIL,
   so the forking thread goes on at once instead of waiting a switch interval
   (5 ms) for a worker busy in Python. A write transaction does not make the
   fork wait for the rest of it either: at its next statement it is rolled
   back (:class:`ForkWaiting`) and run again once the fork is done, so a fork
   waits for one statement at most (see :meth:`~.sqlite.SqliteStore.run`).
   Forks from several threads at once take their turns (:data:`_FORKING`), so
   each has the guard to itself.
   Should the guard not come free within :data:`FORK_WAIT` (a disk that stalls a
   commit), the fork goes on without it and the child makes no SQLite call at
   all, ever (:data:`poisoned`; one log line): telemetry is off in that child
   rather than risk a hang.
3. In the child, each store drops what it inherited before any other thread
   exists (:meth:`~.store.Store._after_fork_in_child`): a SQLite store sets the
   idle file connection it inherited aside, and the child's first connection of
   its own closes it just before opening (safe: no call was in progress, and the
   parent still holds its own locks on the file; not at the fork, where freeing
   its cache would copy every page of it into the child);
   a PostgreSQL store never touches the session it shares with the parent and
   connects anew.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phonehome_plugin.state.store import Store

log = logging.getLogger("phonehome_plugin.state.store")  # one logger name for every backend

FORK_WAIT = 0.5
"""Seconds ``os.fork()`` waits for a SQLite call in progress: a backstop for a
stalled disk, never reached in normal operation (calls take microseconds)."""

GUARD = threading.Lock()
"""Held by every SQLite call of the plugin in this process, and across each fork."""

poisoned = False
"""True in a child forked while a SQLite call may have been in progress: SQLite's
process-wide mutexes may be held by a thread that is gone, so no store here may
call into it again (see :class:`ForkedMidCallError`)."""

_FORKING = threading.Lock()
"""Held by the thread that forks, from its before-fork handler to its after-fork one."""

_live: weakref.WeakSet[Store] = weakref.WeakSet()
_held = False
_forking = False
_inherited: list[object] = []
"""Connections a child shares with its parent: never used, closed or collected."""


class ForkedMidCallError(RuntimeError):
    """This process was forked while a thread of its parent may have been inside SQLite."""

    def __init__(self) -> None:
        super().__init__(
            "forked while the parent was inside the state store; telemetry is off in this process"
        )


def track(store: Store) -> None:
    """Take part in fork safety for as long as ``store`` lives."""
    _live.add(store)


def abandon(connection: object) -> None:
    """Keep an inherited ``connection`` alive, untouched, for the life of this process
    (collecting it would close it, which may talk to a server it shares)."""
    _inherited.append(connection)


class ForkWaiting(BaseException):
    """Raised at a statement of a write transaction while a fork waits for the guard:
    the transaction is rolled back and run again after the fork. A BaseException, so
    that no ``except Exception`` in a transaction's work can swallow it and commit."""


def fork_waiting() -> bool:
    """True while a fork waits for (or holds) the guard. Read by the guard's holder,
    it means a fork waits for it."""
    return _FORKING.locked()


@contextmanager
def held() -> Iterator[None]:
    """Hold :data:`GUARD` for the block; then, if a fork is waiting, step aside until
    it is done (bounded by :data:`FORK_WAIT`), whether the block ended or raised.
    Every SQLite call goes through here."""
    try:
        with GUARD:
            yield
    finally:
        if fork_waiting() and _FORKING.acquire(timeout=FORK_WAIT):
            _FORKING.release()


def _before_fork() -> None:
    global _held, _forking  # noqa: PLW0603  (flags for the instant of the fork)
    # Another thread's fork holds it only for the instant of that fork; the bound is
    # a backstop (past it, this fork goes on and the flags are that fork's).
    _forking = _FORKING.acquire(timeout=FORK_WAIT)
    _held = GUARD.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    global _held, _forking  # noqa: PLW0603
    if _held:
        _held = False
        GUARD.release()
    if _forking:
        _forking = False
        _FORKING.release()


def _after_fork_in_child() -> None:
    global GUARD, _FORKING, _held, _forking, poisoned  # noqa: PLW0603  (the child's copies)
    clean, _held, _forking = _held, False, False
    GUARD = threading.Lock()  # the child's copy may be held by a thread that is gone
    _FORKING = threading.Lock()
    if not clean and not poisoned:
        poisoned = True
        log.warning("phonehome: %s", ForkedMidCallError())
    for store in list(_live):
        store._after_fork_in_child(clean)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
