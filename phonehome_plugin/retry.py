"""Where retries are decided: which answers are retried, how long to wait, when to stop.

Within one send series (one report, one overall deadline) tenacity retries
connection errors, timeouts and 408, 425, 429, 500, 502, 503, 504, waiting
exponential backoff with full jitter, or longer when ``Retry-After`` asks for
it. Other answers are final. When the series fails, the report waits in the
outbox until a not-before time on the host's clock (:func:`not_before`), which
is stored and so survives restarts.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from phonehome_plugin.policy import Policy
from phonehome_plugin.transport import Answer

__all__ = ["RETRY_STATUSES", "Answer", "Outcome", "Policy", "not_before", "send_series", "verdict"]

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 60.0
"""First host-clock wait after a failed series; doubles per failure up to the interval."""


def verdict(answer: Answer) -> str:
    """``sent`` (2xx), ``retry`` (worth trying again) or ``rejected`` (final)."""
    if answer.ok:
        return "sent"
    if answer.status is None:
        return "retry"
    return "retry" if answer.status in RETRY_STATUSES else "rejected"


@dataclass(frozen=True)
class Outcome:
    """The last answer of a series, and how many attempts it took."""

    answer: Answer
    attempts: int


def send_series(
    post: Callable[[float], Answer], policy: Policy, cancel: threading.Event
) -> Outcome:
    """Call ``post(time_left)`` until it is sent, rejected, or the series must stop.

    The series stops at the deadline, after ``max_attempts``, when ``cancel`` is
    set, or when ``Retry-After`` asks for more time than the deadline leaves (the
    report then waits in the outbox instead of holding the worker).
    """
    import tenacity  # deferred: the host's thread never needs it

    clock = _Deadline(policy.deadline)
    backoff = tenacity.wait_random_exponential(multiplier=policy.wait_base, max=policy.wait_max)

    def wait(state: tenacity.RetryCallState) -> float:
        answer: Answer = state.outcome.result()  # type: ignore[union-attr]
        return max(backoff(state), answer.retry_after or 0.0)

    def stop(state: tenacity.RetryCallState) -> bool:
        if cancel.is_set() or state.attempt_number >= policy.max_attempts:
            return True
        return wait(state) >= clock.left()

    def sleep(seconds: float) -> None:
        cancel.wait(seconds)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda answer: verdict(answer) == "retry"),
        stop=stop,
        wait=wait,
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
        reraise=False,
    )
    attempts = 0

    def attempt() -> Answer:
        nonlocal attempts
        attempts += 1
        return post(max(0.1, clock.left()))

    answer: Answer = retrying(attempt)
    return Outcome(answer, attempts)


def not_before(now: float, failures: int, interval: float, retry_after: float | None) -> float:
    """When a report that failed ``failures`` series in a row may be tried again.

    Exponential from :data:`BACKOFF_BASE` with full jitter, capped at the
    interval, so a long outage costs at most one probe per interval; never
    sooner than ``Retry-After``.
    """
    cap = min(interval, BACKOFF_BASE * 2 ** max(0, failures - 1))
    wait = random.uniform(cap / 2, cap)
    return now + max(wait, retry_after or 0.0)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        import time

        self._time = time.monotonic
        self._end = self._time() + seconds

    def left(self) -> float:
        return self._end - self._time()
