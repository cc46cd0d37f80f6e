"""Building one report on the runtime's worker, at typical-factory and large-Enterprise scale.

``runtime.worker.reporter.build("periodic", now)`` is what the worker runs for
every report: fold the counts, read the store, snapshot the inventory, call
every collector (on its runner thread), apply the privacy options. It is timed
while the worker is idle, from the benchmark's thread, so nothing else runs.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench import measure
from bench.host import LARGE, TYPICAL, Host, host_with, make_inventory
from bench.results import Row
from hookspecs import signals

SECTION_BUILD = "Building one report (worker thread)"
SECTION_SYNC = "Inventory sync on the host's thread (once per start)"


def _booted(url: str, scale: Any) -> tuple[Host, Any]:
    inventory = make_inventory(scale, datetime.now(UTC))
    host = host_with(url, inventory)
    host.boot(inventory, timeout=60.0)
    return host, inventory


def build_rows(ok_url: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    typical, _ = _booted(ok_url, TYPICAL)
    large, large_inventory = _booted(ok_url, LARGE)
    build = "build('periodic', now)"
    samples = measure.interleave(
        {
            "typical": measure.loop(
                build, build=typical.runtime.worker.reporter.build, now=typical.now
            ),
            "large": measure.loop(build, build=large.runtime.worker.reporter.build, now=large.now),
        },
        rounds=15 if quick else 150,
        number=1,
        warmup=2,
    )
    reports = {
        "typical": typical.runtime.worker.reporter.build("periodic", typical.now),
        "large": large.runtime.worker.reporter.build("periodic", large.now),
    }
    shape = {
        name: {
            "bytes": len(json.dumps(r, separators=(",", ":"))),
            "connections": r["connections"]["total"],
            "pipelines": r["pipelines"]["total"],
            "nodes": sum(r["pipelines"]["nodes_by_type"].values()),
            "topics": r["uns"]["topic_count"],
            "organizations": r["other"]["organizations"],
            "collectors": len(r["collectors"]),
            "collector_errors": len(r["diagnostics"]["collector_errors"]),
        }
        for name, r in reports.items()
    }
    sync = _sync_cost(large, large_inventory, 3 if quick else 7)
    typical.close()
    large.close()

    big = shape["large"]
    rows = [
        Row(
            "build.typical",
            SECTION_BUILD,
            "one report, typical factory (10 conn, 30 pipelines, 2,000 topics, 2 orgs)",
            samples["typical"].median,
            note=f"Report of {shape['typical']['bytes']:,} bytes of JSON.",
        ),
        Row(
            "build.large",
            SECTION_BUILD,
            "one report, large Enterprise (5,000 conn, 10,000 pipelines, 100,000 topics, "
            "50 collectors)",
            samples["large"].median,
            baseline="typical factory",
            baseline_value=samples["typical"].median,
            ratio=measure.paired_ratio(samples["large"], samples["typical"]),
            limit=0.005,
            budget="<= 5 ms",
            note=f"The report counted {big['connections']:,} connections, "
            f"{big['pipelines']:,} pipelines with {big['nodes']:,} nodes, "
            f"{big['topics']:,} topics, {big['organizations']} organizations and "
            f"{big['collectors']} collector sections ({big['collector_errors']} collector "
            f"errors); {big['bytes']:,} bytes of JSON.",
        ),
        Row(
            "sync.pipelines",
            SECTION_SYNC,
            "inventory-synced, 10,000 pipelines (plugin on)",
            sync["pipelines"],
            note="Not a per-event cost: each module syncs once per host start, before the first "
            "tick; the plugin's receiver parses every item on the emitting thread.",
        ),
        Row(
            "sync.connections",
            SECTION_SYNC,
            "inventory-synced, 5,000 connections (plugin on)",
            sync["connections"],
        ),
    ]
    details = {
        "build": {k: v.quantiles() for k, v in samples.items()},
        "shape": shape,
        "sync_seconds": sync,
    }
    return rows, details


def _sync_cost(host: Host, inventory: Any, reps: int) -> dict[str, float]:
    """Median seconds of one module's ``inventory-synced`` (a full replace, as at startup)."""
    out = {}
    for module in ("pipelines", "connections"):
        items = inventory.modules[module]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            signals.inventory_synced.send(host.app, module=module, items=items)
            times.append(time.perf_counter() - t0)
        out[module] = statistics.median(times)
    return out
