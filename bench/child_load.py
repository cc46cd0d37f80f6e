"""Child process of :mod:`bench.load`: a million ``execution-finished`` from 8 threads.

``python -m bench.child_load URL TOTAL THREADS`` runs a host whose endpoint
(URL, served by the parent) answers 503 to everything, sends TOTAL signals from
THREADS threads while the host ticks (so reports are built and their sends fail
and are retried), then checks the next report's execution totals against what
was sent, and RSS before and after. Prints one JSON object as its last line.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from bench import guard
from bench.host import STATUSES, TYPICAL, Host, host_with, make_inventory
from hookspecs import signals

UNKNOWN = "exploded"  # not a status of the contract: counted as unknown
PATTERN = [
    *["completed"] * 80,
    *["failed"] * 10,
    *["completed_with_errors"] * 5,
    *["cancelled"] * 4,
    UNKNOWN,
]
random.Random(3).shuffle(PATTERN)
WARMUP_PER_THREAD = 10_000
TICK_EVERY = 0.25
"""Real seconds between the host's ticks during the load; each moves its clock a minute on."""


def expected(per_thread: int, threads: int) -> dict[str, int]:
    """Counts by report bucket of ``per_thread`` signals from each of ``threads`` threads."""
    one = Counter(PATTERN * (per_thread // len(PATTERN)) + PATTERN[: per_thread % len(PATTERN)])
    totals = {status: one[status] * threads for status in STATUSES}
    totals["unknown"] = one[UNKNOWN] * threads
    return totals


def _blast(host: Host, per_thread: int, threads: int) -> float:
    """Send from ``threads`` threads at once; returns the wall seconds it took."""
    barrier = threading.Barrier(threads + 1)
    extra = {"definition": {"nodes": ["secret"] * 3}, "credentials": {"password": "hunter2"}}

    def work() -> None:
        send = signals.execution_finished.send
        app = host.app
        pattern = PATTERN
        size = len(pattern)
        barrier.wait()
        for i in range(per_thread):
            send(
                app,
                pipeline_id="p1",
                status=pattern[i % size],
                duration_ms=i & 1023,
                execution=extra,
            )

    workers = [threading.Thread(target=work, name=f"load-{n}") for n in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    while any(thread.is_alive() for thread in workers):
        time.sleep(TICK_EVERY)
        host.tick(host.now + timedelta(seconds=61))
    for thread in workers:
        thread.join()
    return time.perf_counter() - began


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


def main(url: str, total: int, threads: int) -> dict[str, Any]:
    guard.install()
    logging.getLogger().addHandler(logging.NullHandler())  # keep the plugin's notices quiet
    process = psutil.Process()
    host = host_with(url, timeout=1.0, interval=60)
    host.boot(make_inventory(TYPICAL, host.started_at), timeout=60.0)
    runtime = host.runtime
    _blast(host, WARMUP_PER_THREAD, threads)
    host.idle(60.0)
    gc.collect()
    rss_before = process.memory_info().rss

    per_thread = total // threads
    seconds = _blast(host, per_thread, threads)
    host.idle(60.0)
    outbox = runtime.worker.sender.outbox
    last_before = max((e.sequence for e in outbox.pending()), default=0)
    # The next report: tick when the next periodic slot's report falls due.
    due = runtime.worker.reporter.next_periodic(host.now)
    host.tick(datetime.fromtimestamp(due + 0.001, UTC))
    host.idle(60.0)
    gc.collect()
    rss_after = process.memory_info().rss

    sent = _add(expected(WARMUP_PER_THREAD, threads), expected(per_thread, threads))
    stored = [e for e in outbox.pending() if e.sequence > last_before]
    stored_report = json.loads(stored[-1].body) if stored else None
    built = runtime.worker.reporter.build("periodic", host.now)
    pending = outbox.pending()
    host.close()
    return {
        "signals": per_thread * threads,
        "threads": threads,
        "seconds": seconds,
        "rate_per_second": per_thread * threads / seconds,
        "expected_by_status": sent,
        "stored_report": None
        if stored_report is None
        else {
            "sequence": stored_report["sequence"],
            "trigger": stored_report["trigger"],
            "by_status": stored_report["executions"]["by_status"],
        },
        "built_by_status": built["executions"]["by_status"],
        "outbox_reports": len(pending),
        "rss_before": rss_before,
        "rss_after": rss_after,
    }


if __name__ == "__main__":
    result = main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(result), flush=True)
