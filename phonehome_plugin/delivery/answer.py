"""What one request came to: :class:`Answer` for a report's POST, as the transport makes
it and the retry logic reads it, and :class:`Fetched` for the location lookup's GET.

Apart from both so that neither imports the other: :mod:`.transport` makes answers
(reading ``Retry-After`` with :func:`retry_after`), :mod:`.retry` decides on them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """What one POST came to: an HTTP status, or an error kind when there was none."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


@dataclass(frozen=True)
class Fetched:
    """What one GET came to: its status and body (read whole, within a limit), or an
    error kind when there was no complete answer."""

    status: int | None
    body: bytes = b""
    content_encoding: str = "identity"
    error: str | None = None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta seconds or an HTTP date), or None.

    A date is measured against the answer's own ``Date`` header when it has a
    valid one, so the two clocks that matter are the server's, not ours; else
    against ``now`` (default: this machine's clock).
    """
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    until = _http_date(value)
    if until is None:
        return None
    base = _http_date(headers.get("Date") or "")
    if base is None:
        base = time.time() if now is None else now
    return max(0.0, until - base)


def _http_date(value: str) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC, says RFC 5322
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
