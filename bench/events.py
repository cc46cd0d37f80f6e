"""Per-event cost of the signals the plugin listens to, against what a host could use instead.

Every subject is the same inlined statement (a ``send`` with the contract's
keyword arguments, or the metrics library's increment) run in interleaved
rounds; see :mod:`bench.measure`.
"""

from __future__ import annotations

from typing import Any

from bench import measure
from bench.host import TYPICAL, Host, host_with, make_inventory
from bench.results import Row
from hookspecs import signals

SECTION_EVENTS = "Per-event cost on the emitting thread"
SEND_EXECUTION = "sig.send(app, pipeline_id='p7', status='completed', duration_ms=42)"
SEND_CONNECTION = "sig.send(app, id='c3', type='opcua')"
NUMBER = 1000
PASSES = 5
WARMUP = 3


def _trivial_receivers(app: Any) -> list[tuple[Any, Any]]:
    """One receiver per signal that increments a dict, connected like the plugin's."""
    executions: dict[Any, int] = {}
    connections: dict[Any, int] = {}

    def on_execution(sender: Any, status: Any = None, **extra: Any) -> None:
        executions[status] = executions.get(status, 0) + 1

    def on_connection(sender: Any, type: Any = None, **extra: Any) -> None:
        connections[type] = connections.get(type, 0) + 1

    pairs = [(signals.execution_finished, on_execution), (signals.connection_saved, on_connection)]
    for signal, receiver in pairs:
        signal.connect(receiver, sender=app, weak=False)
    return pairs


def off_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Telemetry off against no receivers at all. Must run before any plugin connected anything:
    blinker keeps a receiver in ``signal.receivers`` after a per-sender disconnect, which
    would take both subjects off blinker's no-receiver fast path."""
    sig = signals.execution_finished
    untouched = not any(s.receivers for s in signals.ALL)
    off = Host({"modules": {"phonehome": {"enabled": False}}})
    bare = Host({}, load_plugin=False)  # no plugin at all: only the app, as sender
    off.start()
    bare.start()
    connected = [s.name for s in signals.ALL if s.has_receivers_for(off.app)]
    registered = off.runtime is not None
    samples = measure.interleave(
        {
            "off": measure.loop(SEND_EXECUTION, sig=sig, app=off.app),
            "none": measure.loop(SEND_EXECUTION, sig=sig, app=bare.app),
        },
        rounds=60 if quick else 500,
        number=1000,
    )
    off.close()
    bare.close()
    ratio = measure.paired_ratio(samples["off"], samples["none"])
    check = Row(
        "off.connected",
        SECTION_EVENTS,
        "telemetry off: receivers connected, runtime registered",
        float(len(connected) + registered),
        unit="n",
        budget="0 (off costs nothing)",
        ok=not connected and not registered,
        note=(
            f"With `enabled: false` the plugin registered {'a' if registered else 'no'} runtime "
            f"and connected {len(connected)} receivers"
            + (f" ({', '.join(connected)})" if connected else "")
            + "; measured with no receiver connected to any signal in the process"
            + ("" if untouched else " (not so: another receiver was connected first)")
            + "."
        ),
    )
    row = Row(
        "off.execution_finished",
        SECTION_EVENTS,
        "execution-finished, telemetry off",
        samples["off"].median,
        baseline="no receivers at all",
        baseline_value=samples["none"].median,
        ratio=ratio,
    )
    return [row, check], {k: v.quantiles() for k, v in samples.items()}


def event_rows(quick: bool) -> tuple[list[Row], list[measure.Peak], dict[str, Any]]:
    """The plugin's receivers against a trivial receiver, Prometheus and OpenTelemetry."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, Counter

    host = host_with("http://127.0.0.1:9/r")  # a closed port: the reports wait in the outbox
    host.start()
    host.sync(make_inventory(TYPICAL, host.started_at))
    host.tick()  # the first tick opens the worker's store, as in a real host
    host.idle()
    trivial = Host({}, load_plugin=False)
    trivial.start()
    pairs = _trivial_receivers(trivial.app)

    prom = Counter("executions", "Executions finished", ["status"], registry=CollectorRegistry())
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    otel = provider.get_meter("bench").create_counter("executions")

    execution = signals.execution_finished
    connection = signals.connection_saved
    rounds = 80 if quick else 1000
    samples = measure.interleave(
        {
            "plugin": measure.loop(SEND_EXECUTION, sig=execution, app=host.app),
            "trivial": measure.loop(SEND_EXECUTION, sig=execution, app=trivial.app),
            "prometheus": measure.loop(
                "labels(status).inc()", labels=prom.labels, status="completed"
            ),
            "otel": measure.loop("add(1, {'status': status})", add=otel.add, status="completed"),
        },
        rounds=rounds,
        number=NUMBER,
        warmup=WARMUP,
    )
    conn = measure.interleave(
        {
            "plugin": measure.loop(SEND_CONNECTION, sig=connection, app=host.app),
            "trivial": measure.loop(SEND_CONNECTION, sig=connection, app=trivial.app),
        },
        rounds=rounds // 2,
        number=1000,
    )
    passes, count = (3, 5_000) if quick else (PASSES, 20_000)
    peaks = [
        measure.peak_each(
            "execution-finished receiver (plugin on)",
            SEND_EXECUTION,
            passes=passes,
            count=count,
            sig=execution,
            app=host.app,
        ),
        measure.peak_each(
            "connection-saved receiver (plugin on)",
            SEND_CONNECTION,
            passes=passes,
            count=count,
            sig=connection,
            app=host.app,
        ),
    ]
    counted = host.runtime.worker.reporter.build("periodic", host.now)["executions"]["total"]
    sent = (WARMUP + rounds) * NUMBER + passes * count
    host.close()
    trivial.close()
    for signal, receiver in pairs:
        signal.disconnect(receiver, sender=trivial.app)
    provider.shutdown()

    plugin = samples["plugin"]
    label = "execution-finished, plugin on"
    rows = [
        Row(
            "execution_finished.vs_trivial",
            SECTION_EVENTS,
            label,
            plugin.median,
            baseline="one trivial receiver",
            baseline_value=samples["trivial"].median,
            ratio=measure.paired_ratio(plugin, samples["trivial"]),
            limit=1.10,
            budget_on="ratio",
            budget="<= 1.10x",
            note=f"The plugin counted {counted:,} of the {sent:,} executions sent while it was "
            "measured (read back through `reporter.build`).",
        ),
        Row(
            "execution_finished.vs_otel",
            SECTION_EVENTS,
            label,
            plugin.median,
            baseline="OTel SDK `counter.add(1, {status})`",
            baseline_value=samples["otel"].median,
            ratio=measure.paired_ratio(plugin, samples["otel"]),
            limit=0.5,
            budget_on="ratio",
            budget="<= 0.50x",
        ),
        Row(
            "execution_finished.vs_prometheus",
            SECTION_EVENTS,
            label,
            plugin.median,
            baseline="prometheus `Counter.labels(status).inc()`",
            baseline_value=samples["prometheus"].median,
            ratio=measure.paired_ratio(plugin, samples["prometheus"]),
        ),
        Row(
            "connection_saved.vs_trivial",
            SECTION_EVENTS,
            "connection-saved, plugin on",
            conn["plugin"].median,
            baseline="one trivial receiver",
            baseline_value=conn["trivial"].median,
            ratio=measure.paired_ratio(conn["plugin"], conn["trivial"]),
        ),
    ]
    details = {
        "execution_finished": {k: v.quantiles() for k, v in samples.items()},
        "connection_saved": {k: v.quantiles() for k, v in conn.items()},
        "executions_counted": counted,
        "executions_sent": sent,
    }
    return rows, peaks, details
