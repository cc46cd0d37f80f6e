"""Resident memory the plugin adds, measured with psutil in fresh child processes.

The child (:mod:`bench.child_memory`) builds a host and its inventory, then
stops at each phase: ``baseline`` (host ready, plugin not loaded), ``loaded``,
``started``, ``synced`` (plugin started, inventory synced, worker idle: before
the first report) and ``reported`` (after the first tick's report was built
and sent). The parent reads the child's RSS (and USS, its private memory) at
each; a row is the median over runs of a phase's RSS minus the baseline's.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from bench.results import MIB, Row

SECTION_MEMORY = "Resident memory added (psutil RSS, fresh process)"
PHASES = ("baseline", "loaded", "started", "synced", "reported")
MODES = ("typical", "large", "off")

Run = dict[str, dict[str, Any]]
"""phase -> {"rss": bytes, "uss": bytes, "modules": [top-level modules new in the phase]}"""


def _run_child(
    mode: str, url: str, preload: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Run:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.child_memory", mode, url, ",".join(preload)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    assert child.stdin is not None and child.stdout is not None
    process = psutil.Process(child.pid)
    run: Run = {}
    try:
        for line in child.stdout:
            if line.startswith("phase "):
                _, phase, modules = line.split()
                info = process.memory_full_info()
                run[phase] = {
                    "rss": info.rss,
                    "uss": info.uss,
                    "modules": [] if modules == "-" else modules.split(","),
                }
                child.stdin.write("\n")
                child.stdin.flush()
        child.wait(600)
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != 0 or set(run) != set(PHASES):
        raise RuntimeError(
            f"memory child {mode} failed ({child.returncode}), phases {sorted(run)}"
        )
    return run


def memory_rows(url: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    count = 1 if quick else 7
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    for _ in range(count):
        for mode in MODES:
            runs[mode].append(_run_child(mode, url))

    def added(mode: str, phase: str, kind: str = "rss") -> float:
        return float(statistics.median(r[phase][kind] - r["baseline"][kind] for r in runs[mode]))

    def peak(mode: str) -> float:
        return float(
            statistics.median(
                max(r["synced"]["rss"], r["reported"]["rss"]) - r["baseline"]["rss"]
                for r in runs[mode]
            )
        )

    def uss(mode: str, phase: str) -> str:
        return f"USS (private memory) added: {added(mode, phase, 'uss') / MIB:.2f} MiB."

    def steps(mode: str) -> str:
        parts = []
        for before, phase in itertools.pairwise(PHASES):
            rss = statistics.median(r[phase]["rss"] - r[before]["rss"] for r in runs[mode])
            private = statistics.median(r[phase]["uss"] - r[before]["uss"] for r in runs[mode])
            modules = runs[mode][0][phase]["modules"]
            shown = ", ".join(modules[:12]) + (", …" if len(modules) > 12 else "")
            parts.append(
                f"{phase} +{rss / MIB:.2f} MiB RSS (+{private / MIB:.2f} USS)"
                + (f" [new: {shown}]" if modules else "")
            )
        return "; ".join(parts)

    base = statistics.median(r["baseline"]["rss"] for r in runs["typical"])
    spread = sorted(r["synced"]["rss"] - r["baseline"]["rss"] for r in runs["typical"])
    rows = [
        Row(
            "memory.before_first_report",
            SECTION_MEMORY,
            "plugin on, typical factory, before the first report",
            added("typical", "synced"),
            unit="B",
            baseline="host without the plugin",
            baseline_value=base,
            # 20 MiB, not the 5 of lazy imports: on_startup now imports everything a
            # job uses (fork safety, see phonehome_plugin.worker), so what the first
            # report would load seconds later (the HTTP, TLS and SQLite stacks) is
            # resident from the start. The row still catches anything beyond that.
            limit=20 * MIB,
            budget="<= 20 MiB",
            note=f"Median of {count} child processes (each: "
            + ", ".join(f"{s / MIB:.2f}" for s in spread)
            + " MiB). The baseline is the "
            "same process with the host and its inventory ready, its entry-point discovery "
            "run, and the plugin not loaded. RSS counts the pages of shared libraries the "
            "plugin maps (OpenSSL's libcrypto through hashlib, libsqlite3). "
            + uss("typical", "synced")
            + " By phase: "
            + steps("typical")
            + ".",
        ),
        Row(
            "memory.after_first_report",
            SECTION_MEMORY,
            "plugin on, typical factory, after the first report",
            added("typical", "reported"),
            unit="B",
            note="The HTTP stack (requests, urllib3, ssl), tenacity and psutil are imported "
            "in on_startup, never on the worker thread (fork safety). "
            + uss("typical", "reported"),
        ),
        Row(
            "memory.large",
            SECTION_MEMORY,
            "plugin on, large Enterprise inventory loaded (and first report)",
            peak("large"),
            unit="B",
            limit=30 * MIB,
            budget="<= 30 MiB",
            note="5,000 connections, 10,000 pipelines, 400 users, 1,000 data models, 50 "
            "collectors; the larger of before and after the first report. "
            + uss("large", "reported")
            + " By phase: "
            + steps("large")
            + ".",
        ),
        Row(
            "memory.off",
            SECTION_MEMORY,
            "telemetry off (`enabled: false`)",
            peak("off"),
            unit="B",
            note=uss("off", "reported"),
        ),
    ]

    def mib(run: Run) -> dict[str, Any]:
        return {
            phase: {
                "rss_mib": round(v["rss"] / MIB, 3),
                "uss_mib": round(v["uss"] / MIB, 3),
                "new_modules": v["modules"],
            }
            for phase, v in run.items()
        }

    return rows, {mode: [mib(r) for r in rs] for mode, rs in runs.items()}
