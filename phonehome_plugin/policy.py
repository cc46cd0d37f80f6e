"""The knobs of one send series, kept apart from :mod:`.retry` so that the host-facing
side can hold a policy without importing tenacity."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """Knobs of one send series; the defaults suit production, tests shrink them.

    :param deadline: seconds the whole series may take, waits included.
    :param max_attempts: POSTs at most in one series.
    :param wait_base: first backoff ceiling in seconds (full jitter below it).
    :param wait_max: largest backoff ceiling in seconds.
    """

    deadline: float = 10.0
    max_attempts: int = 4
    wait_base: float = 0.5
    wait_max: float = 4.0
