"""Child process of :mod:`bench.startup`: a host start, or sends, in a fresh interpreter.

``python -m bench.child_start SUBJECT N URL`` runs, as the host contract's
section 1 has it, ``PluginManager("maestrohub")`` with the host's hookspecs, the
entry-point discovery, then ``on_startup`` (historic), and stops there (``os._exit``:
the interpreter's teardown is no part of a start). It imports nothing of
``phonehome_plugin`` itself (the host has none of it): the plugin is reached through
its entry point only. SUBJECT:

- ``start-bare``: the host without the plugin (the discovery scans the same
  installed distributions, for a group nothing is in);
- ``start-off``: the plugin installed, ``enabled: false``;
- ``start-on``: the plugin on (no tick: its worker has no thread yet);
- ``send-none``, ``send-wrapped``, ``send-unwrapped``: the plugin on, then N
  ``execution-finished`` sends, with no third-party collector, with a collector
  whose receiver the plugin connected (it rides in the plugin's own receiver of the
  signal), or with that same receiver connected directly by the host;
- ``foreign-wrapped``, ``foreign-unwrapped``: the same for N sends of a signal that
  is not the contract's (the plugin has no receiver of it, so it connects the
  collector's receiver inside its guard).

It prints one JSON line: the thread CPU time of the ``on_startup`` call and of the
sends, and the process's user CPU time at the end. Run natively, or under
callgrind (:mod:`bench.startup`) to count instructions.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blinker
import pluggy

import hookspecs.host
from hookspecs import hookimpl, signals

EMPTY_GROUP = "maestrohub.bench-nothing-here"
FOREIGN = blinker.Signal("acme-batch-finished")
"""A signal of a third-party module's own, outside the contract."""


class Counting:
    """A third-party collector with a receiver (as :class:`bench.host.CountingCollector`;
    repeated here so that this child imports nothing but the host's own packages)."""

    name = "acme.executions"

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.counts: dict[Any, int] = {}

    def receivers(self) -> list[tuple[Any, Any]]:
        return [(self.signal, self.on_execution)]

    def on_execution(self, sender: Any, status: Any = None, **extra: Any) -> None:
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1

    def collect(self) -> dict[str, Any]:
        return {"seen": sum(self.counts.values())}


class Module:
    """A third-party MaestroHub module registering one collector."""

    def __init__(self, collector: Counting) -> None:
        self.collector = collector

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Any) -> None:
        register(self.collector)


def main(subject: str, count: int, url: str) -> dict[str, Any]:
    for name in ("DO_NOT_TRACK", "MAESTROHUB_PHONEHOME_ENABLED"):
        os.environ.pop(name, None)
    enabled = subject != "start-off"
    config = {"modules": {"phonehome": {"endpoint": url, "geoip_url": "", "enabled": enabled}}}
    pm = pluggy.PluginManager("maestrohub")
    pm.add_hookspecs(hookspecs.host)
    signal = FOREIGN if subject.startswith("foreign-") else signals.execution_finished
    collector = Counting(signal)
    if subject.endswith("-wrapped"):
        pm.register(Module(collector))
    pm.load_setuptools_entrypoints(EMPTY_GROUP if subject == "start-bare" else "maestrohub")
    app = SimpleNamespace(
        version="2.3.0",
        edition="enterprise",
        config=config,
        config_path=None,
        data_dir=Path(tempfile.mkdtemp(prefix="phonehome-bench-start-")),
        started_at=datetime.now(UTC).replace(microsecond=0),
        plugin_manager=pm,
    )
    began = time.thread_time()
    pm.hook.on_startup.call_historic(kwargs={"app": app})
    startup = time.thread_time() - began
    if subject.endswith("-unwrapped"):
        signal.connect(collector.on_execution, sender=app, weak=False)
    sends = 0.0
    if subject.startswith(("send-", "foreign-")):
        send = signal.send
        began = time.thread_time()
        for _ in range(count):
            send(app, pipeline_id="p7", status="completed", duration_ms=42)
        sends = time.thread_time() - began
        assert sum(collector.counts.values()) == (0 if subject == "send-none" else count)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "subject": subject,
        "on_startup_cpu_s": startup,
        "sends_cpu_s": sends,
        "user_cpu_s": usage.ru_utime,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
    }


if __name__ == "__main__":
    result = main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)
