"""Timing: interleaved rounds of inlined statements, medians, paired ratios, per-call maxima.

Each subject is a statement compiled into its own loop, as :mod:`timeit` does,
so no extra function call dilutes the difference between two subjects. Subjects
compared with each other run in alternating rounds (the order reversed and
rotated from round to round) with the garbage collector off, so drift in the
machine's speed hits them alike; the result of each is the median of its
per-round per-call times, and a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Loop = Callable[[int], float]

_LOOP = """
def loop(_n, _clock=_clock, _repeat=_repeat{names}):
    _it = _repeat(None, _n)
    _t0 = _clock()
    for _ in _it:
        {stmt}
    return _clock() - _t0
"""

_EACH = """
def each(_n, _clock=_clock{names}):
    _times = [0] * _n
    for _i in range(_n):
        _t0 = _clock()
        {stmt}
        _times[_i] = _clock() - _t0
    return _times
"""


def _compile(template: str, name: str, stmt: str, namespace: Mapping[str, Any]) -> Any:
    from itertools import repeat

    scope: dict[str, Any] = {**namespace, "_repeat": repeat}
    names = "".join(f", {key}={key}" for key in namespace)
    scope["_clock"] = time.perf_counter if name == "loop" else time.perf_counter_ns
    exec(template.format(names=names, stmt=stmt), scope)
    return scope[name]


def loop(stmt: str, **namespace: Any) -> Loop:
    """``loop(n)`` runs ``stmt`` n times and returns the seconds it took.

    Names in ``namespace`` are bound as locals of the loop (default arguments), as
    timeit's setup would bind them.
    """
    compiled: Loop = _compile(_LOOP, "loop", stmt, namespace)
    return compiled


def each(stmt: str, **namespace: Any) -> Callable[[int], list[int]]:
    """``each(n)`` runs ``stmt`` n times and returns each call's nanoseconds."""
    compiled: Callable[[int], list[int]] = _compile(_EACH, "each", stmt, namespace)
    return compiled


@dataclass
class Sample:
    """Per-call seconds of one subject, one value per round."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quantiles(self) -> dict[str, float]:
        ordered = sorted(self.values)
        return {
            "min": ordered[0],
            "p25": _at(ordered, 0.25),
            "median": self.median,
            "p75": _at(ordered, 0.75),
            "max": ordered[-1],
            "rounds": len(ordered),
        }


def _at(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def interleave(
    loops: Mapping[str, Loop], *, rounds: int, number: int, warmup: int = 3
) -> dict[str, Sample]:
    """Run every loop ``number`` calls per round, ``rounds`` rounds, alternating order."""
    names = list(loops)
    samples = {name: Sample() for name in names}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            for name in names:
                loops[name](number)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            shift = (r // 2) % len(order)
            for name in order[shift:] + order[:shift]:
                samples[name].values.append(loops[name](number) / number)
    finally:
        if enabled:
            gc.enable()
    return samples


def paired_ratio(subject: Sample, baseline: Sample) -> float:
    """Median over rounds of subject/baseline, the two measured side by side."""
    return statistics.median(s / b for s, b in zip(subject.values, baseline.values, strict=True))


def timed_calls(
    call: Callable[[], object], *, count: int, between: Callable[[], object] | None = None
) -> list[float]:
    """Seconds of each of ``count`` calls of ``call``; ``between`` runs untimed after each."""
    clock = time.perf_counter
    times = []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(count):
            t0 = clock()
            call()
            times.append(clock() - t0)
            if between is not None:
                between()
    finally:
        if enabled:
            gc.enable()
    return times


@dataclass
class Peak:
    """Largest single-call time of a host-thread call, over several passes."""

    name: str
    pass_max: list[float]
    calls: int

    @property
    def robust(self) -> float:
        """The median of the per-pass maxima: a slow path shows in every pass, a preemption
        of the benchmark process by the OS in one."""
        return statistics.median(self.pass_max)

    @property
    def worst(self) -> float:
        return max(self.pass_max)


def peak_each(name: str, stmt: str, *, passes: int, count: int, **namespace: Any) -> Peak:
    """:class:`Peak` of an inlined statement, each call timed on its own."""
    run = each(stmt, **namespace)
    maxima = []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(passes):
            maxima.append(max(run(count)) / 1e9)
    finally:
        if enabled:
            gc.enable()
    return Peak(name, maxima, passes * count)
