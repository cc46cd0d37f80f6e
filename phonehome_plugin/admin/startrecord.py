"""What each host start decided, recorded in the installation's state, and the notice.

:func:`host_started` runs on the worker's thread when a host start with telemetry on
first opens the state. It writes the start's decision record (kv ``host.start``):
on, why (the switch that decided and where it was set), the mode, endpoint and
interval, the config file, the data dir and where the state is, the host's and the
machine's facts for the report's ``system`` section, and the settings (masked). A
process of an older start never overwrites a newer start's record. ``phonehome
status`` shows it beside the shell's own view, and ``phonehome preview`` builds with
the host's settings and facts from it.

A start with telemetry off writes nothing (off means no file), so the record is
always that of the last start that had telemetry on; :mod:`.status` says so.

Then the startup notice: logged when the installation was never told, or when what
is sent changed since it was (:func:`.notice.facts`), and what it told is kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from hookspecs import App
from phonehome_plugin import __version__
from phonehome_plugin.config import switch
from phonehome_plugin.config.notice import (
    changes,
    chosen,
    facts,
    masked,
    notice,
    shown_settings,
)
from phonehome_plugin.config.settings import Settings, section_of
from phonehome_plugin.config.switch import without_credentials
from phonehome_plugin.guard.bounded import type_name
from phonehome_plugin.guard.secrets import MASK
from phonehome_plugin.reports.shape import SCHEMA_VERSION
from phonehome_plugin.reports.system import MachineFacts, host_facts
from phonehome_plugin.state.store import UPSERT_KV, Conn, Store, get_in

log = logging.getLogger(__name__)

RECORD_KEY = "host.start"
"""kv: the decision record of the newest host start with telemetry on (JSON)."""
NOTICE_KEY = "notice.logged_at"
"""kv: the facts the notice last told (JSON; ``logged`` from versions before them)."""


@dataclass(frozen=True)
class StartRecord:
    """One host start's decision, as it recorded it. Times are host-clock epoch seconds.

    ``switch``/``source``: what decided and where it was set (see
    :class:`.switch.Decision`); ``section``: the host's ``modules.phonehome`` with
    credentials masked (enough to build a preview with its settings); ``settings``:
    every setting by dotted name (:func:`.notice.shown_settings`).
    """

    started_at: float
    pid: int
    telemetry: str
    switch: str
    source: str
    reason: str
    mode: str
    endpoint: str
    interval: int
    config_file: str | None
    data_dir: str
    state: str
    host: dict[str, Any]
    machine: dict[str, Any]
    section: dict[str, Any]
    settings: dict[str, Any]
    plugin_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_started(
    store: Store, settings: Settings, app: App, machine: Callable[[], MachineFacts]
) -> StartRecord | None:
    """Record this start's decision and show the notice if it is due (worker thread).

    Never raises: a record that cannot be made or written costs the record (one log
    line), never telemetry itself; the notice is shown all the same.
    """
    record: StartRecord | None = None
    try:
        made = record = _record(store, settings, app, machine)
        encoded = json.dumps(made.as_dict(), default=str)

        def write(c: Conn) -> None:
            older = _parse(get_in(c, RECORD_KEY))
            if older is None or older.started_at <= made.started_at:
                c.execute(UPSERT_KV, (RECORD_KEY, encoded))

        store.run(write)
    except Exception as error:
        # The type only: a message may be long, or quote what it should not.
        log.warning(
            "phonehome: could not record this start for `phonehome status` (%s)",
            type_name(error),
        )
    announce(store, settings)
    return record


def read(store: Store) -> StartRecord | None:
    """The newest start's record, or None when no start with telemetry on wrote one."""
    return _parse(store.get(RECORD_KEY))


def announce(store: Store, settings: Settings) -> bool:
    """Log the startup notice unless the installation was told the same facts before;
    True when it was logged."""
    now = facts(settings, SCHEMA_VERSION)
    raw = store.get(NOTICE_KEY)
    told = _facts(raw)
    if told == now:
        return False
    changed = [] if raw is None else changes(told, now) if told is not None else ["notice"]
    where = without_credentials(settings.endpoint)
    text = notice(where, settings.mode, settings.interval, changed, chosen(settings))
    log.warning("%s", text)
    store.set(NOTICE_KEY, json.dumps(now))
    return True


def _record(
    store: Store, settings: Settings, app: App, machine: Callable[[], MachineFacts]
) -> StartRecord:
    decision = switch.resolve(app.config)
    facts_now: dict[str, Any] = dict(machine())
    if settings.privacy.get("hostname") == "omit":
        facts_now["hostname"] = None  # an omitted hostname is not kept here either
    if settings.state_url:
        state = f"PostgreSQL {masked(settings.state_url)}"
    elif store.path is not None and not store.memory:
        state = str(store.path)
    else:
        state = "memory (the data dir cannot be written: nothing outlives this process)"
    return StartRecord(
        started_at=app.started_at.timestamp(),
        pid=os.getpid(),
        telemetry="on",
        switch=decision.switch if decision.on else "unknown",
        source=decision.source if decision.on else "unknown",
        reason=f"on: {switch.doing(settings)}",
        mode=settings.mode,
        endpoint=without_credentials(settings.endpoint),
        interval=settings.interval,
        config_file=None if app.config_path is None else str(app.config_path),
        data_dir=str(app.data_dir),
        state=state,
        host=dict(host_facts(app.version, app.edition)),
        machine=facts_now,
        section=_mask(dict(section_of(app.config))),
        settings=shown_settings(settings),
        plugin_version=__version__,
    )


def _mask(section: Mapping[str, Any]) -> dict[str, Any]:
    """The section with every string's credentials masked (one level of mappings: the
    section was validated, so it holds no deeper ones), and a relay header's value not
    kept at all: only its name."""

    def one(value: Any) -> Any:
        if isinstance(value, str):
            return masked(value)
        if isinstance(value, Mapping):
            return {str(k): one(v) for k, v in value.items()}
        return value

    shown = {str(key): one(value) for key, value in section.items()}
    headers = section.get("headers")
    if isinstance(headers, Mapping):
        shown["headers"] = {str(name): MASK for name in headers}
    return shown


def _parse(raw: str | None) -> StartRecord | None:
    if raw is None:
        return None
    try:
        loaded = json.loads(raw)
        # Fields a later version added are left aside; one missing is no record of ours.
        return StartRecord(**{f.name: loaded[f.name] for f in fields(StartRecord)})
    except (ValueError, TypeError, KeyError):
        return None


def _facts(raw: str | None) -> dict[str, Any] | None:
    try:
        loaded = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None
