"""Entry point: ``python -m bench.run`` (what ``tox -e bench`` runs).

Runs every benchmark, prints the table, writes ``bench-results/bench.md`` and
``bench-results/bench.json``, and exits 1 when a budget is missed (2 when a
benchmark could not run). ``--quick`` shrinks every count for a smoke run;
``--update-doc`` also puts the table into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bytecode, guard
from bench.measure import Peak
from bench.results import Row, document, machine, text_table, write

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
ORDER = (
    "execution_finished.vs_trivial",
    "execution_finished.vs_otel",
    "execution_finished.vs_prometheus",
    "connection_saved.vs_trivial",
    "off.execution_finished",
    "off.connected",
    "on_tick.idle",
    "on_tick.due",
    "on_user_created",
    "host_thread.wall",
    "on_startup.on",
    "on_startup.off",
    "on_shutdown",
    "scale.host_thread.max",
    "scale.host_thread.growth",
    "scale.sync",
    "scale.report",
    "scale.report_bytes",
    "scale.transactions",
    "churn.first_event",
    "churn.lock",
    "churn.memory_before",
    "churn.memory_after",
    "outbox.put",
    "outbox.lease",
    "outbox.drain",
    "outbox.file",
    "convoy.report",
    "convoy.tick",
    "convoy.pg_transactions",
    "installation.idle_tick",
    "installation.report",
    "installation.frozen",
    "startup.off",
    "startup.on",
    "receiver.wrapped",
    "receiver.foreign",
    "import.plugin",
    "import.added",
    "import.runtime_added",
    "memory.before_first_report",
    "memory.after_first_report",
    "memory.large",
    "memory.off",
    "memory.inputs",
    "memory.after_shutdown",
    "report.widest",
    "fork.idle",
    "fork.busy",
    "fork.busy.max",
    "fork.child",
    "load.rate",
    "load.exact",
    "load.memory",
)


def _peak_row(peaks: list[Peak]) -> Row:
    worst = max(peaks, key=lambda p: p.robust)
    return Row(
        "host_thread.wall",
        "Host hooks on the host's thread",
        "slowest host-thread call, wall clock (machine-dependent, no budget)",
        worst.robust,
        note=f"Slowest was {worst.name}. Wall-clock maxima measure the machine (the OS "
        "preempting the benchmark) as much as the plugin, so the budget is on thread CPU "
        "time instead (the growth rows). Each call timed on its own, GC off, worker idle; "
        "per subject the median over passes of each pass's slowest call: "
        + "; ".join(
            f"{p.name} {p.robust * 1e6:.0f} µs (worst pass {p.worst * 1e6:.0f} µs, "
            f"{p.calls:,} calls)"
            for p in peaks
        )
        + ".",
    )


def _log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _update_doc(text: str) -> None:
    """Replace the table between the markers of BENCHMARKS.md (or append it with them)."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
    else:
        head, tail = doc.rstrip() + "\n\n", "\n"
    DOC.write_text(f"{head}{START}\n{text}{END}{tail}")


@dataclass
class Collected:
    """Everything the sections produced: rows, host-thread peaks, details for the JSON."""

    rows: list[Row] = field(default_factory=list)
    peaks: list[Peak] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    def section(self, name: str, work: Callable[[], tuple[Any, ...]]) -> None:
        """Run one section; a crash becomes a failed row, and the other sections still run."""
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            found, *rest = work()
        except Exception:
            self.broken.append(name)
            trace = traceback.format_exc()
            print(trace, file=sys.stderr)
            last = trace.strip().splitlines()[-1]
            self.rows.append(
                Row(
                    f"error.{name}",
                    "Errors",
                    f"{name}: could not run",
                    None,
                    ok=False,
                    budget="runs",
                    note=last,
                )
            )
            return
        self.rows.extend(found)
        for item in rest:
            if isinstance(item, list):
                self.peaks.extend(item)
            else:
                self.details[name] = item
        took = time.perf_counter() - t0
        print(f"[bench] {name} done in {took:.1f} s", file=sys.stderr, flush=True)


def run_all(quick: bool) -> Collected:
    """Every section, in an order that matters only for the first one."""
    from bench import (
        churn,
        convoy,
        events,
        forks,
        hooks,
        imports,
        installation,
        load,
        memory,
        queued,
        retention,
        scale,
        startup,
    )
    from bench.servers import HTTPEndpoint

    done = Collected()
    with HTTPEndpoint(200) as ok:
        # First: it needs a process in which no receiver was ever connected.
        done.section("off", lambda: events.off_rows(quick))
        done.section("events", lambda: events.event_rows(quick))
        done.section("ticks", lambda: hooks.tick_rows(ok, quick))
        done.section("startup", lambda: hooks.startup_rows(ok.url, quick))
        done.section("shutdown", lambda: hooks.shutdown_rows(quick))
        done.section("growth", lambda: scale.scale_rows(ok.url, quick))
        done.section("churn", lambda: churn.churn_rows(quick))
        done.section("outbox", lambda: queued.outbox_rows(ok, quick))
        done.section("convoy", lambda: convoy.convoy_rows(ok.url, quick))
        done.section("installation", lambda: installation.installation_rows(ok.url, quick))
        done.section("retention", lambda: retention.retention_rows(quick))
        done.section("starts", lambda: startup.startup_rows(quick))
        done.section("imports", lambda: imports.import_rows(quick))
        done.section("memory", lambda: memory.memory_rows(ok.url, quick))
        done.section("forks", lambda: forks.fork_rows(ok, quick))
    done.section("load", lambda: load.load_rows(quick))
    if done.peaks:
        done.rows.append(_peak_row(done.peaks))
        done.details["host_thread_peaks"] = {
            p.name: {"pass_max_seconds": p.pass_max, "calls": p.calls} for p in done.peaks
        }
    rank = {key: i for i, key in enumerate(ORDER)}
    done.rows.sort(key=lambda row: rank.get(row.key, len(ORDER)))
    for row in done.rows:
        row.judge()
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="output dir")
    parser.add_argument("--update-doc", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args(argv)

    guard.install()
    _log_to(args.out / "plugin.log")
    caches = bytecode.ensure()
    info = machine()
    info["bytecode_caches"] = caches
    info["quick"] = args.quick
    began = time.perf_counter()
    when = datetime.now(UTC)
    done = run_all(args.quick)
    elapsed = time.perf_counter() - began
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = done.rows
    extra = [
        (title, done.details[section]["table"])
        for title, section in (("Growth table", "growth"), ("Outbox by queue length", "outbox"))
        if isinstance(done.details.get(section), dict) and "table" in done.details[section]
    ]
    print()
    print(text_table(rows))
    for title, table in extra:
        print(f"\n{title}\n\n{table}")
    md, js = write(args.out, rows, info, elapsed, when, done.details, extra)
    if args.update_doc:
        _update_doc(document(rows, info, elapsed, when, extra))
    failed = [row for row in rows if row.ok is False]
    print(f"\n{len(rows)} rows, {len(failed)} budgets missed, {elapsed:.0f} s; wrote {md}, {js}")
    for row in failed:
        print(f"MISSED: {row.label}: {row.budget}", file=sys.stderr)
    if done.broken:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
