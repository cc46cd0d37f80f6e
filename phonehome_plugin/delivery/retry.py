"""Where retries are decided: which answers are retried, how long to wait, when to stop.

Within one send series (one report, one overall deadline) tenacity retries
connection errors, timeouts and 408, 425, 429, 500, 502, 503, 504, waiting
exponential backoff with full jitter, or longer when ``Retry-After`` asks for
it (:func:`.answer.retry_after` reads it off the answer). Other 4xx answers are final:
the report is dropped and counted. Any other answer (a redirect, which is never
followed, or another 5xx such as 501) ends the series but keeps the report: it
says the endpoint is misconfigured, not that the report is bad.

When a series fails, the report waits in the outbox until a not-before time on
the host's clock (:func:`not_before`), which is stored and so survives restarts.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from phonehome_plugin.delivery.answer import Answer

__all__ = [
    "CREDENTIAL_STATUSES",
    "RETRY_STATUSES",
    "Outcome",
    "RetryPolicy",
    "not_before",
    "send_series",
    "verdict",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CREDENTIAL_STATUSES = frozenset({401, 403, 407})
"""Refusals of the client's credentials (a relay's or proxy's): the report is kept."""
BACKOFF_BASE = 60.0
"""First host-clock wait after a failed series; doubles per failure up to the interval."""
RETRY_AFTER_MAX = 86400.0
"""Longest ``Retry-After`` honoured (a day): a server asking for more is misconfigured."""


@dataclass(frozen=True)
class RetryPolicy:
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


def verdict(answer: Answer) -> str:
    """What an answer means for its report.

    ``sent`` (2xx), ``retry`` (no answer, or a status worth trying again),
    ``rejected`` (any other 4xx but the credential refusals: final) or ``hold``
    (anything else: keep the report, but do not hammer the endpoint within this
    series).
    """
    if answer.ok:
        return "sent"
    if answer.status is None or answer.status in RETRY_STATUSES:
        return "retry"
    if 400 <= answer.status < 500 and answer.status not in CREDENTIAL_STATUSES:
        return "rejected"
    return "hold"


@dataclass(frozen=True)
class Outcome:
    """The last answer of a series, and how many POSTs it took."""

    answer: Answer
    attempts: int


def send_series(
    post: Callable[[float], Answer], policy: RetryPolicy, cancel: threading.Event
) -> Outcome:
    """Call ``post(time_left)`` until it is sent, finally answered, or the series must stop.

    The series stops at the deadline (``post`` is given what is left of it, and no
    POST starts after it), after ``max_attempts``, when ``cancel`` is set, or when
    the next wait (backoff, or ``Retry-After`` if longer) would not end before the
    deadline: the report then waits in the outbox instead of holding the worker.
    """
    clock = _Deadline(policy.deadline)
    backoff = tenacity.wait_random_exponential(multiplier=policy.wait_base, max=policy.wait_max)
    chosen: dict[int, float] = {}

    def wait(state: tenacity.RetryCallState) -> float:
        # One random draw per attempt, whichever of stop and wait tenacity asks first.
        if state.attempt_number not in chosen:
            answer: Answer = state.outcome.result()  # type: ignore[union-attr]
            chosen[state.attempt_number] = max(backoff(state), answer.retry_after or 0.0)
        return chosen[state.attempt_number]

    def stop(state: tenacity.RetryCallState) -> bool:
        if cancel.is_set() or state.attempt_number >= policy.max_attempts:
            return True
        return wait(state) >= clock.left()

    attempts = 0

    def attempt() -> Answer:
        nonlocal attempts
        left = clock.left()
        if cancel.is_set():
            return Answer(None, "cancelled")
        if left <= 0:
            return Answer(None, "deadline")
        attempts += 1
        try:
            return post(left)
        except Exception as error:  # a bug below must cost this report a try, no more
            log.exception("phonehome: sending failed unexpectedly")
            return Answer(None, type(error).__name__)

    def sleep(seconds: float) -> None:
        cancel.wait(seconds)  # a cancel (shutdown) ends the wait at once

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda answer: verdict(answer) == "retry"),
        stop=stop,
        wait=wait,
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
        reraise=False,
    )
    answer: Answer = retrying(attempt)
    return Outcome(answer, attempts)


def not_before(now: float, failures: int, interval: float, retry_after: float | None) -> float:
    """When the outbox may be tried again after ``failures`` failed series in a row.

    The wait doubles from :data:`BACKOFF_BASE` per failure, drawn between half
    and all of that ceiling (so a fleet that failed together spreads out), and is
    capped at ``interval``: once the ceiling passes twice the interval, the wait
    is the interval exactly, so a long outage costs one probe per interval. Never
    sooner than ``Retry-After`` (up to :data:`RETRY_AFTER_MAX`).
    """
    ceiling = BACKOFF_BASE * 2.0 ** min(max(0, failures - 1), 40)
    wait = min(float(interval), random.uniform(ceiling / 2, ceiling))
    asked = min(retry_after or 0.0, RETRY_AFTER_MAX)
    return now + max(wait, asked)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return self._end - time.monotonic()
