"""What the plugin adds to ``os.fork()`` in the host, as the forking thread sees it.

Each row runs fresh pairs of processes side by side (:data:`PAIRS` of them, one
in a smoke run; ``python -m bench.forks ROLE MODE URL``, never a fork of the
benchmark process, which has the plugin's fork handlers registered from earlier
sections):

- the *plugin* host: the plugin on, started, inventory synced, past its first
  tick (state file open, worker idle);
- the *baseline* host: the same host and inventory with ``enabled: false``,
  which then imports every module the plugin host has loaded (but the plugin's
  own modules, which would register its fork handlers) and is padded with
  touched memory until its anonymous resident memory matches the plugin host's:
  a process of the same size, whose fork copies as many page tables.

The parent asks them in turn for one fork at a time, alternating which goes
first, so drift in the machine's speed hits both alike. A fork is timed in the
process that forks, from just before ``os.fork()`` to its return in the
parent; the child ``os._exit(0)``\\ s at once and is reaped after the clock stops
(a child that has not exited after :data:`REAP_WAIT` is killed and counted).

In the ``busy`` row the plugin host ticks its clock into a new report slot
before each fork (a report is built, stored and POSTed to a loopback endpoint)
and forks a random moment into that job, uniformly over the job's typical
duration measured beforehand; the baseline host sleeps the same delays. The
baseline forks only once the plugin host's job is over, so its forks never
compete with the plugin's worker for the CPU.

The ``thread_floor`` row (no budget) forks the baseline host alone, alternately with
and without a busy thread of its own running (Python work between GIL-free calls,
as a worker making a report does): what a thread at work costs a fork, whoever's
thread it is. The plugin makes its reports on its own thread, never the host's.

Python 3.12+ warns (``DeprecationWarning``) on every fork of a process with more
than one thread; the warning is filtered out in these processes only.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import psutil

from bench.results import MIB, Row
from bench.servers import HTTPEndpoint

SECTION_FORKS = "Fork cost on the host's forking thread (fresh processes)"
LIMIT = 1.2
INTERVAL = 60
"""The plugin's report interval (seconds of the host's clock); each busy tick moves
the clock on by one interval, into a new slot with a periodic report due."""
REAP_WAIT = 10.0
"""Seconds a forked child gets to exit before it is killed and counted as hung."""
HUNG = -1000
"""Exit code recorded for a child killed for not exiting within :data:`REAP_WAIT`."""
ANSWER_WAIT = 60.0
"""Seconds the parent waits for one answer of a host process."""
OWN_PACKAGE = "phonehome_plugin"
WARMUP = 5
CALIBRATE_JOBS = 10

# The host processes ------------------------------------------------------------------


def _quiet() -> None:
    """What every host process does first: loopback only, no fork warning, no log output."""
    from bench import guard

    guard.install()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger().addHandler(logging.NullHandler())


def _reap(pid: int) -> int:
    """Wait for the forked child: its exit code (negative: a signal), or :data:`HUNG`."""
    deadline = time.monotonic() + REAP_WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return HUNG
        time.sleep(0.0002)


def _fork_once() -> tuple[int, int, int]:
    """Nanoseconds ``os.fork()`` took in this (the parent) process and in the child
    (until it returned there: the at-fork handlers of the child included), and the
    child's exit code. Both from the same start: the clock is system-wide."""
    clock = time.perf_counter_ns
    read, write = os.pipe()
    enabled = gc.isenabled()
    gc.disable()
    t0 = clock()
    pid = os.fork()
    if pid == 0:
        os.write(write, (clock() - t0).to_bytes(8, "little"))
        os._exit(0)
    t1 = clock()
    if enabled:
        gc.enable()
    os.close(write)
    try:
        code = _reap(pid)
        told = os.read(read, 8)
    finally:
        os.close(read)
    return t1 - t0, int.from_bytes(told, "little") if len(told) == 8 else -1, code


class _HostProcess:
    """The child side: one host, driven by commands on stdin, answering JSON on stdout."""

    def __init__(self, role: str, mode: str, url: str) -> None:
        from bench.host import TYPICAL, Host, make_inventory, phonehome_config

        self.role = role
        self.mode = mode
        self.host = Host(phonehome_config(url, enabled=role == "plugin", interval=INTERVAL))
        self.host.boot(make_inventory(TYPICAL, self.host.started_at), timeout=60.0)
        self.worker: Any = None
        self.pad: list[bytearray] = []
        self.busy_thread: threading.Thread | None = None
        self.busy_stop = threading.Event()
        if role == "plugin":
            runtime = self.host.runtime
            if runtime is None or runtime.worker.store is None:
                raise RuntimeError("the plugin host has no running plugin with its state open")
            self.worker = runtime.worker
        elif self.host.runtime is not None or f"{OWN_PACKAGE}.forksafe" in sys.modules:
            raise RuntimeError("the baseline host runs the plugin or has its fork handlers")

    def ready(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "modules": sorted(sys.modules),
            "threads": threading.active_count(),
        }

    def import_all(self, names: Sequence[str]) -> dict[str, Any]:
        """Import ``names`` (parents first); fail if that brought in the plugin's fork handlers."""
        import importlib

        done = failed = 0
        for name in sorted(names):
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
                done += 1
            except Exception:
                failed += 1
        if f"{OWN_PACKAGE}.forksafe" in sys.modules:
            raise RuntimeError("importing the plugin host's modules loaded phonehome's forksafe")
        return {"imported": done, "failed": failed, "modules": len(sys.modules)}

    def allocate(self, size: int) -> dict[str, Any]:
        """Hold ``size`` more bytes of touched memory, in 1 MiB pieces."""
        while size > 0:
            piece = min(size, MIB)
            self.pad.append(bytearray(b"\x5a") * piece)
            size -= piece
        gc.collect()
        return {"pieces": len(self.pad)}

    def _next_job(self) -> None:
        """Move the host's clock into the next slot and tick: a periodic report is due."""
        self.host.tick(self.host.now + timedelta(seconds=INTERVAL))

    def calibrate(self, jobs: int) -> dict[str, Any]:
        """Seconds from a tick into a new slot until the worker is idle again, ``jobs`` times."""
        took = []
        for _ in range(jobs):
            t0 = time.perf_counter()
            self._next_job()
            if not self.host.idle(60.0):
                raise RuntimeError("the worker did not finish a report in 60 s")
            took.append(time.perf_counter() - t0)
        return {"seconds": took}

    def fork(self, delay: float) -> dict[str, Any]:
        """One timed fork, ``delay`` seconds after the start of a job (busy plugin host)."""
        busy = self.mode == "busy" and self.worker is not None
        if busy:
            self._next_job()
        if delay > 0:
            time.sleep(delay)
        in_job = busy and not self.worker.wait_idle(0)
        threads = threading.active_count()
        ns, child_ns, code = _fork_once()
        if busy and not self.host.idle(60.0):
            raise RuntimeError("the worker did not finish a report in 60 s")
        return {"ns": ns, "child_ns": child_ns, "code": code, "in_job": in_job, "threads": threads}

    def _busy(self) -> None:
        """What a worker making a report does, roughly: Python work between short
        GIL-free calls (a JSON body built, written to a pipe and read back)."""
        read, write = os.pipe()
        try:
            while not self.busy_stop.is_set():
                body = json.dumps({f"k{i}": [i, str(i)] for i in range(200)}).encode()
                os.write(write, body[:4096])
                os.read(read, 4096)
        finally:
            os.close(read)
            os.close(write)

    def thread(self, wanted: str) -> dict[str, Any]:
        """Start a busy thread of this host's own (``busy``: see :meth:`_busy`), or end
        it (``none``)."""
        if wanted == "busy" and self.busy_thread is None:
            self.busy_stop.clear()
            self.busy_thread = threading.Thread(target=self._busy, name="busy", daemon=True)
            self.busy_thread.start()
        elif wanted == "none" and self.busy_thread is not None:
            self.busy_stop.set()
            self.busy_thread.join(10)
            self.busy_thread = None
        return {"threads": threading.active_count()}

    def serve(self, read: IO[str], write: Callable[[dict[str, Any]], None]) -> None:
        write(self.ready())
        for line in read:
            command, _, argument = line.strip().partition(" ")
            if command == "fork":
                write(self.fork(float(argument)))
            elif command == "import":
                write(self.import_all(json.loads(argument)))
            elif command == "pad":
                write(self.allocate(int(argument)))
            elif command == "thread":
                write(self.thread(argument))
            elif command == "calibrate":
                write(self.calibrate(int(argument)))
            elif command == "quit":
                self.host.close()
                write({"bye": True})
                return
            else:
                raise ValueError(f"unknown command {command!r}")


def child_main(argv: Sequence[str]) -> int:
    """``python -m bench.forks ROLE MODE URL``: ROLE ``plugin`` or ``baseline``, MODE
    ``idle`` or ``busy``; see the module docstring."""
    role, mode, url = argv
    _quiet()
    out = sys.stdout

    def write(answer: dict[str, Any]) -> None:
        out.write(json.dumps(answer) + "\n")
        out.flush()

    _HostProcess(role, mode, url).serve(sys.stdin, write)
    return 0


# The parent ------------------------------------------------------------------------


class _Child:
    """The parent's handle on one host process: one command, one JSON answer, with a timeout."""

    def __init__(self, role: str, mode: str, url: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.forks", role, mode, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = self.proc.stdout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)
        self._buffer = b""

    def answer(self, timeout: float = ANSWER_WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise RuntimeError(f"{self.role} host: no answer in {timeout:.0f} s")
            data = os.read(self._out.fileno(), 65536)
            if not data:
                code = self.proc.wait(5)
                raise RuntimeError(f"{self.role} host exited ({code}) before answering")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str, timeout: float = ANSWER_WAIT) -> dict[str, Any]:
        self._in.write(command.encode() + b"\n")
        return self.answer(timeout)

    def anon(self) -> int:
        """Anonymous resident bytes (what a fork copies page tables for), else USS."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(psutil.Process(self.proc.pid).memory_full_info().uss)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def layout(self) -> dict[str, int]:
        """Page-table bytes and mappings: besides the pages, what a fork copies."""
        found = {"page_tables": 0, "mappings": 0}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmPTE:"):
                    found["page_tables"] = int(line.split()[1]) * 1024
            found["mappings"] = len(Path(f"/proc/{self.proc.pid}/maps").read_text().splitlines())
        except OSError:
            pass
        return found

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask("quit", timeout=10.0)
                self.proc.wait(10)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._selector.close()
            self._in.close()
            self._out.close()


def _matched(plugin: _Child, baseline: _Child) -> dict[str, Any]:
    """Give the baseline host the plugin host's modules, then pad the smaller one's memory."""
    found = plugin.answer()
    have = baseline.answer()
    missing = sorted(
        name
        for name in set(found["modules"]) - set(have["modules"])
        if name.split(".")[0] != OWN_PACKAGE and name != "__main__"
    )
    imported = baseline.ask("import " + json.dumps(missing))
    sizes = {"plugin_anon_before": plugin.anon(), "baseline_anon_before": baseline.anon()}
    gap = sizes["plugin_anon_before"] - sizes["baseline_anon_before"]
    if gap > 0:
        baseline.ask(f"pad {gap}")
    elif gap < 0:
        plugin.ask(f"pad {-gap}")
    sizes.update(
        plugin_anon=plugin.anon(),
        baseline_anon=baseline.anon(),
        plugin_rss=plugin.rss(),
        baseline_rss=baseline.rss(),
        padded=gap,
        modules_imported=imported["imported"],
        modules_failed=imported["failed"],
        plugin_modules=len(found["modules"]),
        baseline_modules=imported["modules"],
        plugin_threads_ready=found["threads"],
    )
    for name, child in (("plugin", plugin), ("baseline", baseline)):
        sizes.update({f"{name}_{key}": value for key, value in child.layout().items()})
    return sizes


def _measure(mode: str, ok: HTTPEndpoint, count: int) -> dict[str, Any]:
    """``count`` forks of each host, in alternating order; see the module docstring."""
    plugin = _Child("plugin", mode, ok.url)
    baseline = _Child("baseline", mode, ok.url)
    try:
        sizes = _matched(plugin, baseline)
        job: list[float] = []
        if mode == "busy":
            job = plugin.ask(f"calibrate {CALIBRATE_JOBS}")["seconds"]
        span = statistics.median(job) if job else 0.0
        rng = random.Random(9)
        delays = [rng.uniform(0.0, span) if span else 0.0 for _ in range(WARMUP + count)]
        sent_before = ok.requests
        times: dict[str, list[int]] = {"plugin": [], "baseline": []}
        in_child: dict[str, list[int]] = {"plugin": [], "baseline": []}
        codes: list[int] = []
        in_job = 0
        threads: list[int] = []
        for i, delay in enumerate(delays):
            pair = (plugin, baseline) if i % 2 == 0 else (baseline, plugin)
            for child in pair:
                got = child.ask(f"fork {delay!r}")
                if i < WARMUP:
                    continue
                times[child.role].append(got["ns"])
                in_child[child.role].append(got["child_ns"])
                codes.append(got["code"])
                if child is plugin:
                    in_job += bool(got["in_job"])
                    threads.append(got["threads"])
        return {
            **sizes,
            "plugin_ns": times["plugin"],
            "baseline_ns": times["baseline"],
            "plugin_child_ns": in_child["plugin"],
            "baseline_child_ns": in_child["baseline"],
            "bad_children": [c for c in codes if c != 0],
            "in_job": in_job,
            "plugin_threads_at_fork": sorted(set(threads)),
            "job_seconds": job,
            "reports_received": ok.requests - sent_before,
        }
    finally:
        plugin.close()
        baseline.close()


FLOOR_DELAY = 0.003
"""Seconds the host's own busy thread runs before each of the floor row's forks."""


def _floor(ok: HTTPEndpoint, count: int) -> Row:
    """``fork.thread_floor``: the baseline host's fork while a busy thread of its own
    runs (see :meth:`_HostProcess._busy`), against none, alternating: what a thread at
    work costs a fork, whoever's it is (no budget)."""
    host = _Child("baseline", "idle", ok.url)
    try:
        host.answer()
        times: dict[str, list[int]] = {"none": [], "busy": []}
        for i in range(WARMUP + count):
            for kind in ("none", "busy") if i % 2 == 0 else ("busy", "none"):
                host.ask(f"thread {kind}")
                got = host.ask(f"fork {FLOOR_DELAY!r}")
                host.ask("thread none")
                if i >= WARMUP:
                    times[kind].append(got["ns"])
    finally:
        host.close()
    busy, without = statistics.median(times["busy"]), statistics.median(times["none"])
    return Row(
        "fork.thread_floor",
        SECTION_FORKS,
        "os.fork() in the host without the plugin while a busy thread of its own runs "
        "(no budget: what the busy row's thread costs any host)",
        busy / 1e9,
        baseline="the same host, no other thread",
        baseline_value=without / 1e9,
        ratio=busy / without,
        note=f"{count} forks each way, alternating, each {FLOOR_DELAY * 1e3:.0f} ms after the "
        "thread started; the thread builds JSON in Python and writes it to a pipe and reads "
        "it back (GIL-free calls), as a worker making a report does. The plugin makes its "
        "reports on a thread of its own, never the host's: a fork during a report pays for "
        "a thread at work.",
    )


def _us(ns: float) -> str:
    return f"{ns / 1e3:.0f} µs"


PAIRS = 5
"""Fresh pairs of host processes a row is measured on: a fork's cost depends on the
process's layout (where its memory and mappings fell), which differs from one pair of
processes to the next by more than the forks of one pair do (1.13x to 1.28x with the
same code), so one pair is one sample."""


def _pairs(mode: str, ok: HTTPEndpoint, count: int, pairs: int) -> dict[str, Any]:
    """``count`` forks of each host in each of ``pairs`` fresh pairs (see :func:`_measure`):
    the forks of every pair, pooled, and each pair's ratio of medians. The sizes and
    layout in the result are the first pair's."""
    runs = [_measure(mode, ok, count) for _ in range(pairs)]
    merged = dict(runs[0])
    for key in ("plugin_ns", "baseline_ns", "plugin_child_ns", "baseline_child_ns"):
        merged[key] = [ns for run in runs for ns in run[key]]
    merged["bad_children"] = [code for run in runs for code in run["bad_children"]]
    merged["job_seconds"] = [s for run in runs for s in run["job_seconds"]]
    merged["in_job"] = sum(run["in_job"] for run in runs)
    merged["reports_received"] = sum(run["reports_received"] for run in runs)
    merged["plugin_threads_at_fork"] = sorted(
        {n for run in runs for n in run["plugin_threads_at_fork"]}
    )
    merged["pair_ratios"] = [
        statistics.median(run["plugin_ns"]) / statistics.median(run["baseline_ns"]) for run in runs
    ]
    merged["pairs"] = pairs
    return merged


def _row(key: str, label: str, result: dict[str, Any], note: str) -> Row:
    plugin = result["plugin_ns"]
    base = result["baseline_ns"]
    median, base_median = statistics.median(plugin), statistics.median(base)
    pair_ratios = result["pair_ratios"]
    ratio = statistics.median(pair_ratios)
    bad = result["bad_children"]
    padded = "baseline" if result["padded"] >= 0 else "plugin host"
    return Row(
        key,
        SECTION_FORKS,
        label,
        median / 1e9,
        baseline="same-size host, plugin off",
        baseline_value=base_median / 1e9,
        ratio=ratio,
        limit=LIMIT,
        budget_on="ratio",
        budget=f"<= {LIMIT:.2f}x",
        ok=False if bad else None,
        note=f"{note} {result['pairs']} fresh pairs of hosts, {len(plugin) // result['pairs']} "
        "forks of each host in each, alternating which host forks first; the ratio is the "
        "median of the pairs' ratios of medians ("
        + ", ".join(f"{r:.2f}x" for r in sorted(pair_ratios))
        + f"). Pooled: plugin host median {_us(median)} (max {_us(max(plugin))}), baseline "
        f"{_us(base_median)} (max {_us(max(base))}). In the first pair: anonymous RSS "
        "matched at "
        f"{result['plugin_anon'] / MIB:.1f} / {result['baseline_anon'] / MIB:.1f} MiB "
        f"({padded} padded {abs(result['padded']) / MIB:.1f} MiB; "
        f"{result['modules_imported']} modules imported into the baseline); page tables "
        f"{result['plugin_page_tables'] // 1024} / {result['baseline_page_tables'] // 1024} KiB, "
        f"mappings {result['plugin_mappings']} / {result['baseline_mappings']}; "
        f"children that crashed or hung: {len(bad)}.",
        extra={
            "plugin_max_seconds": max(plugin) / 1e9,
            "baseline_max_seconds": max(base) / 1e9,
            "pair_ratios": pair_ratios,
            "bad_children": bad,
        },
    )


def fork_rows(ok: HTTPEndpoint, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """``fork.idle`` and ``fork.busy``, each from :data:`PAIRS` fresh pairs of host processes."""
    count, pairs = (20, 1) if quick else (100, PAIRS)
    idle = _pairs("idle", ok, count, pairs)
    busy = _pairs("busy", ok, count, pairs)
    job = busy["job_seconds"]
    rows = [
        _row(
            "fork.idle",
            "os.fork(), plugin on, worker idle after the first tick",
            idle,
            f"State file open, no plugin thread (threads at each fork: "
            f"{idle['plugin_threads_at_fork']}).",
        ),
        _row(
            "fork.busy",
            "os.fork() while the worker builds and sends a report",
            busy,
            f"Before each fork the host ticked into a new slot and forked a random moment "
            f"into the report's job (jobs took median {statistics.median(job) * 1e3:.1f} ms); "
            f"{busy['in_job']} of {len(busy['plugin_ns'])} forks landed while the worker was "
            f"still at it; the endpoint received {busy['reports_received']} reports.",
        ),
    ]
    child, base_child = idle["plugin_child_ns"], idle["baseline_child_ns"]
    rows.append(
        Row(
            "fork.child",
            SECTION_FORKS,
            "os.fork() as the child sees it (until it returns there), plugin on, worker idle",
            statistics.median(child) / 1e9,
            baseline="same-size host, plugin off",
            baseline_value=statistics.median(base_child) / 1e9,
            ratio=statistics.median(child) / statistics.median(base_child),
            note="The idle row's forks, timed in the child from the same start (the clock "
            "is system-wide): the at-fork handlers of every module run there first. The "
            "plugin's give its child a worker of its own and a tally from zero; the state "
            "file's inherited connection is set aside, not closed, so its cache is not "
            "copied into the child (closing it cost about 0.5 ms here). No budget: every "
            "first write to a page in the child copies it, whoever's the page is.",
        )
    )
    rows.append(_floor(ok, count))
    plugin_max, base_max = max(busy["plugin_ns"]), max(busy["baseline_ns"])
    rows.append(
        Row(
            "fork.busy.max",
            SECTION_FORKS,
            "os.fork() while the worker is busy: slowest fork",
            plugin_max / 1e9,
            baseline="same-size host, plugin off: slowest",
            baseline_value=base_max / 1e9,
            ratio=plugin_max / base_max,
            note="The slowest of the busy row's forks (informational: on a shared machine "
            "one preemption decides it).",
        )
    )
    return rows, {"idle": idle, "busy": busy}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
