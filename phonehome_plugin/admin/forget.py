"""``phonehome forget``: erase the installation's local telemetry state.

Everything the plugin keeps goes: the instance id, the first email, the privacy key
(salt), the counts, the claims, the outbox, the history and the kept bodies, the
inventory digests, the start record. The next start with telemetry on is a new
installation (a new instance id, a new startup and first-user report). Nothing is
sent about it.

The rows are deleted in one transaction. On SQLite, deleted content is overwritten
with zeros as it is deleted (``secure_delete``), so the first email does not linger
in the file's free pages; the write-ahead log holding older copies of pages is
emptied when the last process closes the file. So: stop MaestroHub first (a host
still running keeps its instance id in memory until it restarts, and may write
counts again), then forget.

:func:`survey` says what would be erased, for the confirmation; :func:`forget`
erases. A state that does not exist is nothing to erase.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from phonehome_plugin.admin import startrecord
from phonehome_plugin.admin.locate import ProblemError, Sources, has_table
from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.reports import triggers
from phonehome_plugin.state import history
from phonehome_plugin.state.outbox import Outbox
from phonehome_plugin.state.store import SCHEMA, Conn, NoStateError, Store

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


@dataclass(frozen=True)
class Survey:
    """What :func:`forget` would erase."""

    where: str
    instance_id: str | None
    first_email_kept: bool
    outbox_reports: int
    history_events: int
    kept_bodies: int
    last_start: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def survey(sources: Sources) -> Survey | None:
    """What the state holds, read-only; None when there is no state to erase."""

    def query(store: Store) -> Survey:
        record = startrecord.read(store)
        kept = len(history.digests(store)) if has_table(store, "sent_reports") else 0
        events = store.run(lambda c: int(c.execute("SELECT count(*) FROM history").fetchone()[0]))
        return Survey(
            sources.where(),
            store.get("instance_id"),
            store.get(triggers.EARLIEST) is not None,
            Outbox(store, OutboxLimits()).size()[0],
            events,
            kept,
            None if record is None else record.reason,
        )

    try:
        store = sources.open()
    except NoStateError as error:
        if type(error) is NoStateError:  # nothing there: not a broken or missing dir
            return None
        raise ProblemError(str(error)) from error
    try:
        return query(store)
    finally:
        store.close()


def forget(sources: Sources) -> None:
    """Erase every row of every table of the plugin, in one transaction."""
    store = sources.open_writable()
    try:
        erase(store)
    finally:
        store.close()


def erase(store: Store) -> None:
    """:func:`forget` on an open, writable ``store``."""
    # Zeros over what is deleted, whatever the SQLite build's default (some have it off).
    sqlite = store.path is not None

    def work(c: Conn) -> None:
        if sqlite:
            c.execute("PRAGMA secure_delete = ON")
        for table in _TABLE.findall(SCHEMA):
            c.execute(f"DELETE FROM {table}")

    store.run(work)
