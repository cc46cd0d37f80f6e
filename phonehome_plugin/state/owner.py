"""Who holds a claim, and when another process may take it over, without trusting clocks.

A claim (a trigger being built, see :meth:`.store.Store.claim_report`) names its
holder by a token (:func:`register`): the machine and PID namespace it runs in, its
PID and that process's start time, and a random part for each worker. Whether the
holder still lives is then a question of fact, not of time:

- a holder on **this machine, in this PID namespace** is alive exactly while a
  process with its PID and start time exists (``psutil``): a claim of a killed
  process is taken over at once, and a live one never, however long it works
  (a stalled lookup, a frozen process);
- a holder elsewhere (another node) cannot be looked at: its claim is taken over
  once the same claim, unchanged, has been seen for :data:`LEASE` seconds **on
  the looking process's own clock** (:class:`Sightings`). No two processes'
  clocks are ever compared, so clocks minutes apart do not matter, and a stale
  ``now`` replayed from the past makes no claim look old.

Takeover is only ever a question of latency: a claim's report id is fixed at its
first claim and a claim is settled only by its holder (fencing), so a holder taken
over by mistake loses its settle and one report is still made once.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil

LEASE = 120.0
"""Seconds (the looking process's own clock) before another node's claim is taken over."""
SEP = "/"


@cache
def machine() -> str:
    """This machine's boot and PID namespace: PIDs mean the same only within one.

    Empty when either cannot be read (another OS, a sandbox without /proc): then no
    holder is ever judged by its PID, and every claim waits for its lease."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text("utf-8").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}:{namespace}"


GONE = frozenset(
    (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
)
"""Process states whose holder settles nothing now: ended but not yet reaped, or
stopped (SIGSTOP, a debugger). A stopped holder that resumes finds its claim taken
and its settle refused (fencing): one report, made by whoever took it over."""


def start_time(pid: int, working: bool = False) -> float | None:
    """The start time of process ``pid``, or None when there is none (or it is hidden);
    ``working``: None too when it cannot work now (:data:`GONE`)."""
    try:
        process = psutil.Process(pid)
        if working and process.status() in GONE:
            return None
        return float(process.create_time())
    except (psutil.Error, OSError, ValueError):
        return None


_LIVE: set[str] = set()
"""The tokens of this process's holders that may still settle a claim: a process
outlives its host starts (tests, a host that restarts its plugins), and a claim of
one that ended must not wait for the process to end."""


def register() -> str:
    """A new holder token for a worker of this process (unique per call)."""
    pid = os.getpid()
    started = start_time(pid)
    token = SEP.join(
        (machine(), str(pid), "" if started is None else repr(started), uuid.uuid4().hex[:12])
    )
    _LIVE.add(token)
    return token


def retire(token: str) -> None:
    """The holder ``token`` of this process will settle nothing more."""
    _LIVE.discard(token)


def alive(token: str) -> bool | None:
    """Whether the holder named by ``token`` lives: True or False when it ran on this
    machine and PID namespace (known for certain: its process exists, and, if it is
    this process, the holder has not retired), None when that cannot be known
    (another node, an unreadable /proc, a token of another form)."""
    parts = token.split(SEP)
    here = machine()
    if len(parts) != 4 or not here or parts[0] != here or not parts[2]:
        return None
    try:
        pid, started = int(parts[1]), float(parts[2])
    except ValueError:
        return None
    if start_time(pid, working=True) != started:
        return False
    return token in _LIVE if pid == os.getpid() else True


@dataclass
class Sightings:
    """Claims of holders that cannot be looked at, as this process saw them: a claim
    is stale once this process has seen it unchanged for :data:`LEASE` seconds of its
    own clock (the ``now`` of its own ticks; a ``now`` before the first sighting, a
    stale tick, never makes it older)."""

    lease: float = LEASE
    _first: dict[str, tuple[str, float]] = field(default_factory=dict)

    def stale(self, key: str, held_as: str, now: float) -> bool:
        """Whether the claim ``key``, held as ``held_as`` (its holder and claim stamp,
        which change with every new claim), may be taken over at ``now``."""
        seen = self._first.get(key)
        if seen is None or seen[0] != held_as:
            self._first[key] = (held_as, now)
            return False
        return now - seen[1] >= self.lease

    def forget(self, key: str) -> None:
        self._first.pop(key, None)


def may_take(sightings: Sightings, key: str, holder: str, stamp: float, now: float) -> bool:
    """Whether a claim ``key`` that ``holder`` took at ``stamp`` (its own clock, used
    only to tell one claim from the next) may be taken over at ``now``."""
    known = alive(holder)
    if known is not None:
        return not known
    return sightings.stale(key, f"{holder}@{stamp!r}", now)
