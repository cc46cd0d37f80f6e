"""Processes waiting for the installation's state, as ``phonehome status`` sees them.

A process that cannot reach the installation's state keeps no state of its own (see
the worker): it counts, and tries again. The one place it can say so besides its log
is a small file of its own in its node's data dir, ``phonehome-waiting-<pid>.json``
(its PID, its start time, since when, why, in one line), removed once it joins or
ends. A file whose process is gone (killed) is not shown, and is removed by the next
process that waits. Writing it may fail (the data dir is the very thing that cannot
be used, say): then only the log line says it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from phonehome_plugin.state.owner import start_time

PREFIX = "phonehome-waiting-"


@dataclass(frozen=True)
class Waiting:
    """One waiting process: its PID, since when (host clock, epoch seconds), and why."""

    pid: int
    since: float
    why: str


def _path(data_dir: Path, pid: int) -> Path:
    return data_dir / f"{PREFIX}{pid}.json"


def note(data_dir: Path | None, since: float, why: str) -> None:
    """Say, for ``phonehome status``, that this process waits since ``since``."""
    if data_dir is None:
        return
    pid = os.getpid()
    record = {"pid": pid, "started": start_time(pid), "since": since, "why": why[:500]}
    path = _path(Path(data_dir), pid)
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(record), "utf-8")
        partial.replace(path)
        for stale in read_all(Path(data_dir), alive_only=False):
            if not stale[1]:
                _path(Path(data_dir), stale[0].pid).unlink(missing_ok=True)


def clear(data_dir: Path | None) -> None:
    """This process waits no more (it joined, or it ends)."""
    if data_dir is not None:
        with contextlib.suppress(OSError):
            _path(Path(data_dir), os.getpid()).unlink(missing_ok=True)


def read_all(data_dir: Path, alive_only: bool = True) -> list[tuple[Waiting, bool]]:
    """Every waiting file under ``data_dir`` with whether its process still lives
    (same PID and start time); only the living ones when ``alive_only``."""
    found: list[tuple[Waiting, bool]] = []
    with contextlib.suppress(OSError):
        for path in sorted(data_dir.glob(f"{PREFIX}*.json")):
            try:
                raw = json.loads(path.read_text("utf-8"))
                waiting = Waiting(int(raw["pid"]), float(raw["since"]), str(raw["why"]))
                started = raw.get("started")
            except (OSError, ValueError, KeyError, TypeError):
                continue
            alive = started is not None and start_time(waiting.pid) == started
            if alive or not alive_only:
                found.append((waiting, alive))
    return found


def waiting(data_dir: Path | None) -> list[Waiting]:
    """The living processes of this node that wait for the installation's state."""
    return [] if data_dir is None else [w for w, _ in read_all(Path(data_dir))]
