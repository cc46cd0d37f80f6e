"""``phonehome status`` as plain data: what the host decided, this shell's view, the state.

Three parts, never mixed, so that the answer cannot contradict the host:

- ``host``: the decision record of the newest host start with telemetry on
  (:mod:`.startrecord`), with its time. A start with telemetry off writes nothing
  (off means no file), so ``host_note`` says what the record can and cannot tell:
  a later start may have turned telemetry off, and an installation off from its
  first start has no record at all. None when there is no record.
- ``shell``: what this shell's environment and the config file it read decide, with
  the file named (or the defaults, when no file was found). Labelled as such: a
  service's environment (systemd, a container) is its own, not the shell's.
- ``state``: instance id, last report, outbox, failures, and the next periodic
  report, shown only when a host start with telemetry on recorded its interval and
  the installation's schedule is known; never when no host was on.

:func:`status` never writes anything. ``problems`` lists what makes the command exit 1
(an invalid config, a data dir that does not exist, state that cannot be read): the
rest of the answer is still given.
"""

from __future__ import annotations

from typing import Any

from phonehome_plugin.admin import startrecord
from phonehome_plugin.admin.clock import stamp
from phonehome_plugin.admin.locate import Sources, has_table
from phonehome_plugin.config import switch
from phonehome_plugin.config.notice import masked, shown_settings
from phonehome_plugin.config.settings import OutboxLimits, Settings
from phonehome_plugin.reports import schedule, triggers
from phonehome_plugin.state import history, waiting
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import FAILURES_KEY, Outbox
from phonehome_plugin.state.store import BrokenStateError, NoDataDirError, NoStateError, Store

OFF_WRITES_NOTHING = "a host start with telemetry off writes nothing"


def status(sources: Sources) -> dict[str, Any]:
    """Everything ``phonehome status`` shows, as JSON-ready data (see the module docs)."""
    problems: list[str] = []
    shell = shell_view(sources)
    if shell["problem"]:
        problems.append(shell["problem"])
    state_url = shell.pop("state_url")
    found: dict[str, Any]
    record: startrecord.StartRecord | None = None
    try:
        store = open_store(sources.data_dir, state_url, read_only=True)
    except (BrokenStateError, NoDataDirError) as error:
        problems.append(str(error))
        found = {"where": _where(sources, state_url), "found": False, "problem": str(error)}
        note = f"the state cannot be read, so what the host decided is unknown ({error})"
    except NoStateError as error:
        found = {"where": _where(sources, state_url), "found": False, "note": str(error)}
        note = (
            "no host start with telemetry on has written state here: telemetry has been "
            f"off at every start, or never ran with this data dir ({OFF_WRITES_NOTHING})"
        )
    else:
        try:
            record = startrecord.read(store)
            found = {"where": _where(sources, state_url), "found": True, **_state(store, record)}
            note = _host_note(record)
        except BrokenStateError as error:  # damaged where only a later read looks
            problems.append(str(error))
            found = {"where": _where(sources, state_url), "found": False, "problem": str(error)}
            note = f"the state cannot be read, so what the host decided is unknown ({error})"
        finally:
            store.close()
    host = None if record is None else _host(record)
    if host is not None and shell["telemetry"] != host["telemetry"]:
        note += (
            "; this shell's view differs from it: the host's environment or config file "
            "is not this shell's, or the host restarted since with other settings"
        )
    return {
        "host": host,
        "host_note": note,
        "shell": shell,
        "state": found,
        "waiting": [
            {"pid": w.pid, "since": stamp(w.since), "why": w.why}
            for w in waiting.waiting(sources.data_dir)
        ],
        "problems": problems,
    }


def shell_view(sources: Sources) -> dict[str, Any]:
    """What this shell's environment and config decide (and the state_url they name)."""
    decision = switch.resolve(sources.config, sources.environ)
    settings = decision.settings
    problem = None
    if decision.config_error is not None:
        problem = str(sources.invalid(decision.config_error))
    return {
        "config_file": None if sources.config_file is None else str(sources.config_file),
        "config_found": sources.config_found,
        "telemetry": "on" if decision.on else "off",
        "reason": decision.reason,
        "switch": decision.switch,
        "source": decision.source,
        "mode": settings.mode if settings else None,
        "endpoint": _endpoint(settings),
        "settings": shown_settings(settings) if settings else None,
        "problem": problem,
        "state_url": settings.state_url if settings else None,
    }


def _endpoint(settings: Settings | None) -> str | None:
    return None if settings is None else switch.without_credentials(settings.endpoint)


def _where(sources: Sources, state_url: str | None) -> str:
    return f"PostgreSQL {masked(state_url)}" if state_url else str(sources.data_dir)


def _host(record: startrecord.StartRecord) -> dict[str, Any]:
    return {
        "recorded_at": stamp(record.started_at),
        "telemetry": record.telemetry,
        "reason": record.reason,
        "switch": record.switch,
        "source": record.source,
        "mode": record.mode,
        "endpoint": record.endpoint,
        "interval": record.interval,
        "config_file": record.config_file,
        "data_dir": record.data_dir,
        "state": record.state,
        "version": record.host.get("version"),
        "edition": record.host.get("edition"),
        "pid": record.pid,
        "settings": record.settings,
    }


def _host_note(record: startrecord.StartRecord | None) -> str:
    if record is None:
        return (
            "no host start has recorded its decision in this state (it was written by an "
            "earlier version of the plugin, or telemetry has been off since: "
            f"{OFF_WRITES_NOTHING})"
        )
    return (
        f"as recorded by the host start of {stamp(record.started_at)}; {OFF_WRITES_NOTHING}, "
        "so a later start with telemetry off would not show here"
    )


def _state(store: Store, record: startrecord.StartRecord | None) -> dict[str, Any]:
    outbox = Outbox(store, OutboxLimits())  # the limits bound writes only: none happen here
    count, size = outbox.size()
    last = history.recent(store, 1)
    failures = int(store.get(FAILURES_KEY) or 0)
    gate = outbox.gate()
    kept = len(history.digests(store)) if has_table(store, "sent_reports") else 0
    unexported = len(outbox.unexported()) if has_table(store, "exports") else None
    return {
        "instance_id": store.get("instance_id"),
        "last_report": None if not last else describe_event(last[0]),
        "outbox": f"{count} report(s), {size} bytes",
        "outbox_reports": count,
        "not_exported": unexported,
        "kept_bodies": kept,
        "next_periodic": None if record is None else _next_periodic(store, record.interval),
        "failures": f"{failures} failed send series in a row" if failures else None,
        "next_retry": stamp(gate) if failures and gate else None,
        "last_built": _last_built(store),
    }


def describe_event(event: history.Event) -> str:
    """One delivery outcome in a line: ``#3 periodic at 2026-...Z: sent (HTTP 202)``."""
    head = f"#{event.sequence} {event.trigger} at {stamp(event.at)}"
    return f"{head}: {event.result} ({event.detail})"


def _next_periodic(store: Store, interval: int) -> str | None:
    """When the host builds its next periodic report (host clock), if it can be known."""
    instance_id, last = store.get("instance_id"), store.get(triggers.LAST_SLOT)
    if instance_id is None or last is None or not last.lstrip("-").isdigit():
        return None
    return stamp(schedule.periodic_due_at(int(last), instance_id, interval))


def _last_built(store: Store) -> str | None:
    """When a process of the installation last claimed a trigger (host clock)."""
    row = store.run(lambda c: c.execute("SELECT max(claimed_at) FROM claims").fetchone())
    return None if row is None or row[0] is None else stamp(float(row[0]))
