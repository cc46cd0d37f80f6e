"""The hook owned by the phonehome plugin: third-party collectors.

The phonehome plugin adds this module to the host's plugin manager during its
``on_startup``. A third-party MaestroHub module implements the hook in a plugin
of its own, discovered through the ``maestrohub`` entry-point group, and marks
it ``optionalhook=True`` so that it loads where phonehome is not installed::

    from hookspecs import hookimpl

    class HistorianCollector:
        name = "acme.historian"

        def collect(self):
            return {"series": 12, "backends": {"influx": 1}}

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(register):
        register(HistorianCollector())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hookspecs.markers import hookspec


@hookspec(historic=True)
def phonehome_register_collectors(register: Callable[[Any], None]) -> None:
    """Register the collectors this module contributes to telemetry reports.

    Historic: plugins registered after phonehome started are called on
    registration. Called only while telemetry is on.

    :param register: ``register(collector)`` adds one collector. A collector is
        any object with

        - ``name`` (required): a unique dotted name such as ``acme.historian``;
          the key of its section under the report's ``collectors``;
        - ``collect()`` (required): returns the section, a mapping of short keys
          to numbers, booleans, short identifier strings, or one level of such
          mappings. Called on the plugin's own thread when a report is built;
        - ``receivers()`` (optional): an iterable of ``(blinker signal,
          callable)`` pairs, connected while telemetry is on and disconnected
          when it is off or shutting down. Receivers run on the emitting thread:
          they must only update counters.

        ``register`` raises ``TypeError`` when the object lacks ``name`` or
        ``collect`` or ``name`` is not a dotted identifier, and ``ValueError``
        when the name is already registered, so that the registering module's
        own tests catch the mistake. Anything that goes wrong later (a raising,
        hanging or out-of-contract ``collect()`` or receiver) costs only that
        collector's section, recorded as a collector error in the report.
    """
