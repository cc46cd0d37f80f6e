"""The simulated host's clock: aware UTC, moved only by whoever drives the host.

:class:`SimClock` is what :class:`~.simhost.SimHost` reads for ``on_tick``'s ``now``,
``started_at`` and users' ``created_at``; a test advances it instead of sleeping.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class SimClock:
    """A controllable aware-UTC clock that moves only when ``advance()`` is called.

    Wall time is read at most once, as the start value when none is given.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = datetime.now(UTC).replace(microsecond=0) if start is None else start
        if start.utcoffset() is None:
            raise ValueError("SimClock needs an aware datetime")
        self._now, self._lock = start.astimezone(UTC), threading.Lock()

    def now(self) -> datetime:
        """The current simulated time (aware, UTC)."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` >= 0 (the host clock never goes back); returns now."""
        if seconds < 0:
            raise ValueError("the host clock never goes backwards")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def advance_to(self, when: datetime) -> datetime:
        """Move forward to ``when`` (aware; not before now: the clock never goes back)."""
        if when.utcoffset() is None:
            raise ValueError("SimClock needs an aware datetime")
        with self._lock:
            if when < self._now:
                raise ValueError("the host clock never goes backwards")
            self._now = when.astimezone(UTC)
            return self._now
