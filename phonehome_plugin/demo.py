"""See telemetry work end to end, offline, in a few seconds.

``run_demo()`` starts an embedded receiver on 127.0.0.1, a simulated MaestroHub
host with a typical factory's inventory and the example ``acme.historian``
collector, and drives the host through its life: startup, the first user,
``hours`` simulated hours of work (ticking every simulated 10 minutes), shutdown.
Each report is printed as the receiver gets it, one header line and one line per
section. It contacts nothing but 127.0.0.1.

The host clock starts ``hours`` hours in the past, so the simulated run ends
about now and every ``generated_at`` is a plausible time. Reports are sent by the
plugin's own thread; after each step the demo waits (bounded, in real time) until
that thread has handled every tick, and moves the simulated clock on, ten minutes
at a time, while a report it expects is not yet due.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from phonehome_plugin import switch
from phonehome_plugin.activity import Activity
from phonehome_plugin.examples import historian
from phonehome_plugin.plugin import RUNTIME_NAME
from phonehome_plugin.receiver import Receiver
from phonehome_plugin.simhost import SimClock, SimHost

REPORT_WAIT = 10.0
"""Real seconds to wait for the plugin to handle the ticks so far before moving on."""
TOTAL_WAIT = 20.0
"""Real seconds of waiting in all, so a plugin that sends nothing fails the demo quickly."""
TICK = 600.0
"""Simulated seconds between ticks while the factory works."""
SEED = 2024
MISSING = "-"


def run_demo(out: TextIO | None = None, *, hours: int = 4) -> int:
    """Run the demo, printing to ``out`` (standard output by default).

    Returns 0 when every expected report arrived (one ``startup``, one
    ``first_user``, at least ``hours`` ``periodic``), else 1 with the reason printed.
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
        if not decision.on:
            print(f"phonehome demo: telemetry is {decision.reason}; nothing to show.", file=out)
            return 1
        clock = SimClock(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours))
        host = SimHost(
            config, Path(tmp), clock=clock, edition="foundation", extra_plugins=[historian]
        )
        activity = Activity(seed=SEED)
        activity.populate_factory(host)
        print(
            f"phonehome demo: simulated MaestroHub {host.version} ({host.edition}), "
            f"{hours} h of factory work, reports to {receiver.url}\n",
            file=out,
        )
        view = _Printer(receiver, host, out)
        try:
            host.start()
            host.tick()  # the first tick, after every module synced: the startup report
            view.wait_for(1)
            host.create_user("admin@example.com")
            host.tick()
            view.wait_for(2)
            for hour in range(hours):
                activity.hour_of_work(host, tick_every=TICK)
                # A slot's report waits a few minutes of jitter past the slot's start,
                # so it may fall due just after the hour of work: move the clock on.
                for _ in range(round(3600 / TICK)):
                    if view.wait_for(3 + hour, quiet=True):
                        break
                    host.tick(TICK)
                else:
                    view.wait_for(3 + hour)
        finally:
            host.shutdown()
        view.show_new()
        return _verdict(view.triggers, receiver, hours, time.perf_counter() - began, out)


def _verdict(
    triggers: Counter[str], receiver: Receiver, hours: int, elapsed: float, out: TextIO
) -> int:
    expected = {"startup": 1, "first_user": 1}
    missing = [f"{t} {triggers[t]}/{n}" for t, n in expected.items() if triggers[t] != n]
    if triggers["periodic"] < hours:
        missing.append(f"periodic {triggers['periodic']}/{hours}")
    print(
        f"{len(receiver.reports)} reports received ({_triggers(triggers)}), "
        f"{receiver.duplicates} duplicates, {elapsed:.1f} s of wall time",
        file=out,
    )
    if missing:
        print(f"FAILED: expected reports did not arrive: {', '.join(missing)}", file=out)
        return 1
    return 0


def _triggers(triggers: Counter[str]) -> str:
    return ", ".join(f"{n} {trigger}" for trigger, n in triggers.items()) or "none"


class _Printer:
    """Prints reports as the receiver gets them, each once, in arrival order."""

    def __init__(self, receiver: Receiver, host: SimHost, out: TextIO) -> None:
        self.receiver, self.host, self.out = receiver, host, out
        self.shown = 0
        self.triggers: Counter[str] = Counter()
        self.budget_end = time.monotonic() + TOTAL_WAIT

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
            print(f"   (report #{count} did not arrive in time; going on)\n", file=self.out)
        return arrived

    def show_new(self) -> None:
        reports = self.receiver.reports
        for report in reports[self.shown :]:
            self.triggers[str(report.get("trigger"))] += 1
            for line in render(report):
                print(line, file=self.out)
        self.shown = len(reports)


def render(report: Mapping[str, Any]) -> list[str]:
    """A report in the demo's compact form; any missing field prints as ``-``."""

    def get(*path: str) -> Any:
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    ex = ("executions",)
    nodes = get("pipelines", "nodes_by_type")
    since = get(*ex, "since_previous_report", "total")
    lines = [
        f"#{_text(get('sequence'))} {_text(get('trigger')):<11} {_text(get('generated_at'))}"
        f"  report {_text(get('report_id'))}",
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
    return [*lines, ""]


def _line(label: str, *parts: str) -> str:
    return f"   {label:<12}" + "  ".join(part for part in parts if part)


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
