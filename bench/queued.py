"""The outbox at 100, 1,000 and 10,000 queued reports (an offline site with a raised bound).

One host runs the plugin (SQLite state, outbox bound raised to 20,000 reports),
its startup report sent. Reports are queued by inserting rows into the outbox
table, 100 to a transaction (the setup, not measured: putting 10,000 one by one
is what the put row measures the cost of). Then, on the benchmark's thread with
the worker idle:

- ``Outbox.put`` of one more report (each removed again, untimed) and
  ``Outbox.lease`` of the oldest due one (each released again, untimed): thread
  CPU time at each queue length, which must not grow with it;
- draining: with 10,000 queued, a share of them made due and sent by
  ``Sender.deliver_due`` to a loopback endpoint answering 200 (lease, POST,
  settle, one at a time): the plugin's CPU per report (the HTTP client's
  included), and wall time per report beside (machine-dependent);
- the state file (with its ``-wal``) after the rest were settled as sent
  (``Outbox.sent``, as a delivery settles them), against its floor: its size
  before any report was queued, plus the bodies of the reports it keeps on purpose
  (``phonehome history --show``: at most 1,000 reports or 32 MiB, measured as
  stored), so that what is left beyond the floor is space the drain freed and did
  not give back.
"""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path
from typing import Any

from bench import clocks
from bench.host import TYPICAL, host_with, make_inventory
from bench.results import MIB, Row
from bench.servers import HTTPEndpoint

SECTION = "Outbox at 100 to 10,000 queued reports (SQLite)"
GROWTH_LIMIT = 1.5
DRAIN_LIMIT = 0.001
SIZE_MARGIN = MIB
COLUMNS = "report_id, sequence, trigger, created_at, body, attempts, not_before"


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            total += part.stat().st_size
    return total


class _Queue:
    """The booted host's outbox, and the steps measured on it."""

    def __init__(self, ok: HTTPEndpoint) -> None:
        from phonehome_plugin.state.history import Event
        from phonehome_plugin.state.outbox import Entry

        self.entry_type, self.event_type = Entry, Event
        self.ok = ok
        self.host = host_with(
            ok.url, outbox={"max_reports": 20_000, "max_bytes": 1 << 30, "max_age_days": 30}
        )
        self.host.boot(make_inventory(TYPICAL, self.host.started_at))
        worker = self.host.runtime.worker
        self.store, self.sender = worker.store, worker.sender
        self.outbox = self.sender.outbox
        # Without the drain pace (at most a burst of reports per window once a backlog
        # goes out): what is measured is a put's and a lease's own cost at a size.
        self.outbox.pace = None
        self.path = Path(self.store.path)
        self.now = self.host.now.timestamp()
        report = worker.reporter.build("periodic", self.host.now)
        self.blob = json.dumps(report, separators=(",", ":")).encode()
        self.floor = _file_bytes(self.path)
        self.sequence = 1000
        self.queued = 0
        self._put: list[Any] = []
        self._leased: list[Any] = []

    def entry(self) -> Any:
        self.sequence += 1
        return self.entry_type(uuid.uuid4().hex, self.sequence, "periodic", self.now, self.blob)

    def fill_to(self, size: int) -> None:
        """Insert rows until ``size`` reports are queued, 100 to a transaction."""
        while self.queued < size:
            rows = [self.entry() for _ in range(min(100, size - self.queued))]
            values = [
                (e.report_id, e.sequence, e.trigger, e.created_at, e.body, 0, 0.0) for e in rows
            ]
            self.store.run(
                lambda c, values=values: c.executemany(
                    f"INSERT INTO outbox ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", values
                )
            )
            self.queued += len(rows)

    def put(self) -> None:
        made = self.entry()
        self._put.append(made)
        self.outbox.put(made, self.now)

    def undo_put(self) -> None:
        gone = self._put.pop().report_id
        self.store.run(lambda c: c.execute("DELETE FROM outbox WHERE report_id = ?", (gone,)))

    def lease(self) -> None:
        self._leased.append(self.outbox.lease(self.now, 300.0))

    def release(self) -> None:
        self.outbox.release(self._leased.pop())

    def drain(self, count: int) -> tuple[clocks.Span, int, int]:
        """Only the oldest ``count`` reports due (the rest a little later, within the
        horizon), sent one by one; (the span, delivered, POSTs received)."""
        later = self.now + 1000.0
        self.store.run(
            lambda c: c.execute(
                "UPDATE outbox SET not_before = ? WHERE sequence > "
                "(SELECT sequence FROM outbox ORDER BY sequence LIMIT 1 OFFSET ?)",
                (later, count - 1),
            )
        )
        before = self.ok.requests
        with clocks.span() as drained:
            delivered = self.sender.deliver_due(self.now)
        return drained, delivered, self.ok.requests - before

    def settle_rest(self) -> int:
        """Settle every report left as sent, as deliveries do; how many are left after."""
        for item in self.outbox.pending():
            event = self.event_type(
                item.report_id, item.sequence, item.trigger, self.now, "sent", "200"
            )
            self.outbox.sent(item, event, {})
        return int(self.outbox.size()[0])


def _measure(
    queue: _Queue, sizes: tuple[int, ...], calls: int
) -> dict[int, dict[str, clocks.Calls]]:
    found = {}
    for size in sizes:
        queue.fill_to(size)
        put, lease = clocks.Calls("put"), clocks.Calls("lease")
        for _ in range(2):
            put.add_pass(*clocks.each_call(queue.put, calls, queue.undo_put))
            lease.add_pass(*clocks.each_call(queue.lease, calls, queue.release))
        found[size] = {"put": put, "lease": lease}
    return found


def _table(found: dict[int, dict[str, clocks.Calls]], sizes: tuple[int, ...]) -> str:
    lines = [
        "| Outbox operation (thread CPU, median) | "
        + " | ".join(f"{n:,} queued" for n in sizes)
        + " | budget |",
        "|---|" + "---:|" * len(sizes) + "---|",
    ]
    for name in ("put", "lease"):
        lines.append(
            f"| `Outbox.{name}` | "
            + " | ".join(f"{found[n][name].median_cpu * 1e3:.2f} ms" for n in sizes)
            + f" | <= {GROWTH_LIMIT:.1f}x from {sizes[0]:,} to {sizes[-1]:,} |"
        )
    return "\n".join(lines)


def outbox_rows(ok: HTTPEndpoint, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    queue = _Queue(ok)
    try:
        found = _measure(queue, sizes, 5 if quick else 20)
        drained, delivered, received = queue.drain(30 if quick else 300)
        full = _file_bytes(queue.path)
        left = queue.settle_rest()
        after = _file_bytes(queue.path)
        kept = int(
            queue.store.run(
                lambda c: c.execute(
                    "SELECT coalesce(sum(length(body)), 0) FROM sent_reports"
                ).fetchone()[0]
            )
        )
    finally:
        queue.host.close()
    floor, blob = queue.floor, queue.blob

    small, large = sizes[0], sizes[-1]
    rows = []
    for name in ("put", "lease"):
        big, base = found[large][name], found[small][name]
        rows.append(
            Row(
                f"outbox.{name}",
                SECTION,
                f"`Outbox.{name}` at {large:,} queued reports, CPU",
                big.median_cpu,
                baseline=f"at {small:,} queued",
                baseline_value=base.median_cpu,
                ratio=big.median_cpu / base.median_cpu,
                limit=GROWTH_LIMIT,
                budget_on="ratio",
                budget=f"<= {GROWTH_LIMIT:.2f}x (independent of the number queued)",
                note="Thread CPU, median of "
                f"{big.calls} calls; by queue length: "
                + ", ".join(f"{n:,}: {found[n][name].median_cpu * 1e3:.2f} ms" for n in sizes)
                + f"; wall-clock p99.9 at {large:,}: {big.wall_p999 * 1e3:.2f} ms "
                "(machine-dependent).",
            )
        )
    per_cpu = drained.cpu / 1e9 / max(1, delivered)
    rows += [
        Row(
            "outbox.drain",
            SECTION,
            f"draining with {large:,} queued: plugin CPU per report sent",
            per_cpu,
            limit=DRAIN_LIMIT,
            budget="<= 1 ms CPU",
            note=f"{delivered} reports sent by `Sender.deliver_due` ({received} POSTs "
            f"received, each about {len(blob):,} bytes) to a loopback endpoint answering 200, "
            "on the benchmark's thread: lease, POST (the HTTP client's CPU included), "
            f"settle. Wall time per report {drained.wall / 1e6 / max(1, delivered):.2f} ms, "
            f"less run-queue wait {drained.unpreempted / 1e6 / max(1, delivered):.2f} ms "
            f"(machine-dependent); at that pace {large:,} reports take "
            f"{drained.wall / 1e9 / max(1, delivered) * large / 60:.1f} min.",
        ),
        Row(
            "outbox.file",
            SECTION,
            f"state file and its -wal after draining {large:,} reports",
            float(after),
            unit="B",
            baseline="before any report was queued, plus the kept bodies",
            baseline_value=float(floor + kept),
            ratio=after / (floor + kept) if floor + kept else None,
            limit=float(floor + kept + SIZE_MARGIN),
            budget="<= the floor + 1 MiB",
            note=f"{full / MIB:.1f} MiB with the reports queued; the rest settled by "
            f"`Outbox.sent`, {left} left in the outbox afterwards. The floor: "
            f"{floor / MIB:.2f} MiB before any report was queued, and "
            f"{kept / MIB:.2f} MiB of report bodies kept for `phonehome history`.",
        ),
    ]
    details: dict[str, Any] = {
        str(n): {
            name: {"median_cpu_s": c.median_cpu, "wall_p999_s": c.wall_p999, "calls": c.calls}
            for name, c in by.items()
        }
        for n, by in found.items()
    }
    details.update(
        {
            "table": _table(found, sizes),
            "drain": {
                "delivered": delivered,
                "cpu_s": drained.cpu / 1e9,
                "wall_s": drained.wall / 1e9,
                "unpreempted_s": drained.unpreempted / 1e9,
            },
            "file_bytes": {"floor": floor, "full": full, "after": after},
            "report_bytes": len(blob),
            "median_put_s": statistics.median(found[large]["put"].cpu) / 1e9,
        }
    )
    return rows, details
