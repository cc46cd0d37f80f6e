"""A read-only look at an installation's telemetry state, for the ``phonehome`` command.

Looking never creates a file, an instance id or a lock, so an operator may
inspect an installation whose telemetry is off without turning anything on.
The state file is in WAL mode, and SQLite opens such a file read-only
(``mode=ro``) by creating its ``-wal`` and ``-shm`` files when they are missing
(after a clean shutdown). So: while the plugin runs (or after a crash) the
``-wal`` file exists and is read with the rest; when it is absent every change
is in the main file, which is then opened ``immutable``, creating nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phonehome_plugin.reports import schedule
from phonehome_plugin.state.store import FILENAME


class NoStateError(Exception):
    """There is no readable state file; the message says why."""


class NoDataDirError(NoStateError):
    """The data dir itself is missing: most likely a wrong ``--data-dir``."""


class BrokenStateError(NoStateError):
    """The state file exists but cannot be read (corrupt, not ours, unreadable)."""


@dataclass(frozen=True)
class Pending:
    report_id: str
    sequence: int
    trigger: str
    created_at: float
    body: bytes
    attempts: int
    not_before: float


class StateView:
    """Queries over one installation's state file; every failure is a :class:`NoStateError`."""

    def __init__(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        path = data_dir / FILENAME
        if not data_dir.is_dir():
            raise NoDataDirError(f"data dir {data_dir} does not exist or is not a directory")
        if not path.is_file():
            raise NoStateError(
                f"no telemetry state at {path} (telemetry never ran with this data dir)"
            )
        self.path = path
        wal = path.with_name(path.name + "-wal")
        options = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        try:
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", uri=True)
        except sqlite3.Error as error:
            raise BrokenStateError(f"cannot read {path}: {error}") from error
        try:
            self._rows("SELECT count(*) FROM kv")
        except NoStateError:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise BrokenStateError(f"cannot read {self.path}: {error}") from error

    def kv(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM kv WHERE key=?", (key,))
        return None if not rows else str(rows[0][0])

    def pending(self) -> list[Pending]:
        rows = self._rows(
            "SELECT report_id, sequence, trigger, created_at, body, attempts, not_before "
            "FROM outbox ORDER BY sequence"
        )
        return [Pending(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    # rowid, not id: a file the plugin has not opened since history got its id
    # column has none, and in one that has, id is the rowid.
    _HISTORY_ORDER = "rowid"

    def history(self, limit: int) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT report_id, sequence, trigger, at, result, detail FROM history "
            f"ORDER BY {self._HISTORY_ORDER} DESC LIMIT ?",
            (limit,),
        )
        keys = ("report_id", "sequence", "trigger", "at", "result", "detail")
        return [{**dict(zip(keys, row, strict=True)), "at": stamp(row[3])} for row in rows]

    def next_periodic(self, interval: int) -> str | None:
        instance_id, last = self.kv("instance_id"), self.kv("periodic.last_slot")
        if instance_id is None or last is None or not last.lstrip("-").isdigit():
            return None
        return stamp(schedule.periodic_due_at(int(last), instance_id, interval))


class PgStateView(StateView):
    """The same queries over an installation's PostgreSQL state (``state_url``), read-only."""

    _HISTORY_ORDER = "id"

    def __init__(self, state_url: str) -> None:
        from phonehome_plugin.config.switch import without_credentials

        self.where = without_credentials(state_url)
        try:
            import psycopg
        except ImportError as error:
            raise BrokenStateError(
                "state_url is set but psycopg is not installed: "
                "pip install 'maestrohub-phonehome[postgres]'"
            ) from error
        try:
            self.pg = psycopg.connect(state_url, autocommit=True, connect_timeout=5)
            self.pg.read_only = True
        except psycopg.Error as error:
            raise BrokenStateError(f"cannot read {self.where}: {_first_line(error)}") from error
        try:
            self._rows("SELECT count(*) FROM kv")
        except NoStateError:
            self.pg.close()
            raise

    def close(self) -> None:
        self.pg.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        import psycopg

        try:
            with self.pg.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall()
        except psycopg.Error as error:
            raise BrokenStateError(f"cannot read {self.where}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    """PostgreSQL errors carry hints on further lines; operators get one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_view(data_dir: Path, state_url: str | None) -> StateView:
    """The view of the installation's state: PostgreSQL when configured, else the file."""
    return PgStateView(state_url) if state_url else StateView(data_dir)


def stamp(epoch: float) -> str:
    """Host-clock epoch seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
