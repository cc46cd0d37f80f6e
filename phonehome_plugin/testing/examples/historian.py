"""An example third-party collector: a historian module reporting its own counts.

A MaestroHub module adds a section to telemetry reports by implementing
``phonehome_register_collectors`` in its plugin, found through the ``maestrohub``
entry-point group like any other::

    [project.entry-points.maestrohub]
    acme_historian = "phonehome_plugin.testing.examples.historian"

The implementation is marked ``optionalhook=True``, so the module loads on hosts
where phonehome is not installed (and the hook therefore has no specification). A
real module, unlike this example shipped inside phonehome, depends on the contract
alone (``maestrohub-hookspecs``); docs/modules.md walks through one, test included.

The section it contributes is counts only: pipelines seen writing and points
written, never a pipeline id, topic or value. That is what the contract allows in
a collector section (short keys to numbers, booleans, short identifiers, or one
level of such mappings), and the plugin drops anything else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from hookspecs import Collector, hookimpl, signals

NAME = "acme.historian"


class HistorianCollector:
    """Counts ``execution-finished`` per pipeline while telemetry is on.

    The receiver runs on the host's emitting thread, up to thousands of times a
    second, so it does one dictionary update under a lock and nothing else.
    """

    name = NAME

    def __init__(self, backends: dict[str, int] | None = None) -> None:
        self.backends = dict(backends or {"influx": 1})
        self._lock = threading.Lock()
        self._per_pipeline: dict[object, int] = {}

    def receivers(self) -> Iterator[tuple[Any, Callable[..., None]]]:
        """The one signal this collector listens to, with its receiver."""
        yield signals.execution_finished, self.on_execution

    def on_execution(self, sender: object, *, pipeline_id: object = None, **extra: Any) -> None:
        """Count one execution. ``extra`` (workflow, credentials...) is never looked at."""
        with self._lock:
            self._per_pipeline[pipeline_id] = self._per_pipeline.get(pipeline_id, 0) + 1

    def collect(self) -> dict[str, Any]:
        """The report section: how many pipelines wrote, how many points, which backends."""
        with self._lock:
            counts = list(self._per_pipeline.values())
        return {
            "series": len(counts),
            "points_written": sum(counts),
            "busiest_pipeline_points": max(counts, default=0),
            "backends": dict(self.backends),
        }


@hookimpl(optionalhook=True)
def phonehome_register_collectors(register: Callable[[Collector], None]) -> None:
    """Give phonehome a fresh collector; called once per host start while telemetry is on."""
    register(HistorianCollector())
