"""When reports are due: pure functions of stored state and the host's ``now``.

Times are epoch seconds on the host's clock. Periodic reports fall in slots of
``interval`` seconds; each installation's slots start at its own offset (a hash
of its instance id), and each report waits a further per-slot jitter, so a
fleet restarted together does not reach the endpoint at the same moment.
"""

from __future__ import annotations

import math

STARTUP_LIMIT = 3
"""Startup reports allowed per :data:`STARTUP_WINDOW`; a crash-looping host counts the rest."""
STARTUP_WINDOW = 3600.0
MAX_JITTER = 300.0


def _fraction(*parts: object) -> float:
    import hashlib  # deferred: see privacy.pseudonym

    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def offset(instance_id: str, interval: float) -> float:
    """This installation's stable offset of slot starts within the interval."""
    return _fraction("offset", instance_id) * interval


def jitter(instance_id: str, slot: int, interval: float) -> float:
    """Delay after a slot's start before its report; stable for (installation, slot)."""
    return _fraction("jitter", instance_id, slot) * min(MAX_JITTER, interval / 20)


def slot_of(now: float, interval: float, start_offset: float) -> int:
    """The index of the slot that contains ``now``."""
    return math.floor((now - start_offset) / interval)


def slot_start(slot: int, interval: float, start_offset: float) -> float:
    return slot * interval + start_offset


def periodic_due_at(last_slot: int, instance_id: str, interval: float) -> float:
    """When the report of the slot after ``last_slot`` becomes due."""
    start_offset = offset(instance_id, interval)
    slot = last_slot + 1
    return slot_start(slot, interval, start_offset) + jitter(instance_id, slot, interval)


def periodic_slot(now: float, last_slot: int, instance_id: str, interval: float) -> int | None:
    """The slot whose periodic report is due at ``now``, or None.

    However long the host was down, one report catches up: the current slot's
    once its jitter has passed, or else the previous slot's, whose due time
    has passed already (jitter is shorter than the interval).
    """
    start_offset = offset(instance_id, interval)
    current = slot_of(now, interval, start_offset)
    if current <= last_slot:
        return None
    if now >= slot_start(current, interval, start_offset) + jitter(instance_id, current, interval):
        return current
    return current - 1 if current - 1 > last_slot else None


def startup_allowed(recent: list[float], now: float) -> bool:
    """True while fewer than :data:`STARTUP_LIMIT` startup reports fell in the window."""
    return sum(1 for at in recent if now - at < STARTUP_WINDOW) < STARTUP_LIMIT
