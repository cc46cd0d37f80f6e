"""Times as operators read them.

Every time the plugin stores is the host's clock (the ``now`` of ``on_tick``), in
epoch seconds; shown, it is ISO 8601 UTC to the second. The operator's side has no
host clock: where it needs a time of its own (a preview's ``generated_at``, when an
export was written) it takes this machine's, and says so where it matters.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def stamp(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC, to the second: ``2026-03-02T08:00:00Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def wall_now() -> datetime:
    """This machine's time, aware UTC (never the host's: see the module docstring)."""
    return datetime.fromtimestamp(time.time(), UTC)
