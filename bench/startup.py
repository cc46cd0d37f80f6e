"""What the plugin adds to a host start, off and on, and what a third-party collector's
receiver pays for the plugin's handling of it; counted in instructions where callgrind
exists.

Each sample is a fresh interpreter (:mod:`bench.child_start`), so that imports are
paid as a host start pays them, with the bytecode caches in place (as a wheel
install has them; :mod:`bench.bytecode`).

- **Off** (the budget): instructions of a host start with the plugin installed and
  ``enabled: false`` minus those of the same host without it (callgrind, one run
  each: the count is the same from run to run within a few hundred thousand), put
  in milliseconds at the rate the host-without-plugin start runs natively
  (its instructions over its user CPU time, median of fresh processes in the same
  run). Beside it, the plain difference in process CPU time, median of pairs.
- **On** (the budget): thread CPU time of the first ``on_startup`` call in a fresh
  process (the plugin module loaded by the discovery already, as the host has it).
- **A third-party receiver** (the budget): instructions per ``execution-finished``
  send, with the plugin on and one collector receiver, registered through the plugin
  (it rides in the plugin's own receiver: ``phonehome_plugin.counting.riders``)
  against the same receiver connected by the host: callgrind runs of N and 2N
  sends, the difference over N (start-up cancels). Without valgrind, thread CPU
  time of the sends in fresh processes instead. Beside it (no budget), the same for
  a signal outside the contract, which the plugin connects inside its guard.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.results import Row

SECTION = "Host start and third-party receivers (fresh processes, instructions)"
ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:9/r"  # a closed port: nothing is sent (no tick comes)
OFF_LIMIT = 0.002
ON_LIMIT = 0.002
RECEIVER_LIMIT = 1.05


def has_callgrind() -> bool:
    return shutil.which("valgrind") is not None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"})
    for name in ("DO_NOT_TRACK", "MAESTROHUB_PHONEHOME_ENABLED", "PYTHONPROFILEIMPORTTIME"):
        env.pop(name, None)
    return env


def _child(subject: str, count: int = 0) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.child_start", subject, str(count), URL],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def instructions(subject: str, count: int = 0) -> int:
    """Instructions callgrind counts for one run of the child (the whole process)."""
    with tempfile.TemporaryDirectory(prefix="phonehome-bench-cg-") as where:
        target = Path(where) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={target}",
                sys.executable,
                "-m",
                "bench.child_start",
                subject,
                str(count),
                URL,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
            cwd=ROOT,
            timeout=1200,
        )
        for line in target.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def startup_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    reps = 5 if quick else 15
    native: dict[str, list[dict[str, Any]]] = {"start-bare": [], "start-off": [], "start-on": []}
    for rep in range(reps):
        order = list(native) if rep % 2 == 0 else list(native)[::-1]
        for subject in order:
            native[subject].append(_child(subject))

    def med(subject: str, key: str) -> float:
        return float(statistics.median(r[key] for r in native[subject]))

    cpu_added = statistics.median(
        off["process_cpu_s"] - bare["process_cpu_s"]
        for off, bare in zip(native["start-off"], native["start-bare"], strict=True)
    )
    on_cpu = med("start-on", "on_startup_cpu_s")
    on_max = max(r["on_startup_cpu_s"] for r in native["start-on"])
    details: dict[str, Any] = {"native": native}
    callgrind = has_callgrind() and not quick  # a smoke run counts no instructions
    if callgrind:
        counts = {s: instructions(s) for s in native}
        rate = counts["start-bare"] / med("start-bare", "user_cpu_s")  # instructions/s
        off_added = (counts["start-off"] - counts["start-bare"]) / rate
        on_added = (counts["start-on"] - counts["start-off"]) / rate
        details.update({"instructions": counts, "instructions_per_second": rate})
        off_row = Row(
            "startup.off",
            SECTION,
            "telemetry off: what the plugin adds to a host start (instructions, as time)",
            off_added,
            baseline="host start without the plugin",
            baseline_value=counts["start-bare"] / rate,
            limit=OFF_LIMIT,
            budget="<= 2 ms",
            note=f"callgrind: {counts['start-off'] - counts['start-bare']:,} instructions added "
            f"({counts['start-off']:,} against {counts['start-bare']:,} for the host without "
            f"the plugin: interpreter start, pluggy, the entry-point discovery), at "
            f"{rate / 1e9:.2f} G instructions per CPU second (the bare start's count over "
            f"its native user CPU time, median of {reps}). Native process CPU added, median "
            f"of {reps} pairs: {cpu_added * 1e3:.1f} ms. Plugin on, on top of off: "
            f"{counts['start-on'] - counts['start-off']:,} instructions "
            f"({on_added * 1e3:.1f} ms).",
        )
    else:
        off_row = Row(
            "startup.off",
            SECTION,
            "telemetry off: what the plugin adds to a host start (process CPU)",
            cpu_added,
            limit=OFF_LIMIT,
            budget="<= 2 ms",
            note=f"{'A quick run' if quick else 'valgrind is not installed'}: native "
            f"process CPU time, median of {reps} pairs of fresh processes.",
        )
    on_row = Row(
        "startup.on",
        SECTION,
        "telemetry on: the first on_startup (fresh process), thread CPU",
        on_cpu,
        limit=ON_LIMIT,
        budget="<= 2 ms CPU",
        note=f"Median of {reps} fresh processes (largest {on_max * 1e3:.1f} ms); "
        "the plugin module was imported by the entry-point discovery before, everything "
        "else the runtime needs is imported in the call. Telemetry off, the same call: "
        f"{med('start-off', 'on_startup_cpu_s') * 1e3:.2f} ms.",
    )
    rows = [off_row, on_row, *_receiver_rows(quick, callgrind, details)]
    return rows, details


def _receiver_rows(quick: bool, callgrind: bool, details: dict[str, Any]) -> list[Row]:
    subjects = (
        "send-none",
        "send-wrapped",
        "send-unwrapped",
        "foreign-wrapped",
        "foreign-unwrapped",
    )
    if callgrind:
        n = 5_000  # the difference of runs of 5,000 and 10,000 sends is exact
        per = {s: (instructions(s, 2 * n) - instructions(s, n)) / n for s in subjects}
        details["receiver_instructions_per_send"] = per
        unit, how = "n", f"callgrind, runs of {n:,} and {2 * n:,} sends, the difference over {n:,}"
    else:
        n = 20_000 if quick else 200_000
        runs = {s: [_child(s, n) for _ in range(3 if quick else 7)] for s in subjects}
        per = {s: statistics.median(r["sends_cpu_s"] for r in runs[s]) / n for s in subjects}
        details["receiver_cpu_per_send_s"] = per
        unit, how = "s", f"no callgrind run: thread CPU of {n:,} sends, fresh processes"
    own_riding = per["send-wrapped"] - per["send-none"]
    own_plain = per["send-unwrapped"] - per["send-none"]

    def shown(value: float) -> str:
        return f"{value:,.0f}" if unit == "n" else f"{value * 1e9:,.0f} ns"

    def versus(key: str, label: str, subject: str, **budget: Any) -> Row:
        """``subject``'s sends against the same receiver connected by the host."""
        plain = subject.replace("-wrapped", "-unwrapped")
        return Row(
            key,
            SECTION,
            label,
            per[subject],
            unit=unit,
            baseline="the same receiver, connected by the host",
            baseline_value=per[plain],
            ratio=per[subject] / per[plain],
            **budget,
        )

    riding = versus(
        "receiver.wrapped",
        "a third-party collector's receiver, called by the plugin: per send",
        "send-wrapped",
        limit=RECEIVER_LIMIT,
        budget_on="ratio",
        budget=f"<= {RECEIVER_LIMIT:.2f}x",
        note=f"{how}. The plugin on (its own execution receiver connected too): "
        f"{shown(per['send-none'])} a send without the collector; the receiver, riding in "
        f"the plugin's own, adds {shown(own_riding)} against {shown(own_plain)} as a "
        f"receiver of blinker's ({own_riding / own_plain:.2f}x)."
        if own_plain > 0
        else f"{how}.",
    )
    foreign = versus(
        "receiver.foreign",
        "a receiver of a signal outside the contract, guarded by the plugin: per send",
        "foreign-wrapped",
        note=f"{how}. The plugin has no receiver of such a signal to ride in: the "
        "collector's receiver is connected inside a guard of one Python frame, "
        f"{shown(per['foreign-wrapped'] - per['foreign-unwrapped'])} a send.",
    )
    return [riding, foreign]
