"""Counting what the plugin asks of its state store: transactions and statements.

A transaction is one :meth:`Store.run` (the store's one way in: each is a
``BEGIN IMMEDIATE ... COMMIT`` on SQLite, a transaction under the installation's
advisory lock on PostgreSQL), counted by wrapping ``run`` on the store instance,
which works for both backends. On SQLite the connection's trace callback
(``set_trace_callback``) also counts every statement SQLite runs (each row of an
``executemany`` is one) and the ``BEGIN`` statements, a check on the first count.
On PostgreSQL the statements are counted through a wrapper of the connection the
work is handed (each ``execute`` is one round trip; an ``executemany`` counts its
rows).

Every statement is a point where the calling thread gives up the GIL and must
take it back; with CPU-bound host threads each costs up to a GIL switch interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass
class Counted:
    transactions: int = 0
    statements: int = 0
    begins: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


class _CountingConn:
    """A PostgreSQL work's connection, counting its statements."""

    def __init__(self, conn: Any, counted: Counted) -> None:
        self._conn = conn
        self._counted = counted

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        self._counted.statements += 1
        return self._conn.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        listed = list(rows)
        self._counted.statements += len(listed)
        return self._conn.executemany(sql, listed)


class StoreCounter:
    """``with StoreCounter(store) as counted:`` counts the store's work inside the block
    (from every thread: the worker's too)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.counted = Counted()
        self._sqlite = hasattr(store, "session")

    def _trace(self, sql: str) -> None:
        counted = self.counted
        if self._sqlite:
            counted.statements += 1
            if sql.lstrip().upper().startswith("BEGIN"):
                counted.begins += 1
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        counted.kinds[verb] = counted.kinds.get(verb, 0) + 1

    def __enter__(self) -> Counted:
        real: Callable[[Callable[[Any], Any]], Any] = self.store.run
        counted = self.counted
        sqlite = self._sqlite

        def run(work: Callable[[Any], Any]) -> Any:
            counted.transactions += 1
            if sqlite:
                return real(work)
            return real(lambda conn: work(_CountingConn(conn, counted)))

        self.store.run = run
        if sqlite:
            with self.store.session() as conn:
                conn.set_trace_callback(self._trace)
        return counted

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        del self.store.run  # the class's method again
        if self._sqlite:
            with self.store.session() as conn:
                conn.set_trace_callback(None)
