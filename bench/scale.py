"""The growth table: what each host-thread call and each report costs at 100, 1,000,
10,000 and 100,000 pipelines (connections, topics, users, collectors in proportion,
:func:`bench.host.scale_of`).

At every size one host runs the plugin with that inventory synced and its first
report made, and each call is measured on the benchmark's (the host's) thread:

- every built-in receiver (``inventory-synced`` of the largest modules included),
  ``on_tick`` with nothing due and with a report due, ``on_user_created``: the
  thread CPU time of each call (:mod:`bench.clocks`), a few passes each, GC off;
  the wall-clock p99.9 of the same calls beside it (machine-dependent);
- one report: ``reporter.build`` (what the worker builds), the schema check of
  the built report, and ``reporter.periodic`` at a due slot (claim, build, check,
  store: all the worker does for one report but the POST), with the store's
  transactions and statements counted (:mod:`bench.transactions`) and the stored
  report's size. The parts of a build (the fold, the installation's inventory read
  back from the store, the collectors) are timed on their own too.

Deletes are measured on existing entities, each saved again untimed after its
delete, so the installation keeps its size while it is measured.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import clocks
from bench.clocks import Calls, Span
from bench.host import SIZES, Host, Inventory, host_with, make_inventory, scale_of
from bench.results import Row
from bench.transactions import Counted, StoreCounter
from hookspecs import signals

SECTION = "Growth with the installation (thread CPU time, 100 to 100,000 pipelines)"
CALL_LIMIT = 0.001
"""CPU seconds any host-thread call may take, at any size."""
GROWTH_LIMIT = 2.0
"""Median CPU at the largest size over the median at the smallest: "constant"."""
REPORT_LIMIT = 0.005
REPORT_BYTES_LIMIT = 64 * 1024
TRANSACTIONS_LIMIT = 5
SYNC = "inventory-synced"
"""Prefix of the sync subjects (each module's full state on the host's thread)."""


@dataclass
class AtScale:
    """Everything measured at one installation size."""

    pipelines: int
    calls: dict[str, Calls] = field(default_factory=dict)
    build: list[Span] = field(default_factory=list)
    check: list[Span] = field(default_factory=list)
    stored: list[Span] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)
    report_bytes: int = 0
    counted: Counted = field(default_factory=Counted)
    boot_seconds: float = 0.0
    collectors: int = 0
    shutdown: Span = field(default_factory=Span)

    def build_and_check(self) -> float:
        """Median CPU seconds of one build plus its schema check."""
        return _median_cpu(self.build) + _median_cpu(self.check)


def _median_cpu(spans: Sequence[Span]) -> float:
    return float(statistics.median(s.cpu for s in spans)) / 1e9 if spans else 0.0


class _Cycle:
    """Ids of existing entities, one after the other."""

    def __init__(self, items: list[dict[str, Any]], limit: int = 500) -> None:
        self.items = items[: max(1, min(limit, len(items)))]
        self.i = 0

    @property
    def item(self) -> dict[str, Any]:
        return self.items[self.i % len(self.items)]

    def step(self) -> None:
        self.i += 1


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _receivers(host: Host, inventory: Inventory) -> list[tuple[str, Callable[[], object], Any]]:
    """(name, call, between) of every built-in receiver's signal, sent as the host sends it."""
    app = host.app
    conns = _Cycle(inventory.modules["connections"])
    pipes = _Cycle(inventory.modules["pipelines"])
    orgs = _Cycle(inventory.modules["organizations"])
    models = _Cycle(inventory.modules["data_models"])
    users = _Cycle(inventory.modules["users"])
    extra: dict[str, Any] = {"password": "hunter2", "definition": {"nodes": ["secret"]}}

    def resave_connection() -> None:
        item = conns.item
        signals.connection_saved.send(app, id=item["id"], type=item["type"], **extra)
        conns.step()

    def resave_pipeline() -> None:
        item = pipes.item
        signals.pipeline_saved.send(
            app, id=item["id"], enabled=item["enabled"], node_types=item["node_types"]
        )
        pipes.step()

    def resaver(signal: Any, cycle: _Cycle) -> Callable[[], None]:
        def resave() -> None:
            signal.send(app, id=cycle.item["id"])
            cycle.step()

        return resave

    uns = dict(inventory.uns)
    return [
        (
            "execution-finished",
            lambda: signals.execution_finished.send(
                app, pipeline_id="p7", status="completed", duration_ms=42, execution=extra
            ),
            None,
        ),
        (
            "connection-saved",
            lambda: signals.connection_saved.send(app, id=conns.item["id"], type="opcua", **extra),
            resave_connection,
        ),
        (
            "connection-deleted",
            lambda: signals.connection_deleted.send(app, id=conns.item["id"]),
            resave_connection,
        ),
        (
            "pipeline-saved",
            lambda: signals.pipeline_saved.send(
                app,
                id=pipes.item["id"],
                enabled=True,
                node_types=["trigger.manual", "action.http", "logic.switch", "action.sql"],
                **extra,
            ),
            resave_pipeline,
        ),
        (
            "pipeline-deleted",
            lambda: signals.pipeline_deleted.send(app, id=pipes.item["id"]),
            resave_pipeline,
        ),
        (
            "organization-saved",
            lambda: signals.organization_saved.send(app, id=orgs.item["id"]),
            orgs.step,
        ),
        (
            "organization-deleted",
            lambda: signals.organization_deleted.send(app, id=orgs.item["id"]),
            resaver(signals.organization_saved, orgs),
        ),
        (
            "data-model-saved",
            lambda: signals.data_model_saved.send(app, id=models.item["id"]),
            models.step,
        ),
        (
            "data-model-deleted",
            lambda: signals.data_model_deleted.send(app, id=models.item["id"]),
            resaver(signals.data_model_saved, models),
        ),
        (
            "user-deleted",
            lambda: signals.user_deleted.send(app, id=f"gone-{users.i}"),
            users.step,
        ),
        ("uns-state-changed", lambda: signals.uns_state_changed.send(app, **uns), None),
        (
            "license-changed",
            lambda: signals.license_changed.send(app, license_id="lic-0001", status="active"),
            None,
        ),
    ]


def measure(url: str, pipelines: int, quick: bool) -> AtScale:
    """Boot a host of ``pipelines`` pipelines and measure it (see the module docstring)."""
    scale = scale_of(pipelines)
    started = datetime.now(UTC).replace(microsecond=0)
    inventory = make_inventory(scale, started)
    host = host_with(url, inventory, interval=60)
    found = AtScale(pipelines, collectors=scale.collectors)
    try:
        t0 = time.perf_counter()
        host.boot(inventory, timeout=900.0)
        found.boot_seconds = time.perf_counter() - t0
        _measure_calls(host, inventory, found, quick)
        _measure_reports(host, found, quick)
        _measure_hooks(host, found, quick)
        _measure_syncs(host, inventory, found, quick)
        host.idle(900.0)
        with clocks.span() as found.shutdown:
            host.shutdown()  # its final fold carries the last sync's whole inventory
    finally:
        host.close()
    return found


def _measure_calls(host: Host, inventory: Inventory, found: AtScale, quick: bool) -> None:
    passes, count = (2, 300) if quick else (3, 2_000)
    worker = host.runtime.worker
    assert host.now < worker.wake_at, "the first tick left a report due"
    for name, call, between in _receivers(host, inventory):
        calls = Calls(name)
        for _ in range(passes):
            calls.add_pass(*clocks.each_call(call, count, between))
        found.calls[name] = calls
    hook, app, now = host.pm.hook, host.app, host.now
    idle = Calls("on_tick, nothing due")
    for _ in range(passes):
        idle.add_pass(*clocks.each_call(lambda: hook.on_tick(app=app, now=now), count))
    found.calls[idle.name] = idle
    host.idle()


def _measure_reports(host: Host, found: AtScale, quick: bool) -> None:
    from phonehome_plugin.reports import schema  # the check the worker runs on each report

    runtime = host.runtime
    reporter = runtime.worker.reporter
    # As many reports at every size (a median of three at the large sizes was one
    # sample from the edge), after one untimed build: the first folds what the
    # host-thread rows just sent (tens of thousands of changes; the fold is a part
    # of its own below), which is not what a report at this size costs.
    reps = 3 if quick else 10
    reporter.build("periodic", host.now)
    built: list[Any] = []
    found.build = clocks.spans(lambda: built.append(reporter.build("periodic", host.now)), reps)
    report = built[-1]
    found.check = clocks.spans(lambda: schema.errors(report), reps)
    for name, part in (
        ("fold", reporter.fold),
        ("installation inventory", reporter.installation_inventory),
        ("collectors", lambda: runtime.registry.collect_all(reporter.drops)),
    ):
        found.parts[name] = _median_cpu(clocks.spans(part, reps))
    store = runtime.worker.store
    for _ in range(reps):
        host.now = _at(reporter.next_periodic(host.now) + 0.001)
        stored: list[Any] = []
        with StoreCounter(store) as counted, clocks.span() as one:
            stored.append(reporter.periodic(host.now))
        if stored[0] is None:
            raise RuntimeError("no periodic report was made at its due time")
        found.stored.append(one)
        found.counted = counted
        found.report_bytes = len(
            json.dumps(stored[0], separators=(",", ":"), ensure_ascii=False).encode()
        )


def _measure_hooks(host: Host, found: AtScale, quick: bool) -> None:
    worker = host.runtime.worker
    # As many calls at every size: each pass starts cold (each_call collects garbage
    # first), so a size measured on fewer calls would be measured on its cold call.
    passes, count = (2, 2) if quick else (3, 4)

    def advance() -> None:
        host.idle(900.0)
        host.now = _at(worker.reporter.next_periodic(host.now) + 0.001)

    advance()
    due = Calls("on_tick, report due")
    for _ in range(passes):
        due.add_pass(*clocks.each_call(host.tick, count, advance))
    found.calls[due.name] = due
    host.idle(900.0)

    created = itertools.count()

    def create_user() -> None:
        i = next(created)
        host.pm.hook.on_user_created(
            app=host.app,
            user={
                "id": f"new{i}",
                "email": f"new{i}@example.com",
                "created_at": host.now + timedelta(seconds=i),
                "password_hash": "x",
            },
        )

    users = Calls("on_user_created")
    for _ in range(passes):
        users.add_pass(*clocks.each_call(create_user, count * 2, lambda: host.idle(900.0)))
    found.calls[users.name] = users


def _measure_syncs(host: Host, inventory: Inventory, found: AtScale, quick: bool) -> None:
    passes = 1 if quick else 3  # the same at every size (see _measure_hooks)
    for module in ("pipelines", "connections"):
        items = inventory.modules[module]
        calls = Calls(f"{SYNC} ({module}, {len(items):,} items)")
        sync = _syncer(host, module, items)
        for _ in range(passes):
            calls.add_pass(*clocks.each_call(sync, 3))
        found.calls[calls.name] = calls


def _syncer(host: Host, module: str, items: list[dict[str, Any]]) -> Callable[[], None]:
    def sync() -> None:
        signals.inventory_synced.send(host.app, module=module, items=items)

    return sync


# Rows and the table -----------------------------------------------------------------


def _us(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _stem(name: str) -> str:
    """A call's name without the sizes in it (the sync subjects name their items)."""
    return name.split(", ", 1)[0] + ")" if name.startswith(SYNC) else name


def growth_rows(results: Sequence[AtScale]) -> tuple[list[Row], dict[str, Any]]:
    small, large = results[0], results[-1]
    at = f"{large.pipelines:,} pipelines"
    stems_small = {_stem(n): c for n, c in small.calls.items()}
    over: list[str] = []
    grown: list[tuple[float, str]] = []
    worst: tuple[float, str, Calls] | None = None
    for name, calls in large.calls.items():
        if name.startswith(SYNC):
            continue
        if calls.peak_cpu > CALL_LIMIT:
            over.append(f"{name} {_us(calls.peak_cpu)}")
        if worst is None or calls.peak_cpu > worst[0]:
            worst = (calls.peak_cpu, name, calls)
        base = stems_small.get(_stem(name))
        if base is not None and base.median_cpu > 0:
            grown.append((calls.median_cpu / base.median_cpu, name))
    syncs = [c for n, c in large.calls.items() if n.startswith(SYNC)]
    sync = max(syncs, key=lambda c: c.peak_cpu)
    sync_small = max(
        (c for n, c in small.calls.items() if n.startswith(SYNC)), key=lambda c: c.peak_cpu
    )
    assert worst is not None
    top_growth = max(grown)
    overhead = clocks.overhead()
    reports = [r.build_and_check() for r in results]
    biggest = max(results, key=lambda r: r.report_bytes)
    most = max(results, key=lambda r: r.counted.transactions)
    rows = [
        Row(
            "scale.host_thread.max",
            SECTION,
            f"slowest host-thread call at {at} (receivers, on_tick, on_user_created), CPU",
            worst[0],
            limit=CALL_LIMIT,
            budget="<= 1 ms CPU",
            note=f"Slowest was {worst[1]}; its wall-clock p99.9 {_us(worst[2].wall_p999)} "
            "(machine-dependent). Per call: the median over passes of each pass's largest "
            f"thread CPU time; every call includes {overhead * 1e9:.0f} ns of clock reads. "
            + (f"Over budget: {'; '.join(over)}. " if over else "")
            + "inventory-synced is the next row. The growth table below has every call "
            "at every size.",
        ),
        Row(
            "scale.host_thread.growth",
            SECTION,
            f"largest growth of a host-thread call, {small.pipelines:,} -> {at} (median CPU)",
            None,
            ratio=top_growth[0],
            limit=GROWTH_LIMIT,
            budget_on="ratio",
            budget=f"<= {GROWTH_LIMIT:.2f}x (constant)",
            note=f"Largest was {top_growth[1]}; inventory-synced left out (next row).",
        ),
        Row(
            "scale.sync",
            SECTION,
            f"inventory-synced on the host's thread at {at}, CPU",
            sync.peak_cpu,
            baseline=f"at {small.pipelines:,} pipelines",
            baseline_value=sync_small.peak_cpu,
            ratio=sync.peak_cpu / sync_small.peak_cpu if sync_small.peak_cpu else None,
            limit=CALL_LIMIT,
            budget="<= 1 ms CPU, constant",
            note=f"{sync.name}: wall-clock p99.9 {_us(sync.wall_p999)} (machine-dependent). "
            "Each module syncs once per host start (and per process); the receiver parses "
            "every item on the emitting thread.",
        ),
        Row(
            "scale.report",
            SECTION,
            f"one report built and schema-checked at {at}, {large.collectors} collectors, CPU",
            large.build_and_check(),
            baseline=f"at {small.pipelines:,} pipelines",
            baseline_value=reports[0],
            ratio=large.build_and_check() / reports[0] if reports[0] else None,
            limit=REPORT_LIMIT,
            budget="<= 5 ms CPU",
            note=f"Build {_us(_median_cpu(large.build))} + schema check "
            f"{_us(_median_cpu(large.check))} (thread CPU, medians). Parts of the build, "
            "timed alone: "
            + ", ".join(f"{k} {_us(v)}" for k, v in large.parts.items())
            + ". Claim, build, check and store (`reporter.periodic` at a due slot): "
            f"{_us(_median_cpu(large.stored))} CPU.",
        ),
        Row(
            "scale.report_bytes",
            SECTION,
            "largest report at any size (stored JSON)",
            float(biggest.report_bytes),
            unit="KiB",
            limit=float(REPORT_BYTES_LIMIT),
            budget="<= 64 KiB",
            note=f"At {biggest.pipelines:,} pipelines; by size: "
            + ", ".join(f"{r.pipelines:,}: {r.report_bytes / 1024:.1f} KiB" for r in results)
            + ".",
        ),
        Row(
            "scale.transactions",
            SECTION,
            "state-store transactions for one report (SQLite), most at any size",
            float(most.counted.transactions),
            unit="n",
            limit=float(TRANSACTIONS_LIMIT),
            budget=f"<= {TRANSACTIONS_LIMIT}",
            note=f"At {most.pipelines:,} pipelines: {most.counted.transactions} transactions "
            f"(Store.run calls; {most.counted.begins} BEGIN seen by the trace callback), "
            f"{most.counted.statements} statements ("
            + ", ".join(f"{k} {n}" for k, n in sorted(most.counted.kinds.items()))
            + ") for `reporter.periodic` at a due slot (claim, build, check, store).",
        ),
    ]
    return rows, details(results)


def details(results: Sequence[AtScale]) -> dict[str, Any]:
    return {
        str(r.pipelines): {
            "boot_seconds": round(r.boot_seconds, 2),
            "calls": {
                name: {
                    "median_cpu_s": c.median_cpu,
                    "peak_cpu_s": c.peak_cpu,
                    "wall_p999_s": c.wall_p999,
                    "calls": c.calls,
                }
                for name, c in r.calls.items()
            },
            "build_cpu_s": _median_cpu(r.build),
            "check_cpu_s": _median_cpu(r.check),
            "stored_cpu_s": _median_cpu(r.stored),
            "stored_unpreempted_s": float(statistics.median(s.unpreempted for s in r.stored))
            / 1e9,
            "parts_cpu_s": r.parts,
            "report_bytes": r.report_bytes,
            "shutdown_unpreempted_s": r.shutdown.unpreempted / 1e9,
            "shutdown_cpu_s": r.shutdown.cpu / 1e9,
            "transactions": r.counted.transactions,
            "statements": r.counted.statements,
            "statement_kinds": r.counted.kinds,
        }
        for r in results
    }


def growth_table(results: Sequence[AtScale], memory: dict[int, float] | None = None) -> str:
    """The markdown growth table: one line per call or figure, one column per size."""
    sizes = [r.pipelines for r in results]
    head = "| Host-thread call (thread CPU: median / peak) | " + " | ".join(
        f"{n:,}" for n in sizes
    )
    lines = [
        head + " | growth | within 1 ms, constant |",
        "|---|" + "---:|" * len(sizes) + "---:|---|",
    ]
    by_stem: dict[str, list[Calls | None]] = {}
    for i, r in enumerate(results):
        for name, calls in r.calls.items():
            by_stem.setdefault(_stem(name), [None] * len(results))[i] = calls
    for stem, row in by_stem.items():
        cells = [f"{_us(c.median_cpu)} / {_us(c.peak_cpu)}" if c else "-" for c in row]
        first, last = row[0], row[-1]
        growth = (
            last.median_cpu / first.median_cpu if first and last and first.median_cpu else None
        )
        ok = (
            last is not None
            and last.peak_cpu <= CALL_LIMIT
            and (growth is None or growth <= GROWTH_LIMIT)
        )
        grew = "-" if growth is None else f"{growth:.2f}x"
        verdict = "yes" if ok else "**MISSED**"
        lines.append(f"| {stem} | " + " | ".join(cells) + f" | {grew} | {verdict} |")
    lines.append(
        "| wall-clock p99.9 of the slowest call (machine-dependent) | "
        + " | ".join(_us(max(c.wall_p999 for c in r.calls.values())) for r in results)
        + " | | |"
    )
    lines += [
        "",
        "| One report (worker thread) | " + " | ".join(f"{n:,}" for n in sizes) + " | budget |",
        "|---|" + "---:|" * len(sizes) + "---|",
        "| build + schema check, CPU | "
        + " | ".join(_us(r.build_and_check()) for r in results)
        + " | <= 5 ms |",
        "| … of which the schema check | "
        + " | ".join(_us(_median_cpu(r.check)) for r in results)
        + " | |",
        "| … the installation's inventory read back | "
        + " | ".join(_us(r.parts.get("installation inventory", 0.0)) for r in results)
        + " | |",
        "| … the collectors | "
        + " | ".join(_us(r.parts.get("collectors", 0.0)) for r in results)
        + " | |",
        "| claim + build + check + store, CPU | "
        + " | ".join(_us(_median_cpu(r.stored)) for r in results)
        + " | |",
        "| collectors registered | " + " | ".join(str(r.collectors) for r in results) + " | |",
        "| report size | "
        + " | ".join(f"{r.report_bytes / 1024:.1f} KiB" for r in results)
        + " | <= 64 KiB |",
        "| store transactions / statements | "
        + " | ".join(f"{r.counted.transactions} / {r.counted.statements}" for r in results)
        + f" | <= {TRANSACTIONS_LIMIT} transactions |",
        "| on_shutdown right after a whole sync (endpoint answering), wall less run-queue "
        "wait: the last fold takes the sync; counts are saved first | "
        + " | ".join(_us(r.shutdown.unpreempted / 1e9) for r in results)
        + " | <= 2 s (contract; waits 1.5 s at most) |",
        "| host start to first report done (wall, machine-dependent) | "
        + " | ".join(_us(r.boot_seconds) for r in results)
        + " | |",
    ]
    if memory:
        lines.append(
            "| RSS the plugin adds, inventory synced and first report made | "
            + " | ".join(f"{memory[n] / 2**20:.1f} MiB" if n in memory else "-" for n in sizes)
            + " | |"
        )
    return "\n".join(lines)


def scale_rows(url: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    sizes = SIZES[:2] if quick else SIZES
    results = [measure(url, n, quick) for n in sizes]
    rows, found = growth_rows(results)
    memory = _memory(url, sizes)
    return rows, {"by_size": found, "memory_bytes": memory, "table": growth_table(results, memory)}


def _memory(url: str, sizes: Sequence[int]) -> dict[int, float]:
    """RSS the plugin adds at each size (a fresh child each, see :mod:`bench.memory`)."""
    from bench.memory import _run_child

    out = {}
    for n in sizes:
        run = _run_child(f"scale-{n}", url)
        out[n] = float(max(run["synced"]["rss"], run["reported"]["rss"]) - run["baseline"]["rss"])
    return out
