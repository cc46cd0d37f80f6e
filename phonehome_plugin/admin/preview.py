"""``phonehome preview``: the next report, built now, as the host would build it.

The report is built by the code that builds every real report
(:meth:`.triggers.Reporter.build`, then the schema check and the encoding the
plugin stores), from the installation's state, but on a copy of it in memory:
whatever building touches (the sequence, the location cache, the privacy key) is
touched in the copy, so nothing is sent, stored or consumed, and the next real
report carries the same counts. No network either: the location comes from the
state's cache, as the host's next report takes it while the cache lasts a day.

What only the host knows comes from the record of its newest start with telemetry
on (:mod:`.startrecord`): its settings (mode, privacy...), MaestroHub's version and
edition, the machine's facts and the start's time. Third-party collectors run
inside MaestroHub, so their sections (and errors) are those of the newest report
the state holds. Where something cannot be known, :attr:`Preview.notes` says so.

So the preview's sections equal those of the next report the host sends, except its
ids (``report_id``; ``sequence`` when another report comes first), its times
(``generated_at``, ``uptime_seconds``: this machine's clock, not the host's) and the
counts since the previous report, which move with every report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from phonehome_plugin.admin import startrecord
from phonehome_plugin.admin.clock import stamp, wall_now
from phonehome_plugin.admin.locate import ProblemError, Sources, has_table
from phonehome_plugin.config.settings import ConfigError, Settings, parse
from phonehome_plugin.config.switch import resolve
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.guard import privacy
from phonehome_plugin.reports import location, schema, shape
from phonehome_plugin.reports.shape import TRIGGERS, Trigger
from phonehome_plugin.reports.system import HostFacts, MachineFacts, machine_facts
from phonehome_plugin.reports.triggers import Reporter
from phonehome_plugin.state import history
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Outbox
from phonehome_plugin.state.store import (
    SCHEMA,
    BrokenStateError,
    NoDataDirError,
    NoStateError,
    Store,
)

NOT_COPIED = frozenset({"outbox", "history", "sent_reports", "exports"})
"""Tables building a report never reads: left out of the copy (they are the big ones)."""
_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


@dataclass(frozen=True)
class Preview:
    """The next report: ``body`` its exact bytes as the plugin would store and send
    them (before gzip), ``report`` the same parsed; ``notes`` what the preview could
    not know, in sentences; ``pending`` how many stored reports are waiting to be sent
    before it; ``schema_errors`` why the plugin would refuse it (empty: it would not)."""

    body: bytes
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    pending: int = 0
    schema_errors: list[str] = field(default_factory=list)


def preview(sources: Sources, trigger: str = "periodic", now: datetime | None = None) -> Preview:
    """Build the next ``trigger`` report now (see the module docs); never writes."""
    if trigger not in TRIGGERS:
        raise ProblemError(f"no trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
    moment = now or wall_now()
    shell = sources.settings()  # an invalid config is a problem: where the state is is unknown
    notes: list[str] = []
    try:
        source: Store | None = sources.open()
    except (NoDataDirError, BrokenStateError) as error:
        raise ProblemError(str(error)) from error
    except NoStateError as error:
        source = None
        notes.append(f"{error}: this is a first report, from empty counts")
    try:
        record = None if source is None else startrecord.read(source)
        latest = None if source is None else _latest(source)
        pending = 0 if source is None else Outbox(source, shell.outbox).size()[0]
        scratch = _copy(source)
    except BrokenStateError as error:  # damaged where only a later read looks
        raise ProblemError(str(error)) from error
    finally:
        if source is not None:
            source.close()
    try:
        settings = _settings(record, shell, sources, notes)
        built = _build(scratch, settings, record, latest, trigger, moment, notes)
    finally:
        scratch.close()
    if pending:
        notes.append(f"{pending} stored report(s) wait to be sent before it")
    body = shape.encode(built)
    return Preview(body, json.loads(body), notes, pending, schema.errors(built))


def _settings(
    record: startrecord.StartRecord | None, shell: Settings, sources: Sources, notes: list[str]
) -> Settings:
    """The host's settings as its start recorded them; else this shell's."""
    if record is not None:
        try:
            return parse(record.section)
        except ConfigError:
            notes.append("the host's recorded settings cannot be read: this shell's are used")
    else:
        notes.append("no host start recorded its settings: this shell's config is used")
    decision = resolve(sources.config, sources.environ)
    if not decision.on:
        notes.append(f"telemetry is {decision.reason}: nothing would be sent")
    return shell


def _build(
    scratch: Store,
    settings: Settings,
    record: startrecord.StartRecord | None,
    latest: Mapping[str, Any] | None,
    trigger: Trigger,
    now: datetime,
    notes: list[str],
) -> shape.Report:
    if record is not None:
        host = cast(HostFacts, record.host)
        machine = cast(MachineFacts, record.machine)
        started_at = datetime.fromtimestamp(record.started_at, UTC)
    else:
        host = {"version": None, "edition": None, "prerelease": False, "ci": False}
        machine = machine_facts()
        started_at = now
        notes.append("MaestroHub's version and edition are unknown here; the machine is this one")
    _location_from_cache(scratch, settings, now, notes)
    if any(choice == "hash" for choice in settings.privacy.values()) and (
        scratch.get("privacy.salt") is None
    ):
        notes.append("hashed values use a stand-in key: the installation's is made with its first")
    reporter = Reporter(
        settings=settings,
        store=scratch,
        outbox=Outbox(scratch, settings.outbox),
        inventory=Inventory(),
        tally=ExecutionTally(),
        registry=_AsLastReported(latest, notes),
        host=host,
        started_at=started_at,
        machine=lambda: machine,
    )
    return reporter.build(trigger, now, scratch.next_sequence())


def _location_from_cache(
    scratch: Store, settings: Settings, now: datetime, notes: list[str]
) -> None:
    """Make the copy's location cache answer for ``now``, so that building looks
    nothing up: the value the host last looked up, or nothing when it never did."""
    if settings.mode != "send" or not location.wanted(settings):
        return  # no lookup is made: the same code leaves the location empty
    key = location.cache_key(settings)
    try:
        entry = json.loads(scratch.get(location.CACHE_KEY) or "null")
    except ValueError:
        entry = None
    if isinstance(entry, dict) and entry.get("key") == key:
        at = entry.get("at")
        if isinstance(at, int | float):
            notes.append(f"the location is the one the host looked up at {stamp(at)}")
    else:
        entry = {"key": key, "value": dict(location.EMPTY)}
        notes.append("the location was never looked up: the host looks it up for its report")
    entry["at"] = now.timestamp()
    scratch.set(location.CACHE_KEY, json.dumps(entry))


class _AsLastReported(Registry):
    """Collectors run inside MaestroHub: their sections as the newest report has them."""

    def __init__(self, latest: Mapping[str, Any] | None, notes: list[str]) -> None:
        super().__init__()
        self._sections: dict[str, dict[str, Any]] = {}
        self._errors: dict[str, str] = {}
        if latest is not None:
            self._sections = dict(latest.get("collectors") or {})
            self._errors = dict((latest.get("diagnostics") or {}).get("collector_errors") or {})
            if self._sections or self._errors:
                notes.append(
                    "third-party collectors run inside MaestroHub: their sections are those "
                    f"of report #{latest.get('sequence')}"
                )

    def collect_all(
        self, drops: privacy.DropCounter, wanted: Callable[[str], bool] = lambda name: True
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        return dict(self._sections), dict(self._errors)


def _latest(store: Store) -> dict[str, Any] | None:
    """The newest report the state holds (waiting in the outbox, or kept as sent)."""
    bodies = [entry.body for entry in Outbox(store, Settings().outbox).pending()[-1:]]
    if has_table(store, "sent_reports"):
        bodies += [sent.body for sent in history.kept(store, 1)]
    reports = []
    for body in bodies:
        try:
            reports.append(json.loads(body))
        except ValueError:
            continue
    reports = [r for r in reports if isinstance(r, dict) and isinstance(r.get("sequence"), int)]
    return max(reports, key=lambda r: int(r["sequence"])) if reports else None


def _copy(source: Store | None) -> Store:
    """A store in memory holding what building reads of ``source`` (None: empty)."""
    scratch = open_store(None)
    if source is None:
        return scratch
    try:
        for table in _TABLE.findall(SCHEMA):
            if table not in NOT_COPIED and has_table(source, table):
                _copy_table(source, scratch, table)
    except BaseException:
        scratch.close()
        raise
    return scratch


def _copy_table(source: Store, scratch: Store, table: str) -> None:
    rows = source.run(lambda c: c.execute(f"SELECT * FROM {table}").fetchall())
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        values = [tuple(_plain(v) for v in row) for row in rows]
        scratch.run(lambda c: c.executemany(f"INSERT INTO {table} VALUES ({marks})", values))


def _plain(value: Any) -> Any:
    # psycopg may give a BYTEA as a memoryview; SQLite stores bytes.
    return bytes(value) if isinstance(value, memoryview) else value
