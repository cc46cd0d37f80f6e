"""Simulation and demo tooling, public and opt-in: for module authors' tests, this
project's tests and benchmarks, and the demo.

- :mod:`.kit`: the testing kit for module authors, :class:`~.kit.Harness`: a simulated
  host with phonehome on, a wait until the plugin has handled everything, the reports
  it sent, parsed; :mod:`.pytest_plugin` gives it as the ``phonehome`` fixture, with the
  developer's telemetry switches cleared and the loopback guard on (docs/modules.md);
- :mod:`.simhost`: :class:`~.simhost.SimHost`, a simulated MaestroHub on a clock
  the caller drives (:mod:`.simclock`), speaking MaestroHub's vocabulary
  (:mod:`.vocabulary`); :mod:`.activity` drives it plausibly;
- :mod:`.endpoint`: a telemetry endpoint and GeoIP service on 127.0.0.1;
  :mod:`.faults`, its fault-injecting sibling: servers that hang, reset, trickle or
  hang up by script, and a proxy;
- :mod:`.loopback`: connections and name lookups for loopback only, the guard that
  keeps a test on the machine;
- :mod:`.demo`: the whole life of a host, printed; :mod:`.examples`: a third-party
  collector to copy.

Never imported by a production module (anything else under ``phonehome_plugin/``):
``tests/test_layout.py`` fails when one does. The one exception is the ``phonehome
demo`` command, which imports :mod:`.demo` inside its own function.

May import: config, plugin, runtime, reports.
"""
