"""Which backend holds an installation's state: the one module that knows both.

:func:`open_store` is how the rest of the plugin, and the ``phonehome`` command
(read-only), opens its state. The backends build on :mod:`.store` and this module
builds on them, so the arrows run one way: ``backends -> sqlite, postgres -> store``.
"""

from __future__ import annotations

from pathlib import Path

from phonehome_plugin.state.sqlite import open_sqlite_read_only, open_sqlite_store
from phonehome_plugin.state.store import NoDataDirError, Store


def open_store(
    data_dir: Path | None, state_url: str | None = None, *, read_only: bool = False
) -> Store:
    """The installation's store: PostgreSQL at ``state_url`` when given, else the
    SQLite file under ``data_dir``; a memory store when neither can be used.

    Never raises for an unusable backend: it logs one warning and keeps state in
    memory, so that the host loses nothing (telemetry loses durability).

    ``read_only``: the same store over the same state, creating, migrating, writing
    and locking nothing (see :mod:`.store`); no state to read raises a
    :class:`~.store.NoStateError` saying why, in one line, and logs nothing.
    """
    if state_url:
        # Only installations with a state_url load the PostgreSQL backend; the worker
        # imports it before any job (see .worker.preload), never on its thread.
        from phonehome_plugin.state.postgres import open_pg_read_only, open_pg_store

        return open_pg_read_only(state_url) if read_only else open_pg_store(state_url)
    if not read_only:
        return open_sqlite_store(data_dir)
    if data_dir is None:
        raise NoDataDirError("no data dir is given")
    return open_sqlite_read_only(data_dir)
