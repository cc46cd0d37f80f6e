"""Import time of the plugin's entry point in a fresh interpreter, against pluggy and blinker.

Each sample is a new ``python`` process that times one ``import`` statement in
process (thread CPU time); the subjects alternate, and the result is the median of
each. No budget here: what the plugin adds to a host start, imports included, is
the budget of :mod:`bench.startup` (in instructions).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from typing import Any

from bench.results import Row

SECTION_IMPORT = "Import time (fresh interpreter, thread CPU)"
SUBJECTS = {
    "baseline": "import pluggy, blinker",
    "plugin": "import phonehome_plugin.plugin",
    "runtime": "import phonehome_plugin.plugin, phonehome_plugin.runtime",
}
_PROBE = "import time; t0 = time.thread_time(); {stmt}; print(time.thread_time() - t0)"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # compile once above; never write .pyc while timing
    return env


def _time(stmt: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(stmt=stmt)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    return float(out.stdout.strip().splitlines()[-1])


def importtime_top(stmt: str, top: int = 8) -> list[tuple[str, float]]:
    """The modules with the largest self time (``-X importtime``) for ``stmt``, leaving out
    those the baseline statement imports too."""
    already = {name for name, _ in _importtime(SUBJECTS["baseline"])}
    found = [(name, t) for name, t in _importtime(stmt) if name not in already]
    return sorted(found, key=lambda item: -item[1])[:top]


def _importtime(stmt: str) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", stmt],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    found = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (
            part.strip() for part in line[len("import time:") :].split("|")
        )
        found.append((name.strip(), int(self_us) / 1e6))
    return found


def import_rows(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    for stmt in SUBJECTS.values():  # warm the OS page cache and make sure .pyc files exist
        subprocess.run([sys.executable, "-c", stmt], check=True)
    reps = 5 if quick else 21
    times: dict[str, list[float]] = {name: [] for name in SUBJECTS}
    for rep in range(reps):
        order = list(SUBJECTS) if rep % 2 == 0 else list(SUBJECTS)[::-1]
        for name in order:
            times[name].append(_time(SUBJECTS[name]))
    median = {name: statistics.median(values) for name, values in times.items()}
    added = [p - b for p, b in zip(times["plugin"], times["baseline"], strict=True)]
    added_runtime = [p - b for p, b in zip(times["runtime"], times["baseline"], strict=True)]
    top = importtime_top(SUBJECTS["runtime"])
    rows = [
        Row(
            "import.plugin",
            SECTION_IMPORT,
            "`import phonehome_plugin.plugin`",
            median["plugin"],
            baseline="`import pluggy, blinker`",
            baseline_value=median["baseline"],
            ratio=median["plugin"] / median["baseline"],
        ),
        Row(
            "import.added",
            SECTION_IMPORT,
            "import time the plugin adds",
            statistics.median(added),
            note=f"Thread CPU time, median over {reps} pairs of fresh interpreters of (plugin "
            "import - pluggy and blinker import); what every host start pays, telemetry on "
            "or off (the budget is on the whole start: the `startup.off` row).",
        ),
        Row(
            "import.runtime_added",
            SECTION_IMPORT,
            "… plus `phonehome_plugin.runtime` (paid in on_startup when on)",
            statistics.median(added_runtime),
            note="Largest self times under `-X importtime` for plugin + runtime, modules that "
            "pluggy and blinker import left out: "
            + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in top)
            + ".",
        ),
    ]
    return rows, {"seconds": {k: sorted(v) for k, v in times.items()}, "importtime_top": top}
