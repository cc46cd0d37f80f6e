"""``phonehome export``: stored reports to a file, for a site with no way out.

In mode ``offline`` the host keeps every report in the outbox. An export writes them
as JSON Lines (each line one report's exact bytes, as the plugin would POST them),
beside a manifest (``<file>.manifest.json``) that lists each report with its sha256,
and marks them exported in the state (:meth:`.outbox.Outbox.mark_exported`): the
next export writes only the reports made since, unless asked for all. A startup or
first-user report is never dropped before an export has written it once (see
:mod:`.state.outbox`). ``phonehome upload`` sends such a file from a connected
machine (:mod:`.upload`).

The file and the manifest are written whole or not at all (a temporary file renamed
into place). Written to standard output (``-``), there is no manifest unless one is
named. Marking is the one write to the state: it needs a state this machine may
write; ``mark=False`` leaves the state alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from phonehome_plugin.admin.clock import stamp, wall_now
from phonehome_plugin.admin.locate import ProblemError, Sources, has_table
from phonehome_plugin.state.history import digest
from phonehome_plugin.state.outbox import Entry, Outbox
from phonehome_plugin.state.store import Store

FORMAT = "phonehome-export"
VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
STDOUT = "-"


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the manifest's rows (one per report), where, and whether
    the reports were marked exported in the state."""

    reports: list[dict[str, Any]]
    target: str
    manifest: str | None
    marked: bool


def manifest_of(path: Path) -> Path:
    """Where the manifest of the export at ``path`` is: ``<path>.manifest.json``."""
    return path.with_name(path.name + MANIFEST_SUFFIX)


def export(
    sources: Sources,
    target: str,
    stdout: IO[bytes] | None = None,
    *,
    everything: bool = False,
    mark: bool = True,
    manifest: str | None = None,
    now: datetime | None = None,
) -> Exported:
    """Write the reports no export wrote yet (``everything``: all stored reports) to
    ``target`` (``-``: to ``stdout``), write the manifest, then mark them exported."""
    moment = now or wall_now()

    def query(store: Store) -> tuple[list[Entry], str | None]:
        outbox = Outbox(store, sources.settings().outbox)
        fresh = not everything and has_table(store, "exports")
        return (outbox.unexported() if fresh else outbox.pending()), store.get("instance_id")

    entries, instance_id = sources.read(query)
    rows = [
        {
            "report_id": e.report_id,
            "sequence": e.sequence,
            "trigger": e.trigger,
            "created_at": stamp(e.created_at),
            "bytes": len(e.body),
            "sha256": digest(e.body),
        }
        for e in entries
    ]
    lines = b"".join(entry.body + b"\n" for entry in entries)
    if target == STDOUT:
        if stdout is None:
            raise ProblemError("no standard output to export to")
        stdout.write(lines)
        stdout.flush()
    else:
        _write_whole(Path(target), lines)
    written = manifest
    if written is None and target != STDOUT:
        written = str(manifest_of(Path(target)))
    if written is not None:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "instance_id": instance_id,
            "exported_at": stamp(moment.timestamp()),
            "file": "stdout" if target == STDOUT else Path(target).name,
            "count": len(rows),
            "reports": rows,
        }
        _write_whole(Path(written), json.dumps(document, indent=2).encode() + b"\n")
    marked = False
    if mark and entries:
        store = sources.open_writable()
        try:
            Outbox(store, sources.settings().outbox).mark_exported(
                [e.report_id for e in entries],
                moment.timestamp(),
                "stdout" if target == STDOUT else str(Path(target).resolve()),
            )
        finally:
            store.close()
        marked = True
    return Exported(rows, target, written, marked)


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (a file in the same directory, renamed)."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as error:
        raise ProblemError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise ProblemError(f"cannot write {path}: {error.strerror or error}") from error
