"""Rows of the results table, their budgets, and the markdown and JSON they are written as."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass
class Row:
    """One line of the table: a median, optionally against a baseline measured in the same run.

    ``unit`` is ``s`` (seconds), ``B`` (bytes) or ``n`` (a count). ``limit`` is the
    budget: a ratio when ``budget_on`` is ``ratio``, else a value in ``unit``; a
    row without one is informational. ``ok`` is None for those, and for a check
    whose outcome is not a number (``check`` rows carry True/False directly).
    """

    key: str
    section: str
    label: str
    value: float | None
    unit: str = "s"
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    limit: float | None = None
    budget_on: str = "value"
    budget: str | None = None
    ok: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def judge(self) -> Row:
        """Set ``ok`` from ``limit`` (unless a check already set it)."""
        if self.limit is not None and self.ok is None:
            measured = self.ratio if self.budget_on == "ratio" else self.value
            self.ok = measured is not None and measured <= self.limit
        return self


_TIME_UNITS = ((1e-6, 1e9, "{:.0f} ns"), (1e-3, 1e6, "{:.2f} µs"), (1.0, 1e3, "{:.2f} ms"))


def fmt(value: float | None, unit: str) -> str:
    """A value for the table: seconds in ns/µs/ms/s, bytes in MiB, counts with separators."""
    if value is None:
        return "-"
    if unit == "s":
        for below, scale, form in _TIME_UNITS:
            if abs(value) < below:
                return form.format(value * scale)
        return f"{value:.2f} s"
    forms = {
        "B": f"{value / MIB:.2f} MiB",
        "KiB": f"{value / 1024:.1f} KiB",
        "bytes": f"{value:,.0f} B",
        "B/thread": f"{value:,.0f} B",
        "n": f"{value:,.0f}",
    }
    return forms.get(unit, f"{value:g} {unit}")


def _result(row: Row) -> str:
    if row.ok is None:
        return "info"
    return "PASS" if row.ok else "**MISSED**"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| # | Measurement | Median | Baseline | Baseline median | Ratio | Budget | Result |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    section = None
    for number, row in enumerate(rows, 1):
        if row.section != section:
            section = row.section
            lines.append(f"| | **{section}** | | | | | | |")
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        cells = (
            str(number),
            row.label,
            fmt(row.value, row.unit),
            row.baseline or "-",
            fmt(row.baseline_value, row.unit),
            ratio,
            row.budget or "-",
            _result(row),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: Iterable[Row]) -> str:
    return "\n".join(f"{number}. {row.note}" for number, row in enumerate(rows, 1) if row.note)


def text_table(rows: Sequence[Row]) -> str:
    """The table for a terminal: fixed-width columns, no markdown."""
    head = ("#", "Measurement", "Median", "Baseline", "Base median", "Ratio", "Budget", "Result")
    body = []
    for number, row in enumerate(rows, 1):
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        body.append(
            (
                str(number),
                row.label,
                fmt(row.value, row.unit),
                row.baseline or "",
                fmt(row.baseline_value, row.unit) if row.baseline_value is not None else "",
                ratio,
                (row.budget or "").replace("x", "x").replace("≤", "<="),
                _result(row).replace("*", ""),
            )
        )
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    section = None
    for row, cells in zip(rows, body, strict=True):
        if row.section != section:
            section = row.section
            out.append(f"-- {section}")
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    import psutil

    freq = psutil.cpu_freq()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or None,
        "logical_cpus": psutil.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "cpu_max_mhz": round(freq.max) if freq and freq.max else None,
        "memory_mib": psutil.virtual_memory().total // MIB,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "packages": _versions(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "maestrohub-phonehome",
        "pluggy",
        "blinker",
        "prometheus-client",
        "opentelemetry-sdk",
        "psutil",
        "requests",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['processor'] or info['machine']}, {info['logical_cpus']} logical CPUs, "
        f"{info['memory_mib']:,} MiB RAM, {info['platform']}, {info['python']}"
    )


def _conditions(info: dict[str, Any]) -> str:
    """Load and bytecode caches: what the numbers depend on besides the code."""
    parts = [f"load average before the run {', '.join(map(str, info['load_average']))}"]
    if "load_average_after" in info:
        parts.append(f"after it {', '.join(map(str, info['load_average_after']))}")
    caches = info.get("bytecode_caches")
    if caches:
        parts.append(
            f"bytecode caches present for {caches['cached']} of {caches['modules']} modules "
            f"of the plugin and the contract package ({caches['cached_before_the_run']} "
            "before the run compiled the rest) and for "
            f"{caches['dependency_modules_cached']} of {caches['dependency_modules']} of "
            "its dependencies"
        )
    if info.get("quick"):
        parts.append("a quick (smoke) run: smaller counts, sizes up to 1,000 pipelines")
    return "; ".join(parts)


def document(
    rows: Sequence[Row],
    info: dict[str, Any],
    elapsed: float,
    when: datetime,
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """The markdown file written to bench-results/ (and pasted into BENCHMARKS.md):
    the verdict, the table, ``extra`` sections (title, markdown), the notes."""
    failed = [row for row in rows if row.ok is False]
    verdict = (
        "All budgets met."
        if not failed
        else "Budgets missed: "
        + ", ".join(f"#{rows.index(r) + 1} {r.label}" for r in failed)
        + "."
    )
    parts = [
        f"Run of {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC on {machine_line(info)}; "
        f"{_conditions(info)}; {elapsed:.0f} s in all. {verdict}",
        "",
        markdown_table(rows),
    ]
    for title, text in extra:
        parts += ["", f"**{title}**", "", text]
    row_notes = notes(rows)
    if row_notes:
        parts += ["", "Notes (by row number):", "", row_notes]
    return "\n".join(parts) + "\n"


def write(
    out_dir: Path,
    rows: Sequence[Row],
    info: dict[str, Any],
    elapsed: float,
    when: datetime,
    details: dict[str, Any],
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "bench.md"
    md.write_text("# phonehome benchmarks\n\n" + document(rows, info, elapsed, when, extra))
    data = {
        "generated_at": when.astimezone(UTC).isoformat(timespec="seconds"),
        "elapsed_seconds": round(elapsed, 1),
        "machine": info,
        "passed": all(row.ok is not False for row in rows),
        "rows": [asdict(row) for row in rows],
        "details": details,
    }
    js = out_dir / "bench.json"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md, js
