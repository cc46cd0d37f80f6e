"""Sustained load: 1,000,000 ``execution-finished`` from 8 threads while every send fails.

Runs :mod:`bench.child_load` in a fresh process against a loopback endpoint
that answers 503 to every request, and checks that the next report carries the
exact totals and that resident memory stayed flat.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.results import MIB, Row
from bench.servers import HTTPEndpoint

SECTION_LOAD = "Sustained load (fresh process, endpoint answering 503)"
FLAT_MARGIN = 2 * MIB
"""RSS after the load may exceed RSS before it by this much and still count as flat."""


def _counts(by_status: dict[str, int]) -> str:
    order = ("completed", "failed", "completed_with_errors", "cancelled", "unknown")
    return ", ".join(f"{s} {by_status.get(s, 0):,}" for s in order)


def _verdict(
    stored: dict[str, Any] | None, stored_ok: bool, built_ok: bool, result: dict[str, Any]
) -> str:
    if stored is None:
        text = "no report was stored after the load"
    else:
        text = f"stored report #{stored['sequence']} ({stored['trigger']}) " + (
            "matches" if stored_ok else f"DIFFERS: {_counts(stored['by_status'])}"
        )
    built = "matches" if built_ok else f"DIFFERS: {_counts(result['built_by_status'])}"
    return f"{text}; `reporter.build` {built}."


def load_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    total, threads = (200_000, 8) if quick else (1_000_000, 8)
    with HTTPEndpoint(503) as failing:
        out = subprocess.run(
            [sys.executable, "-m", "bench.child_load", failing.url, str(total), str(threads)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        answered = failing.requests
    if out.returncode != 0:
        raise RuntimeError(f"load child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = result["expected_by_status"]
    stored = result["stored_report"]
    stored_ok = stored is not None and stored["by_status"] == expected
    built_ok = result["built_by_status"] == expected
    grown = result["rss_after"] - result["rss_before"]
    sent = sum(expected.values())
    rows = [
        Row(
            "load.rate",
            SECTION_LOAD,
            f"{result['signals']:,} execution-finished from {threads} threads: per event",
            result["seconds"] / result["signals"],
            note=f"{result['seconds']:.2f} s wall ({result['rate_per_second']:,.0f} events/s) "
            f"while the host ticked every 0.25 s; the endpoint answered 503 to all "
            f"{answered} requests it got (the plugin backs off on the host's clock); "
            f"{result['outbox_reports']} unsent reports waiting in the outbox afterwards.",
        ),
        Row(
            "load.exact",
            SECTION_LOAD,
            "totals in the next report = signals sent",
            float(sum(stored["by_status"].values())) if stored else None,
            unit="n",
            baseline="sent (incl. warm-up)",
            baseline_value=float(sent),
            budget="exact, every status",
            ok=stored_ok and built_ok,
            note=f"Sent by status: {_counts(expected)}; "
            + _verdict(stored, stored_ok, built_ok, result),
        ),
        Row(
            "load.memory",
            SECTION_LOAD,
            "RSS growth over the load",
            float(grown),
            unit="B",
            baseline="RSS before the load",
            baseline_value=float(result["rss_before"]),
            limit=FLAT_MARGIN,
            budget="<= 2 MiB (flat)",
            note="RSS measured after a warm-up of 10,000 signals per thread and after the load, "
            "each after `gc.collect()`.",
        ),
    ]
    return rows, result
