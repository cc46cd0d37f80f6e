"""A read-only look at an installation's telemetry state, for the ``phonehome`` command.

Opens the state file read-only (``mode=ro``): looking never creates a file, an
instance id or a lock, so an operator may inspect an installation whose
telemetry is off without turning anything on.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phonehome_plugin import schedule
from phonehome_plugin.store import FILENAME


class NoState(Exception):
    """There is no readable state file; the message says why."""


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
    """Queries over one installation's state file."""

    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / FILENAME
        if not path.is_file():
            raise NoState(f"no telemetry state at {path} (telemetry never ran with this data dir)")
        try:
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            self.conn.execute("SELECT count(*) FROM kv").fetchone()
        except sqlite3.Error as error:
            raise NoState(f"cannot read {path}: {error}") from error
        self.path = path

    def close(self) -> None:
        self.conn.close()

    def kv(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def pending(self) -> list[Pending]:
        rows = self.conn.execute(
            "SELECT report_id, sequence, trigger, created_at, body, attempts, not_before "
            "FROM outbox ORDER BY sequence"
        ).fetchall()
        return [Pending(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    def history(self, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT report_id, sequence, trigger, at, result, detail FROM history "
            "ORDER BY rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("report_id", "sequence", "trigger", "at", "result", "detail")
        return [{**dict(zip(keys, row, strict=True)), "at": stamp(row[3])} for row in rows]

    def next_periodic(self, interval: int) -> str | None:
        instance_id, last = self.kv("instance_id"), self.kv("periodic.last_slot")
        if instance_id is None or last is None:
            return None
        return stamp(schedule.periodic_due_at(int(last), instance_id, interval))


def stamp(epoch: float) -> str:
    """Host-clock epoch seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
