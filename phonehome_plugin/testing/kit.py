"""The testing kit for MaestroHub module authors: a collector's section, end to end.

A :class:`Harness` is one simulated MaestroHub start (:class:`~.simhost.SimHost`, on a
clock the test drives) with the phonehome plugin on, sending its reports to an
in-process receiver on 127.0.0.1 (:class:`~.endpoint.Receiver`); the test reads them
back parsed, as the MaestroHub team gets them::

    with Harness(tmp_path) as phonehome:    # finds installed modules by entry point
        phonehome.start()                   # startup report sent and received
        phonehome.host.run_executions(5)    # what the host's modules do
        phonehome.next_report()             # host time moves on to the next report
        assert phonehome.section("acme.historian") == {"writes": 5}

Every step that hands the plugin work waits, bounded, until the plugin has handled
all of it (:meth:`Harness.settle`): no sleeping, no polling in the test. Mistakes
are the test's failures: a module whose registration raised (``register()`` refusing
an object that is no collector, say) raises that very exception from
:meth:`~Harness.start` (or from the next step, for a module registered later), and
:meth:`~Harness.section` fails with the reason the report gives when the section is
missing (``collect() raised ZeroDivisionError``).

With pytest, :mod:`.pytest_plugin` gives the harness as the ``phonehome`` fixture,
with the developer's telemetry switches (``DO_NOT_TRACK``...) cleared and the loopback
guard (:mod:`.loopback`) on. Without it, do both yourself: the harness does neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from phonehome_plugin.plugin import RUNTIME_NAME
from phonehome_plugin.reports import schedule
from phonehome_plugin.testing.endpoint import Receiver
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

if TYPE_CHECKING:
    from phonehome_plugin.runtime import Runtime

__all__ = ["Harness"]

SETTLE_TIMEOUT = 30.0
"""Real seconds :meth:`Harness.settle` waits at most: only a hung plugin takes this
long (the wait ends as soon as the plugin is idle), and then the test fails."""
STEP = 300.0
"""Host seconds between the ticks of :meth:`Harness.next_report`."""


class Harness:
    """One simulated host start with phonehome on, reporting to an in-process receiver.

    :param data_dir: the host's data directory (a fresh one per test: ``tmp_path``).
    :param plugins: MaestroHub plugins (modules or objects with hook implementations)
        registered after the entry points, before ``on_startup``.
    :param load_entrypoints: load every installed ``maestrohub`` entry point, as a
        host does: phonehome itself and every installed module. With ``False``, only
        phonehome (registered by the harness) and ``plugins``.
    :param config: more keys of ``modules.phonehome`` (``interval``, ``privacy``...);
        ``endpoint`` and ``geoip_url`` point at the receiver unless given.
    :param clock: the host's clock; a :class:`~.simclock.SimClock` at the current
        time (read once) by default.

    The receiver starts at once; the host is made at once and started by
    :meth:`start`, so a test may set the host's state first (``harness.host``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        plugins: Sequence[object] = (),
        load_entrypoints: bool = True,
        config: Mapping[str, Any] | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.receiver = Receiver()
        settings = {
            "endpoint": self.receiver.url,
            "geoip_url": self.receiver.geoip_url,
            **(config or {}),
        }
        self.interval = float(settings.get("interval", 3600))
        """Seconds between periodic reports, as configured."""
        extra: list[object] = list(plugins)
        if not load_entrypoints:
            from phonehome_plugin import plugin

            extra.insert(0, plugin)
        self.host = SimHost(
            {"modules": {"phonehome": settings}},
            Path(data_dir),
            clock=clock or SimClock(),
            extra_plugins=extra,
            load_entrypoints=load_entrypoints,
        )
        """The simulated host: its clock, state and the ``save_*``/``run_executions``
        methods that make its modules emit signals (:class:`~.simhost.SimHost`)."""
        self._raised = 0

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Driving the host -------------------------------------------------------------------

    def start(self) -> None:
        """Start the host (plugins, ``on_startup``, every module synced), tick once and
        wait until the startup report has been handled: then :attr:`reports` holds it.

        Raises the exception of the first module whose registration raised (or whose
        ``register()`` call was refused), so that the module's test fails with it.
        """
        self.host.start()
        self._raise_refused()
        if self.runtime() is None:
            raise AssertionError(
                "phonehome did not start: telemetry is off (see the log) or the "
                "phonehome plugin is not installed"
            )
        self.tick()

    def tick(self, seconds: float | None = None) -> None:
        """Move the host's clock ``seconds`` on (if given), tick, and :meth:`settle`."""
        self.host.tick(seconds)
        self.settle()

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until the plugin has handled everything it was given (every tick, every
        created user: reports built, sent and received). Fails the test after
        ``timeout`` real seconds, and raises a registration error of a module
        registered since the last step."""
        self._raise_refused()
        runtime = self.runtime()
        if runtime is None:
            raise AssertionError("phonehome is not running: start() first")
        if not runtime.worker.wait_idle(timeout):
            raise AssertionError(f"phonehome did not settle within {timeout} s")

    def next_report(self) -> dict[str, Any]:
        """Tick the host on, :data:`STEP` host seconds at a time, until the next report
        has arrived (a periodic one, at most an interval and its jitter away), and
        return it."""
        before = len(self.receiver.reports)
        step = min(STEP, self.interval / 2)
        for _ in range(math.ceil((self.interval + schedule.MAX_JITTER) / step) + 1):
            self.tick(step)
            reports = self.receiver.reports
            if len(reports) > before:
                return reports[before]
        raise AssertionError(f"no report within {self.interval + schedule.MAX_JITTER} s")

    def close(self) -> None:
        """Shut the host down (``on_shutdown``) and stop the receiver; idempotent."""
        try:
            self.host.shutdown()
        finally:
            self.receiver.close()

    # Reading the reports ----------------------------------------------------------------

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Every report received so far, parsed, in the order they arrived."""
        return self.receiver.reports

    @property
    def last_report(self) -> dict[str, Any]:
        """The latest report received; fails the test when there is none."""
        reports = self.receiver.reports
        if not reports:
            raise AssertionError("no report received yet: start() sends the first")
        return reports[-1]

    def section(self, name: str, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The section of collector ``name`` in ``report`` (the latest by default), as
        the report carries it: after the privacy guard dropped what it drops. Fails the
        test when it is missing, with the reason the report records for it."""
        report = self.last_report if report is None else report
        sections = report.get("collectors", {})
        if name in sections:
            section: dict[str, Any] = sections[name]
            return section
        errors = report.get("diagnostics", {}).get("collector_errors", {})
        why = errors.get(name, "it was not registered")
        raise AssertionError(
            f"no section {name!r} in the {report.get('trigger')} report: {why} "
            f"(sections: {sorted(sections)}, errors: {errors})"
        )

    def dropped(self, report: Mapping[str, Any] | None = None) -> dict[str, int]:
        """What the privacy guard dropped from ``report`` (the latest by default), by
        reason: ``collector_key``, ``collector_value``... An empty mapping when a
        collector's section went through whole."""
        report = self.last_report if report is None else report
        dropped: dict[str, int] = report.get("diagnostics", {}).get("privacy_dropped", {})
        return dropped

    # The plugin -------------------------------------------------------------------------

    def runtime(self) -> Runtime | None:
        """The running plugin of this host start, or None (not started, or off)."""
        if not self.host.running:
            return None
        found: Runtime | None = self.host.app.plugin_manager.get_plugin(RUNTIME_NAME)
        return found

    def _raise_refused(self) -> None:
        runtime = self.runtime()
        if runtime is None:
            return
        refused = runtime.registry.refused
        if len(refused) > self._raised:
            module, error = refused[self._raised]
            self._raised = len(refused)
            error.add_note(f"(phonehome's testing kit: module {module} failed to register)")
            raise error
