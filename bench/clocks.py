"""Clocks that measure the plugin, not the machine: thread CPU time, and wall time less
the time the OS kept the thread waiting for a CPU.

Wall-clock maxima on a shared machine are mostly the OS preempting the benchmark
(the old "slowest host-thread call" row failed 3 runs in 4 on a quiet machine while
no call used half a millisecond of CPU). So every budget here is on one of:

- **CPU time of the calling thread** (``time.thread_time_ns``: what the call costs
  the host's thread, whatever else runs);
- **wall time less run-queue wait** (``/proc/thread-self/schedstat``): CPU time plus
  the time the thread was *blocked*, waiting on a lock, the GIL, a socket or a
  sleep, but not the time it was runnable and the OS ran something else. It is
  what a call makes its thread wait, which CPU time alone would miss (a hook
  that waits 200 ms on an event costs no CPU);
- **voluntary context switches** of the thread (``getrusage(RUSAGE_THREAD)``):
  how often it blocked.

Wall time is still measured beside, and reported as machine-dependent.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def run_queue_ns() -> int:
    """Nanoseconds the calling thread has spent runnable but not running (0 where the
    kernel does not say: then "less run-queue wait" is plain wall time)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def has_schedstat() -> bool:
    try:
        return len(SCHEDSTAT.read_text().split()) >= 2
    except OSError:
        return False


def switches() -> int:
    """Voluntary context switches of the calling thread so far (it blocked that often)."""
    return int(resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw)


@dataclass
class Span:
    """What one measured stretch of the calling thread cost, in nanoseconds."""

    cpu: int = 0
    wall: int = 0
    run_queue: int = 0
    blocked_times: int = 0

    @property
    def unpreempted(self) -> int:
        """Wall time less run-queue wait: CPU time plus time spent blocked."""
        return max(self.cpu, self.wall - self.run_queue)


@contextmanager
def span() -> Iterator[Span]:
    """Measure the block on the calling thread (fill the :class:`Span` on exit)."""
    found = Span()
    queued, blocked = run_queue_ns(), switches()
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    try:
        yield found
    finally:
        found.wall = time.perf_counter_ns() - wall
        found.cpu = time.thread_time_ns() - cpu
        found.run_queue = run_queue_ns() - queued
        found.blocked_times = switches() - blocked


def spans(
    call: Callable[[], object], count: int, between: Callable[[], object] | None = None
) -> list[Span]:
    """A :class:`Span` per call of ``call``, GC off; ``between`` runs untimed after each."""
    out = []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            with span() as one:
                call()
            out.append(one)
            if between is not None:
                between()
    finally:
        if enabled:
            gc.enable()
    return out


def each_call(
    call: Callable[[], object], count: int, between: Callable[[], object] | None = None
) -> tuple[list[int], list[int]]:
    """CPU and wall nanoseconds of each of ``count`` calls of ``call``, GC off (the
    clock reads and one Python call are inside what is measured: see :func:`overhead`)."""
    cpu_clock, wall_clock = time.thread_time_ns, time.perf_counter_ns
    cpu = [0] * count
    wall = [0] * count
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(count):
            w0 = wall_clock()
            c0 = cpu_clock()
            call()
            cpu[i] = cpu_clock() - c0
            wall[i] = wall_clock() - w0
            if between is not None:
                between()
    finally:
        if enabled:
            gc.enable()
    return cpu, wall


def overhead(count: int = 2000) -> float:
    """Median CPU seconds :func:`each_call` reports for a call that does nothing."""
    cpu, _ = each_call(lambda: None, count)
    return float(statistics.median(cpu)) / 1e9


@dataclass
class Calls:
    """Per-call CPU and wall nanoseconds of one host-thread call, over several passes."""

    name: str
    cpu: list[int] = field(default_factory=list)
    wall: list[int] = field(default_factory=list)
    pass_max_cpu: list[int] = field(default_factory=list)

    def add_pass(self, cpu: Sequence[int], wall: Sequence[int]) -> None:
        self.cpu.extend(cpu)
        self.wall.extend(wall)
        self.pass_max_cpu.append(max(cpu))

    @property
    def median_cpu(self) -> float:
        return float(statistics.median(self.cpu)) / 1e9

    @property
    def peak_cpu(self) -> float:
        """Median over passes of each pass's largest CPU time: a slow path shows in
        every pass, a one-off (a page fault, a cache flushed by a neighbour) in one."""
        return float(statistics.median(self.pass_max_cpu)) / 1e9

    @property
    def wall_p999(self) -> float:
        return quantile(self.wall, 0.999) / 1e9

    @property
    def calls(self) -> int:
        return len(self.cpu)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])
