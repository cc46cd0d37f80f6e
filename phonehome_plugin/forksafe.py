"""Fork safety of the state stores.

A process that forks while one of its threads is inside a transaction would
hand the child a held lock (the store's own, and SQLite's in-process record of
the file's locks, or a PostgreSQL session mid-transaction). So ``os.fork()``
waits, up to :data:`FORK_WAIT` seconds, for every open store's transaction to
end (holding each store's lock across the fork), and lets each store detach what
a child must not share (:meth:`~.store.Store._detach_file`). In the child every
store gets a fresh lock and is told whether its transaction ended in time
(:meth:`~.store.Store._after_fork_in_child`).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phonehome_plugin.store import Store

FORK_WAIT = 1.0
"""Seconds ``os.fork()`` waits for a store's transaction to end before forking anyway."""

_live: weakref.WeakSet[Store] = weakref.WeakSet()
_held: list[Store] = []
_inherited: list[object] = []
"""Connections a child inherited while in use: never used, never closed, never collected."""


def track(store: Store) -> None:
    """Take part in fork safety for as long as ``store`` lives."""
    _live.add(store)


def abandon(connection: object) -> None:
    """Keep an inherited ``connection`` alive, untouched, for the life of this process
    (collecting it would close it, which may talk to a file or a server it shares)."""
    _inherited.append(connection)


def _before_fork() -> None:
    for store in list(_live):
        if store.lock.acquire(timeout=FORK_WAIT):
            _held.append(store)
            store._detach_file()


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().lock.release()


def _after_fork_in_child() -> None:
    quiet = {id(store) for store in _held}
    _held.clear()
    for store in list(_live):
        store._after_fork_in_child(id(store) in quiet)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
