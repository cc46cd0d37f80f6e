"""See telemetry work end to end, offline, in a few seconds.

``run_demo()`` starts an embedded receiver on 127.0.0.1, a simulated MaestroHub
host with a typical factory's inventory and the example ``acme.historian``
collector, and drives the host through its life: startup, the first user,
``hours`` simulated hours of work (ticking every simulated 10 minutes), shutdown.
Each report is printed as the receiver gets it, one header line and a few lines
per section, after a line saying what the host did since the previous one. Every
line fits an 80-column terminal. It contacts nothing but 127.0.0.1.

The timeline is consistent: each hour of work is followed by the periodic report
that covers exactly that hour (its executions "since last" are the hour's). The
plugin sends periodic reports at its own slot of each hour (an offset and a
jitter derived from the installation's ``instance_id``, see :mod:`.schedule`), so
the demo reads the ``instance_id`` from the startup report, lets the host idle
until the first slot's report, and lines each hour of work up so that it ends on
the tick at which the next report falls due. If a report does not come on that
tick (a plugin whose schedule differs), the demo ticks on, ten minutes at a time.

The host clock starts about ``hours + 1`` hours in the past, so the simulated run
ends about now and every ``generated_at`` is a plausible time. Reports are sent
by the plugin's own thread; after each step the demo waits (bounded, in real
time) until that thread has handled every tick.
"""

from __future__ import annotations

import math
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from phonehome_plugin.config import switch
from phonehome_plugin.plugin import RUNTIME_NAME
from phonehome_plugin.reports import schedule
from phonehome_plugin.testing.activity import Activity
from phonehome_plugin.testing.endpoint import Receiver
from phonehome_plugin.testing.examples import historian
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

REPORT_WAIT = 60.0
"""Most real seconds to wait for the plugin to handle the ticks so far before moving
on. Only a hung worker costs this long: the wait ends as soon as it is idle (on a
machine with every core busy its first job, imports included, took over 10 s)."""
TOTAL_WAIT = 120.0
"""Real seconds of waiting in all, so a plugin that hangs fails the demo in bounded time."""
TICK = 600.0
"""Simulated seconds between ticks while the factory works."""
HOUR = 3600.0
"""Simulated seconds of one hour of work (:meth:`.Activity.hour_of_work`)."""
SEED = 2024
MISSING = "-"
WIDTH = 80
"""Widest line the demo prints."""
LABEL = 12
"""Width of a section's label; its values start after three spaces and the label."""


def run_demo(out: TextIO | None = None, *, hours: int = 4) -> int:
    """Run the demo, printing to ``out`` (standard output by default).

    Returns 0 when every expected report arrived (one ``startup``, one
    ``first_user``, one ``periodic`` per hour of work and, before them, the first
    slot's), else 1 with the reason printed. No line printed is wider than
    :data:`WIDTH`.
    """
    out = sys.stdout if out is None else out
    began = time.perf_counter()
    with (
        Receiver() as receiver,
        tempfile.TemporaryDirectory(prefix="phonehome-demo-", ignore_cleanup_errors=True) as tmp,
    ):
        phonehome = {"endpoint": receiver.url, "geoip_url": receiver.geoip_url}
        config = {"modules": {"phonehome": phonehome}}
        decision = switch.resolve(config)
        if not decision.on or decision.settings is None:
            say(out, f"phonehome demo: telemetry is {decision.reason}; nothing to show.")
            return 1
        interval = float(decision.settings.interval)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours + 1)
        clock = SimClock(start)
        host = SimHost(
            config, Path(tmp), clock=clock, edition="foundation", extra_plugins=[historian]
        )
        activity = Activity(seed=SEED)
        activity.populate_factory(host)
        say(
            out,
            f"phonehome demo: a simulated MaestroHub {host.version} ({host.edition}), "
            f"{hours} h of factory work",
            f"reports go to the receiver at {receiver.url}",
            "",
        )
        view = _Printer(receiver, host, out)
        expected = 2
        try:
            host.start()
            # The first tick comes after every module synced: the startup report.
            view.event(f"[{_hhmm(clock.now())}] MaestroHub starts")
            host.tick()
            view.wait_for(1)
            view.event(f"[{_hhmm(clock.now())}] the first user is created")
            host.create_user("admin@example.com")
            host.tick()
            view.wait_for(2)
            slots = _Slots.of(receiver.reports, clock.now(), interval) if hours else None
            if slots is not None:
                # Before any work: the report of the installation's first slot.
                since = clock.now()
                _advance_to(host, slots.due(1))
                view.event(
                    f"[{_hhmm(since)}-{_hhmm(clock.now())}] no work yet, up to the "
                    "installation's first hourly slot"
                )
                expected += 1
                view.wait_for(expected)
            for hour in range(hours):
                if slots is not None:
                    # Start late enough that the hour's last tick, not an earlier one,
                    # is the first at or past the due time of the report it leads to
                    # (an idle minute or two: slots' jitters differ).
                    _advance_to(host, slots.due(hour + 2) - HOUR)
                since = clock.now()
                sent = activity.hour_of_work(host, tick_every=TICK)
                view.event(
                    f"[{_hhmm(since)}-{_hhmm(clock.now())}] hour {hour + 1} of {hours}: "
                    f"{sum(sent.values()):,} pipeline executions"
                )
                expected += 1
                # A report that is not due yet (the plugin's schedule is not the one
                # assumed): move the clock on.
                for _ in range(round(HOUR / TICK)):
                    if view.wait_for(expected, quiet=True):
                        break
                    host.tick(TICK)
                else:
                    view.wait_for(expected)
        finally:
            host.shutdown()
        view.show_new()
        view.event(f"[{_hhmm(clock.now())}] MaestroHub shuts down")
        return _verdict(view.triggers, receiver, expected - 2, time.perf_counter() - began, out)


def say(out: TextIO, *texts: str) -> None:
    """Print each text, wrapped to :data:`WIDTH` (continuation lines indented by 3)."""
    for text in texts:
        lines = textwrap.wrap(text, WIDTH, subsequent_indent="   ", break_on_hyphens=False) or [""]
        for line in lines:
            print(line, file=out)


class _Slots:
    """When this installation's periodic reports fall due (epoch seconds, host clock).

    Report 1 is the first one after startup; :mod:`.schedule` decides, from the
    ``instance_id`` every report carries.
    """

    def __init__(self, instance_id: str, started: datetime, interval: float) -> None:
        self.instance_id, self.interval = instance_id, interval
        offset = schedule.offset(instance_id, interval)
        # The reporter counts the slot that holds the startup report as done.
        self.startup_slot = schedule.slot_of(started.timestamp(), interval, offset)

    @classmethod
    def of(
        cls, reports: list[dict[str, Any]], started: datetime, interval: float
    ) -> _Slots | None:
        """From the startup report; None when none arrived or it names no installation."""
        instance_id = reports[0].get("instance_id") if reports else None
        if not isinstance(instance_id, str) or not instance_id:
            return None
        return cls(instance_id, started, interval)

    def due(self, number: int) -> float:
        """When report ``number`` (1 for the first after startup) falls due."""
        last = self.startup_slot + number - 1
        return schedule.periodic_due_at(last, self.instance_id, self.interval)


def _advance_to(host: SimHost, when: float) -> None:
    """Tick every :data:`TICK` seconds (the last step shorter) up to the whole second
    at or after ``when``; nothing when the clock is there already."""
    target = math.ceil(when)
    while (left := target - host.clock.now().timestamp()) > 0:
        host.tick(min(TICK, left))


def _hhmm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def _verdict(
    triggers: Counter[str], receiver: Receiver, periodic: int, elapsed: float, out: TextIO
) -> int:
    expected = {"startup": 1, "first_user": 1}
    missing = [f"{t} {triggers[t]}/{n}" for t, n in expected.items() if triggers[t] != n]
    if triggers["periodic"] < periodic:
        missing.append(f"periodic {triggers['periodic']}/{periodic}")
    say(
        out,
        f"{len(receiver.reports)} reports received in {elapsed:.1f} s: "
        f"{_triggers(triggers)}; {receiver.duplicates} duplicates",
    )
    # Nothing the plugin does should make these happen; if it does, say so in one line.
    if receiver.disconnects or receiver.error_count:
        say(
            out,
            f"the receiver saw {_counted_as(receiver.disconnects, 'connection')} reset or "
            f"cut short, and {_counted_as(receiver.error_count, 'request')} fail",
        )
    if missing:
        say(out, f"FAILED: expected reports did not arrive: {', '.join(missing)}")
        return 1
    return 0


def _counted_as(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _triggers(triggers: Counter[str]) -> str:
    return ", ".join(f"{n} {trigger}" for trigger, n in triggers.items()) or "none"


class _Printer:
    """Prints reports as the receiver gets them, each once, in arrival order, and the
    host's doings between them."""

    def __init__(self, receiver: Receiver, host: SimHost, out: TextIO) -> None:
        self.receiver, self.host, self.out = receiver, host, out
        self.shown = 0
        self.triggers: Counter[str] = Counter()
        self.budget_end = time.monotonic() + TOTAL_WAIT

    def event(self, text: str) -> None:
        """What the host did (printed before the report it leads to)."""
        say(self.out, text)

    def wait_for(self, count: int, *, quiet: bool = False) -> bool:
        """Whether ``count`` reports arrived once the plugin handled every tick so far.

        The plugin's worker sends on its own thread; the demo waits (bounded) until it
        is idle, so a report that is due has arrived, and one that is not is not
        waited for in vain. Prints each new report, and a miss unless ``quiet``.
        """
        runtime = self.host.app.plugin_manager.get_plugin(RUNTIME_NAME)
        left = self.budget_end - time.monotonic()
        if runtime is not None and left > 0:
            runtime.worker.wait_idle(min(REPORT_WAIT, left))
        # The receiver records a report before it answers, so an idle worker's
        # reports are all there: nothing more to wait for.
        self.show_new()
        arrived = self.shown >= count
        if not arrived and not quiet:
            say(self.out, f"   (report #{count} did not arrive in time; going on)", "")
        return arrived

    def show_new(self) -> None:
        reports = self.receiver.reports
        for report in reports[self.shown :]:
            self.triggers[str(report.get("trigger"))] += 1
            for line in render(report):
                print(line, file=self.out)
        self.shown = len(reports)


def render(report: Mapping[str, Any]) -> list[str]:
    """A report in the demo's compact form, no line wider than :data:`WIDTH`.

    A header line, then one line per section (label, then values; a section too
    long for one line goes on in lines indented to its values), then a blank line.
    Any missing field prints as ``-``.
    """

    def get(*path: str) -> Any:
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    ex = ("executions",)
    nodes = get("pipelines", "nodes_by_type")
    since = get(*ex, "since_previous_report", "total")
    header = (
        f"#{_text(get('sequence'))} {_text(get('trigger')):<10} {_text(get('generated_at'))}"
        f"  {_text(get('report_id'))}"
    )
    sections = [
        _line(
            "system",
            f"MaestroHub {_text(get('system', 'version'))} {_text(get('system', 'edition'))}",
            f"{_text(get('system', 'os'))}/{_text(get('system', 'arch'))}",
            f"host {_text(get('system', 'hostname'))}",
            f"ip {_text(get('system', 'public_ip'))}",
        ),
        _line("license", f"{_text(get('license', 'id'))} ({_text(get('license', 'status'))})"),
        _line(
            "users", _text(get("users", "total")), f"first {_text(get('users', 'first_email'))}"
        ),
        _line("location", _place(get("location"))),
        _line("connections", _counted(get("connections", "total"), get("connections", "by_type"))),
        _line(
            "pipelines",
            f"{_text(get('pipelines', 'total'))}, {_text(get('pipelines', 'enabled'))} enabled",
            f"nodes {_counted(_sum(nodes), nodes, shown=3)}",
        ),
        _line(
            "uns",
            f"{_text(get('uns', 'topic_count'))} topics",
            f"{_text(get('uns', 'client_count'))} clients",
            f"mqtt {_text(get('uns', 'mqtt_mode'))}",
            f"storage {_text(get('uns', 'storage_mode'))}",
        ),
        _line(
            "executions",
            f"total {_text(get(*ex, 'total'))}",
            f"(+{_text(since)} since last)" if since is not None else "",
            f"success {_rate(get(*ex, 'success_rate'), get(*ex, 'success'), get(*ex, 'failure'))}",
            f"failed {_text(get(*ex, 'failure'))}",
            f"uptime {_duration(get(*ex, 'uptime_seconds'))}",
        ),
        _line(
            "other",
            f"{_text(get('other', 'organizations'))} organizations",
            f"{_text(get('other', 'data_models'))} data models",
        ),
        _line("collectors", _nested(get("collectors"))),
        _line("diagnostics", _nested(get("diagnostics"), skip_empty=True) or "ok"),
    ]
    head = textwrap.wrap(header, WIDTH, subsequent_indent="   ", break_on_hyphens=False)
    return [*head, *(line for section in sections for line in section), ""]


def _line(label: str, *parts: str) -> list[str]:
    """``label`` and the non-empty ``parts``, two spaces apart, in lines of at most
    :data:`WIDTH`: a part that does not fit on the current line starts the next one
    (indented to the values), and a part longer than a whole line is wrapped."""
    lead = f"   {label:<{LABEL}}"
    room = max(WIDTH - len(lead), 20)
    rows: list[str] = []
    for part in filter(None, parts):
        pieces = textwrap.wrap(part, room, break_on_hyphens=False) or [part]
        if len(pieces) == 1 and rows and len(rows[-1]) + 2 + len(pieces[0]) <= room:
            rows[-1] += "  " + pieces[0]
        else:
            rows.extend(pieces)
    indent = " " * len(lead)
    return [lead + rows[0] if rows else lead.rstrip(), *(indent + row for row in rows[1:])]


def _text(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _sum(counts: Any) -> int | None:
    if not isinstance(counts, Mapping):
        return None
    numbers = [n for n in counts.values() if isinstance(n, int)]
    return sum(numbers) if numbers else None


def _counted(total: Any, by_type: Any, shown: int = 4) -> str:
    """``10 (mqtt 3, opcua 2, ...)``: the total, then the largest few kinds."""
    if not isinstance(by_type, Mapping) or not by_type:
        return _text(total)
    kinds = sorted(by_type.items(), key=lambda item: (-_number(item[1]), str(item[0])))
    parts = [f"{kind} {_text(n)}" for kind, n in kinds[:shown]]
    more = ", ..." if len(kinds) > shown else ""
    return f"{_text(total)} ({', '.join(parts)}{more})"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _rate(rate: Any, success: Any, failure: Any) -> str:
    # The core reports a fraction; accept a percentage too, since the shape is new.
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        decided = _number(success) + _number(failure)
        if not decided:
            return MISSING
        rate = _number(success) / decided
    percent = rate * 100 if rate <= 1 else rate
    return f"{percent:.1f}%"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return MISSING
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def _place(location: Any) -> str:
    if not isinstance(location, Mapping):
        return MISSING
    city, region, country = (location.get(k) for k in ("city", "region", "country"))
    names = [name for name in (city, region if region != city else None, country) if name]
    isp = location.get("isp")
    place = ", ".join(map(str, names)) or MISSING
    return f"{place} ({isp})" if isp else place


def _nested(section: Any, *, skip_empty: bool = False) -> str:
    """``acme.historian: series 12, backends {influx 1}``, one level deep at a glance."""
    if not isinstance(section, Mapping):
        return "" if skip_empty else MISSING
    parts = [f"{key}: {value}" for key, value in _flatten(section, skip_empty)]
    text = "; ".join(parts) if parts else ("" if skip_empty else "none")
    return text if len(text) <= 160 else text[:157] + "..."


def _flatten(section: Mapping[str, Any], skip_empty: bool) -> Iterator[tuple[str, str]]:
    for key, value in section.items():
        if skip_empty and not value:
            continue  # zero counts and empty maps are the normal case: not worth a glance
        if isinstance(value, Mapping):
            inner = [f"{k} {_brief(v)}" for k, v in value.items() if v or not skip_empty]
            if inner:
                yield str(key), ", ".join(inner)
        else:
            yield str(key), _brief(value)


def _brief(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} {_brief(v)}" for k, v in value.items()) + "}"
    return _text(value)
