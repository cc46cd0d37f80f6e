"""Memory whatever the inputs, what is kept after ``on_shutdown``, and the widest report.

- **Bounded whatever the inputs**: a host sends, over and over, signals whose every
  value the plugin reads is new (a connection type, node types, a status, a license
  id, a storage mode never seen before), on a fixed set of entities. The memory
  still allocated in the process (``tracemalloc``, the benchmark keeps nothing of
  what it sends) is compared after each of three rounds: a cache without a bound,
  or any structure keyed by input, grows from round to round.
- **Nothing kept after on_shutdown**: every string reachable from what the plugin
  holds (its runtime, still registered with the host's plugin manager as a host
  leaves it, and the module-level state of its modules) is walked after
  ``on_shutdown``; those that came from the host (ids, types, emails the benchmark
  marked) are counted, with where they are held. The host's own objects (``app``,
  the plugin manager) are not walked: they are the host's. The privacy guard's
  cache is counted apart (a cache cannot be walked).
- **The widest report**: open vocabularies at their widest (18,700 distinct node
  types, 5,000 connection types, 50 collectors of 200 keys each): the report's size.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
import types
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bench.host import TYPICAL, Host, host_with, make_inventory
from bench.results import MIB, Row
from hookspecs import hookimpl, signals

SECTION = "Memory whatever the inputs, and after on_shutdown"
GROWTH_LIMIT = 64 * 1024
REPORT_LIMIT = 64 * 1024
MARK = "zqx"
"""In every value the host sends here, so that what the plugin keeps of it can be found."""


def _round(app: Any, start: int, count: int) -> None:
    """``count`` rounds of signals whose values are all new, on 200 entities."""
    for i in range(start, start + count):
        key = i % 200
        signals.connection_saved.send(app, id=f"c{key}", type=f"{MARK}kind{i}")
        signals.pipeline_saved.send(
            app, id=f"p{key}", enabled=True, node_types=[f"{MARK}node{i}", f"{MARK}node.{i}"]
        )
        signals.execution_finished.send(app, pipeline_id=f"{MARK}p{i}", status=f"{MARK}st{i}")
        signals.license_changed.send(app, license_id=f"{MARK}lic{i}", status="active")
        signals.uns_state_changed.send(
            app, topic_count=i, client_count=1, mqtt_mode="embedded", storage_mode=f"{MARK}s{i}"
        )


def _held() -> int:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    return sum(t.size for t in snapshot.traces)


def _owned(obj: Any) -> bool:
    """Objects walked: the plugin's own, and plain containers (never the host's)."""
    if isinstance(obj, dict | list | tuple | set | frozenset | deque):
        return True
    module = getattr(type(obj), "__module__", "") or ""
    return module.startswith("phonehome_plugin") or isinstance(
        obj, types.FunctionType | types.MethodType | types.CellType
    )


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            yield "[key]", key
            yield f"[{key!r:.40}]", value
    elif isinstance(obj, list | tuple | set | frozenset | deque):
        for i, value in enumerate(list(obj)):
            yield f"[{i}]", value
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
    elif isinstance(obj, types.FunctionType):
        yield from _function(obj)
    else:
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                yield f".{name}", getattr(obj, name)
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            for name, value in attributes.items():
                yield f".{name}", value


def _function(obj: types.FunctionType) -> Iterator[tuple[str, Any]]:
    for i, cell in enumerate(obj.__closure__ or ()):
        try:
            yield f".<closure {i}>", cell.cell_contents
        except ValueError:  # an empty cell
            continue
    yield ".__defaults__", obj.__defaults__ or ()


def kept_strings(roots: dict[str, Any], skip: set[int]) -> tuple[int, list[str]]:
    """Strings marked with :data:`MARK` reachable from ``roots`` through objects the
    plugin owns; the number, and where the first few are held."""
    found: dict[str, str] = {}
    seen = set(skip)
    queue: deque[tuple[str, Any]] = deque(roots.items())
    while queue:
        path, obj = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if MARK in obj:
                found.setdefault(obj, path)
            continue
        if isinstance(obj, types.ModuleType | type) or not _owned(obj):
            continue
        for step, child in _children(obj):
            if id(child) not in seen:
                queue.append((path + step, child))
    where = sorted({_place(p) for p in found.values()})
    return len(found), where


def _place(path: str) -> str:
    """``runtime.inventory.connections._items[...]`` for a string's path: no keys."""
    parts = path.replace("[key]", "").split("[")
    return parts[0]


class _Wide:
    """A collector whose section has 200 keys (the most a level may keep)."""

    def __init__(self, index: int) -> None:
        self.name = f"wide{index:02d}.module"

    def collect(self) -> dict[str, Any]:
        return {f"metric_{k:03d}": k for k in range(200)}


class _WidePlugin:
    def __init__(self, count: int) -> None:
        self.collectors = [_Wide(i) for i in range(count)]

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Any) -> None:
        for collector in self.collectors:
            register(collector)


def _widest() -> tuple[int, dict[str, int]]:
    inventory = make_inventory(TYPICAL, datetime.now(UTC))
    kinds = [f"vendor.node.{i}" for i in range(18_700)]
    inventory.modules["pipelines"] = [
        {"id": f"p{i}", "enabled": True, "node_types": kinds[i * 2 : i * 2 + 2]}
        for i in range(len(kinds) // 2)
    ]
    inventory.modules["connections"] = [
        {"id": f"c{i}", "type": f"vendor_protocol_{i}"} for i in range(5_000)
    ]
    host = Host(
        {"modules": {"phonehome": {"endpoint": "http://127.0.0.1:9/r", "geoip_url": ""}}},
        plugins=[_WidePlugin(50)],
    )
    try:
        host.boot(inventory, timeout=120.0)
        report = host.runtime.worker.reporter.build("periodic", host.now)
    finally:
        host.close()
    import json

    size = len(json.dumps(report, separators=(",", ":"), ensure_ascii=False).encode())
    widths = {
        "node types": len(report["pipelines"]["nodes_by_type"]),
        "connection types": len(report["connections"]["by_type"]),
        "collector keys": sum(len(s) for s in report["collectors"].values()),
    }
    return size, widths


def retention_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    count = 3_000 if quick else 30_000
    host = host_with("http://127.0.0.1:9/r")  # a closed port: nothing is sent
    host.boot(make_inventory(TYPICAL, host.started_at))
    app = host.app
    rounds: list[int] = []
    try:
        _round(app, 0, count)  # warm: the caches fill to their bounds
        tracemalloc.start()
        try:
            for r in range(1, 4):
                _round(app, r * count, count)
                rounds.append(_held())
        finally:
            tracemalloc.stop()
        guard = sys.modules["phonehome_plugin.guard.privacy"]
        cached_running = int(guard.cached())
        runtime = host.runtime
        host.shutdown()
        gc.collect()
        roots: dict[str, Any] = {"runtime": runtime}
        for name, module in sorted(sys.modules.items()):
            if name.startswith("phonehome_plugin") and name != "phonehome_plugin.testing":
                for attr, value in vars(module).items():
                    if not isinstance(value, types.ModuleType):
                        roots[f"{name}.{attr}"] = value
        skip = {id(app), id(host.pm), id(host.sim), id(host.sim.state)}
        kept, where = kept_strings(roots, skip)
        cached = int(guard.cached())
    finally:
        host.close()
    grown = max(rounds) - rounds[0]
    size, widths = _widest()
    rows = [
        Row(
            "memory.inputs",
            SECTION,
            f"memory growth over rounds of {count:,} signals whose every value is new",
            float(max(0, grown)),
            unit="bytes",
            limit=float(GROWTH_LIMIT),
            budget="<= 64 KiB (bounded)",
            note="tracemalloc, everything still allocated in the process after each of 3 "
            f"rounds ({count * 5:,} signals each: connection types, node types, statuses, "
            "license ids and storage modes never seen before, on 200 connections and "
            "pipelines): "
            + ", ".join(f"{b / MIB:.2f} MiB" for b in rounds)
            + f". The privacy guard's cache held {cached_running:,} strings meanwhile.",
        ),
        Row(
            "memory.after_shutdown",
            SECTION,
            "strings from the host still held by the plugin after on_shutdown",
            float(kept + cached),
            unit="n",
            limit=0.0,
            budget="0 (nothing it was given)",
            note="Walked from the runtime (still registered with the host's plugin manager, "
            "as a host leaves it) and the module-level state of the plugin's modules; the "
            "host's own objects not walked. Held in: "
            + (", ".join(where[:8]) + ("…" if len(where) > 8 else "") if where else "nothing")
            + f"; {kept} in all. The privacy guard's cache (counted in the figure): {cached} "
            "strings.",
        ),
        Row(
            "report.widest",
            SECTION,
            "the report with open vocabularies at their widest",
            float(size),
            unit="KiB",
            limit=float(REPORT_LIMIT),
            budget="<= 64 KiB",
            note="18,700 distinct node types, 5,000 connection types, 50 collectors of 200 "
            "keys each; the report kept "
            + ", ".join(f"{n:,} {what}" for what, n in widths.items())
            + ".",
        ),
    ]
    return rows, {"rounds_bytes": rounds, "kept": kept, "where": where, "widths": widths}
