"""The retry policy: verdicts per status, reading Retry-After, one series under one
deadline, and the host-clock wait between series.

A series runs on a clock of the test's (:class:`Clock`): its deadline reads the
clock, and its waits (through the cancel event, as shutdown ends them) move it,
so every duration asserted here is exact and no test depends on how fast the
machine runs.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonehome_plugin.delivery import retry
from phonehome_plugin.delivery.answer import Answer, retry_after
from phonehome_plugin.delivery.retry import (
    BACKOFF_BASE,
    RETRY_AFTER_MAX,
    RETRY_STATUSES,
    RetryPolicy,
    not_before,
    send_series,
    verdict,
)

NOW = 1_772_438_400.0
HOUR = 3600.0
QUICK = RetryPolicy(deadline=2.0, max_attempts=4, wait_base=0.01, wait_max=0.02)
EPSILON = 1e-9  # float rounding of the clock's sums, nothing more


class Clock:
    """Stands in for the ``time`` module in :mod:`phonehome_plugin.delivery.retry`: ``monotonic()``
    moves only when the series waits or a post takes time (:meth:`spend`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def spend(self, seconds: float) -> None:
        self.now += seconds


class Cancel(threading.Event):
    """The series' cancel event on :class:`Clock`: a wait moves the clock by its timeout,
    or to :attr:`at` (when shutdown comes) and is then cancelled."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.at: float | None = None
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "a series never waits without a limit"
        self.waits.append(timeout)
        if self.at is not None and self.clock.now + timeout >= self.at:
            self.clock.now = max(self.clock.now, self.at)
            self.set()
        elif not self.is_set():
            self.clock.spend(timeout)
        return self.is_set()


class Script:
    """A stand-in for the transport's post: answers in order, records each call."""

    def __init__(self, clock: Clock, *answers: Answer, then: Answer | None = None) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.then = then or Answer(200)
        self.calls: list[tuple[float, float]] = []  # (clock time, time_left given)

    def __call__(self, time_left: float) -> Answer:
        self.calls.append((self.clock.now, time_left))
        return self.answers.pop(0) if self.answers else self.then


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(retry, "time", made)  # raises if retry stops reading time here
    return made


@pytest.fixture
def cancel(clock: Clock) -> Iterator[Cancel]:
    event = Cancel(clock)
    yield event
    event.set()


# Verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_sent(status: int) -> None:
    assert verdict(Answer(status)) == "sent"


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_the_retryable_statuses_are_retried(status: int) -> None:
    assert verdict(Answer(status)) == "retry"


def test_the_retryable_statuses_are_exactly_those_of_the_policy() -> None:
    assert frozenset({408, 425, 429, 500, 502, 503, 504}) == RETRY_STATUSES


@pytest.mark.parametrize(
    "error", ["connection", "timeout", "deadline", "tls", "proxy", "cancelled"]
)
def test_no_answer_at_all_is_retried(error: str) -> None:
    assert verdict(Answer(None, error)) == "retry"


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 411, 413, 415, 422, 451, 499])
def test_other_4xx_are_final(status: int) -> None:
    assert verdict(Answer(status)) == "rejected"


@pytest.mark.parametrize("status", [401, 403, 407])
def test_a_refusal_of_the_credentials_keeps_the_report(status: int) -> None:
    # A relay wanting a header or certificate the plugin lacks: the operator's to fix,
    # and the report goes out then.
    assert verdict(Answer(status)) == "hold"


@pytest.mark.parametrize("status", [101, 301, 302, 304, 307, 308, 501, 505, 507, 511])
def test_anything_else_keeps_the_report_without_retrying_now(status: int) -> None:
    assert verdict(Answer(status)) == "hold"


# Reading Retry-After ----------------------------------------------------------------

SERVER_NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 7 "}, 7.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "1.5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "٣"}, None),  # an Arabic-Indic digit is not a delta-seconds
        (
            {
                "Retry-After": http_date(SERVER_NOW + timedelta(minutes=5)),
                "Date": http_date(SERVER_NOW),
            },
            300.0,
        ),
        (
            {
                "Retry-After": "Mon, 02 Mar 2026 08:02:00 GMT",
                "Date": "Mon, 02 Mar 2026 08:00:00 GMT",
            },
            120.0,
        ),
        (
            {
                "Retry-After": "Monday, 02-Mar-26 08:01:00 GMT",
                "Date": "Mon, 02 Mar 2026 08:00:00 GMT",
            },
            60.0,
        ),
        (
            {"Retry-After": "Mon Mar  2 08:00:30 2026", "Date": "Mon, 02 Mar 2026 08:00:00 GMT"},
            30.0,
        ),
        (
            {
                "Retry-After": http_date(SERVER_NOW - timedelta(hours=1)),
                "Date": http_date(SERVER_NOW),
            },
            0.0,
        ),
    ],
)
def test_retry_after_reads_delta_seconds_and_http_dates(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after(headers) == seconds


def test_an_http_date_without_a_date_header_is_measured_from_now() -> None:
    headers = {"Retry-After": http_date(SERVER_NOW + timedelta(seconds=90))}
    assert retry_after(headers, now=SERVER_NOW.timestamp()) == 90.0
    bad_date = {**headers, "Date": "yesterday-ish"}
    assert retry_after(bad_date, now=SERVER_NOW.timestamp()) == 90.0


# One series ---------------------------------------------------------------------------


def test_a_retryable_answer_is_tried_again_until_sent(clock: Clock, cancel: Cancel) -> None:
    post = Script(clock, Answer(500), Answer(None, "connection"), Answer(503))
    outcome = send_series(post, QUICK, cancel)
    assert outcome == retry.Outcome(Answer(200), 4)


@pytest.mark.parametrize(
    "final", [Answer(400), Answer(404), Answer(307), Answer(501), Answer(202)]
)
def test_a_final_answer_ends_the_series_at_once(
    clock: Clock, cancel: Cancel, final: Answer
) -> None:
    post = Script(clock, final)
    assert send_series(post, QUICK, cancel) == retry.Outcome(final, 1)
    assert cancel.waits == []


def test_the_series_stops_after_max_attempts(clock: Clock, cancel: Cancel) -> None:
    post = Script(clock, then=Answer(503))
    outcome = send_series(post, RetryPolicy(deadline=5, max_attempts=3, wait_base=0.01), cancel)
    assert outcome == retry.Outcome(Answer(503), 3)


@pytest.fixture
def seeded() -> Iterator[None]:
    """The draws of tenacity's jitter (the ``random`` module's) seeded, then put back."""
    state = random.getstate()
    random.seed(20260302)
    yield
    random.setstate(state)


@pytest.mark.usefixtures("seeded")
def test_waits_are_exponential_with_full_jitter_up_to_wait_max(
    clock: Clock, cancel: Cancel
) -> None:
    policy = RetryPolicy(deadline=5, max_attempts=4, wait_base=0.02, wait_max=0.05)
    gaps: list[list[float]] = []
    for _ in range(15):
        post = Script(clock, then=Answer(503))
        send_series(post, policy, cancel)
        times = [at for at, _ in post.calls]
        gaps.append([later - earlier for earlier, later in itertools.pairwise(times)])
    # Full jitter: anywhere from nothing up to the ceiling (0.02, 0.04, then capped at 0.05).
    for waited in gaps:
        assert len(waited) == 3
        for gap, ceiling in zip(waited, (0.02, 0.04, 0.05), strict=True):
            assert 0 <= gap <= ceiling + EPSILON
    every = [gap for waited in gaps for gap in waited]
    assert min(every) < 0.01
    assert len(set(round(g, 4) for g in every)) > 10


def test_the_whole_series_keeps_one_deadline(clock: Clock, cancel: Cancel) -> None:
    # Waits as long as the deadline itself: a series that checked the deadline with
    # one random draw and slept another would overrun it now and then.
    policy = RetryPolicy(deadline=0.2, max_attempts=50, wait_base=0.15, wait_max=0.15)
    for _ in range(50):
        post = Script(clock, then=Answer(503))
        began = clock.now
        send_series(post, policy, cancel)
        assert clock.now - began <= 0.2 + EPSILON
        # Each POST is told what is left, and no POST starts after the deadline.
        for at, left in post.calls:
            assert 0 < left <= 0.2 + EPSILON
            assert at - began < 0.2
            assert left == pytest.approx(0.2 - (at - began))


def test_each_post_gets_what_is_left_of_the_deadline(clock: Clock, cancel: Cancel) -> None:
    def slow(time_left: float) -> Answer:
        got.append(time_left)
        clock.spend(0.1)
        return Answer(None, "timeout")

    got: list[float] = []
    send_series(
        slow, RetryPolicy(deadline=0.35, max_attempts=10, wait_base=0.001, wait_max=0.001), cancel
    )
    # 0.35 s, then 0.1 s less per POST (and the waits of at most 1 ms between them).
    assert len(got) == 4
    assert got[0] == pytest.approx(0.35)
    for n, left in enumerate(got):
        assert 0.35 - 0.1 * n - 0.001 * n <= left <= 0.35 - 0.1 * n + EPSILON


def test_retry_after_is_a_minimum_wait_inside_the_series(clock: Clock, cancel: Cancel) -> None:
    post = Script(clock, Answer(429, retry_after=0.3))
    outcome = send_series(post, RetryPolicy(deadline=2, wait_base=0.001, wait_max=0.001), cancel)
    assert outcome == retry.Outcome(Answer(200), 2)
    assert post.calls[1][0] - post.calls[0][0] == pytest.approx(0.3)


def test_retry_after_beyond_the_deadline_ends_the_series_without_waiting(
    clock: Clock, cancel: Cancel
) -> None:
    post = Script(clock, Answer(503, retry_after=120.0))
    began = clock.now
    outcome = send_series(post, RetryPolicy(deadline=1.0), cancel)
    assert outcome == retry.Outcome(Answer(503, retry_after=120.0), 1)
    assert cancel.waits == [] and clock.now == began


def test_cancel_ends_a_series_waiting_between_attempts(clock: Clock, cancel: Cancel) -> None:
    # Retry-After: the wait cannot end before the cancel, which comes 0.1 s in.
    post = Script(clock, then=Answer(503, None, 20.0))
    began = clock.now
    cancel.at = began + 0.1
    outcome = send_series(
        post, RetryPolicy(deadline=30, max_attempts=100, wait_base=5, wait_max=5), cancel
    )
    assert clock.now - began == pytest.approx(0.1), "the wait ended at the cancel"
    assert outcome.answer == Answer(None, "cancelled")
    assert len(post.calls) == 1  # nothing was posted after the cancel


def test_a_cancelled_series_posts_nothing(clock: Clock, cancel: Cancel) -> None:
    cancel.set()
    post = Script(clock)
    assert send_series(post, QUICK, cancel) == retry.Outcome(Answer(None, "cancelled"), 0)
    assert post.calls == []


def test_a_post_that_raises_costs_one_attempt(cancel: Cancel) -> None:
    calls = 0

    def broken(time_left: float) -> Answer:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug below")
        return Answer(200)

    outcome = send_series(broken, QUICK, cancel)
    assert outcome == retry.Outcome(Answer(200), 2)


# Between series, on the host's clock ---------------------------------------------------


def waits(failures: int, interval: float = HOUR, retry_after: float | None = None) -> list[float]:
    return [not_before(NOW, failures, interval, retry_after) - NOW for _ in range(200)]


def test_the_first_failure_waits_about_a_minute() -> None:
    got = waits(1)
    assert all(BACKOFF_BASE / 2 <= w <= BACKOFF_BASE for w in got)
    assert max(got) - min(got) > 10  # jittered


def test_the_wait_doubles_per_failure() -> None:
    for failures in range(1, 6):
        ceiling = BACKOFF_BASE * 2 ** (failures - 1)
        assert all(ceiling / 2 <= w <= ceiling for w in waits(failures))


@given(failures=st.integers(1, 10_000), interval=st.integers(60, 7 * 86400))
def test_the_wait_is_capped_at_the_interval(failures: int, interval: int) -> None:
    assert not_before(NOW, failures, interval, None) - NOW <= interval


def test_after_many_failures_the_wait_is_the_interval_exactly() -> None:
    # One probe per interval: never sooner, never later.
    for failures in (8, 20, 500, 10**6):
        assert set(waits(failures)) == {HOUR}


@given(
    failures=st.integers(1, 100),
    interval=st.integers(60, 86400),
    asked=st.floats(0, RETRY_AFTER_MAX, allow_nan=False),
)
def test_the_wait_is_never_below_retry_after(failures: int, interval: int, asked: float) -> None:
    when = not_before(NOW, failures, interval, asked)
    assert when >= NOW + asked
    assert when == NOW + asked or when <= NOW + interval


def test_a_retry_after_beyond_a_day_is_honoured_as_a_day() -> None:
    assert set(waits(1, retry_after=30 * 86400.0)) == {RETRY_AFTER_MAX}


def test_a_long_outage_costs_at_most_one_probe_per_interval() -> None:
    # Simulate a day of failures: each probe fails and sets the next one.
    at, probes, failures = NOW, [NOW], 0
    while at < NOW + 86400:
        failures += 1
        at = not_before(at, failures, HOUR, None)
        probes.append(at)
    late = [b - a for a, b in itertools.pairwise(probes)][8:]
    assert late and all(gap == HOUR for gap in late)
    assert len(probes) <= 8 + 24 + 1
