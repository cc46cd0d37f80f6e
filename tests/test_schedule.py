"""Tests for :mod:`phonehome_plugin.reports.schedule`: when reports fall due, on the host's
clock."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import pytest

from phonehome_plugin.reports import schedule

HOUR = 3600
DAY = 86_400
ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC).timestamp()
INTERVALS = [60, 600, HOUR, DAY]


def _ids(count: int) -> list[str]:
    return [f"instance-{index:05d}" for index in range(count)]


# offset ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", INTERVALS)
def test_offset_is_within_the_interval_and_stable(interval: int) -> None:
    for instance in _ids(200):
        value = schedule.offset(instance, interval)
        assert 0 <= value < interval
        assert schedule.offset(instance, interval) == value


def test_offsets_spread_evenly_across_instance_ids() -> None:
    buckets = Counter(int(schedule.offset(i, HOUR) // (HOUR / 10)) for i in _ids(2000))
    assert set(buckets) == set(range(10))
    assert all(150 <= count <= 250 for count in buckets.values()), buckets
    assert len({schedule.offset(i, HOUR) for i in _ids(2000)}) == 2000


def test_offset_is_the_same_fraction_of_any_interval() -> None:
    assert schedule.offset(ID, DAY) / DAY == pytest.approx(schedule.offset(ID, HOUR) / HOUR)


# jitter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", INTERVALS)
def test_jitter_is_bounded(interval: int) -> None:
    bound = min(schedule.MAX_JITTER, interval / 20)
    values = [schedule.jitter(i, slot, interval) for i in _ids(50) for slot in range(40)]
    assert all(0 <= value < bound for value in values)
    # ... and uses the room it has, rather than clustering at zero.
    assert max(values) > 0.9 * bound
    assert min(values) < 0.1 * bound


def test_jitter_never_exceeds_five_minutes() -> None:
    assert schedule.MAX_JITTER == 300
    assert max(schedule.jitter(ID, slot, 30 * DAY) for slot in range(500)) < 300


def test_jitter_is_stable_per_installation_and_slot_and_varies_between_slots() -> None:
    first = [schedule.jitter(ID, slot, HOUR) for slot in range(100)]
    assert first == [schedule.jitter(ID, slot, HOUR) for slot in range(100)]
    assert len(set(first)) == 100
    assert schedule.jitter(ID, 5, HOUR) != schedule.jitter("another-instance", 5, HOUR)


# slots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("start_offset", [0.0, 17.25, 59.999])
def test_slot_of_and_slot_start_agree(interval: int, start_offset: float) -> None:
    for now in (NOW, NOW + 0.5, NOW + interval * 3.7, 0.0, 123_456.789):
        slot = schedule.slot_of(now, interval, start_offset)
        assert schedule.slot_start(slot, interval, start_offset) <= now
        assert now < schedule.slot_start(slot + 1, interval, start_offset)


def test_a_slot_boundary_belongs_to_the_slot_it_starts() -> None:
    start = schedule.slot_start(471_234, HOUR, 42.0)
    assert schedule.slot_of(start, HOUR, 42.0) == 471_234
    assert schedule.slot_of(start - 0.001, HOUR, 42.0) == 471_233


def test_consecutive_slots_are_one_interval_apart() -> None:
    assert schedule.slot_start(11, HOUR, 5.0) - schedule.slot_start(10, HOUR, 5.0) == HOUR


# periodic_slot / periodic_due_at --------------------------------------------------------


def _current(now: float, instance: str = ID, interval: int = HOUR) -> int:
    return schedule.slot_of(now, interval, schedule.offset(instance, interval))


def test_the_next_slot_is_due_at_its_start_plus_jitter() -> None:
    last = _current(NOW)
    due = schedule.periodic_due_at(last, ID, HOUR)
    start = schedule.slot_start(last + 1, HOUR, schedule.offset(ID, HOUR))
    assert due == start + schedule.jitter(ID, last + 1, HOUR)
    assert start <= due < start + min(schedule.MAX_JITTER, HOUR / 20)
    assert schedule.periodic_slot(math.nextafter(due, 0), last, ID, HOUR) is None
    assert schedule.periodic_slot(due, last, ID, HOUR) == last + 1
    assert schedule.periodic_slot(due + HOUR / 2, last, ID, HOUR) == last + 1


def test_nothing_is_due_for_a_slot_already_reported() -> None:
    last = _current(NOW)
    start = schedule.slot_start(last, HOUR, schedule.offset(ID, HOUR))
    for now in (start, start + 1, start + HOUR - 0.001):
        assert schedule.periodic_slot(now, last, ID, HOUR) is None
    # A clock behind the last reported slot (another process reported ahead) is not due either.
    assert schedule.periodic_slot(start - 5 * HOUR, last, ID, HOUR) is None


def _due(slot: int, instance: str = ID, interval: int = HOUR) -> float:
    start = schedule.slot_start(slot, interval, schedule.offset(instance, interval))
    return start + schedule.jitter(instance, slot, interval)


@pytest.mark.parametrize("missed", [1, 2, 10, 720, 3 * 8760])
def test_one_report_catches_up_however_long_the_host_was_down(missed: int) -> None:
    last = _current(NOW)
    current = last + missed + 1
    start = schedule.slot_start(current, HOUR, schedule.offset(ID, HOUR))
    due = _due(current)
    assert start < due

    # Back after the current slot's jitter: its report, and none for the missed slots.
    assert schedule.periodic_slot(due, last, ID, HOUR) == current
    assert schedule.periodic_slot(due, current, ID, HOUR) is None
    assert schedule.periodic_slot(start + HOUR - 0.001, current, ID, HOUR) is None

    # Back during its jitter: the previous slot, whose due time has passed, catches up
    # once; the current slot follows when its own jitter has passed.
    assert schedule.periodic_slot(start, last, ID, HOUR) == current - 1
    assert schedule.periodic_slot(start, current - 1, ID, HOUR) is None
    assert schedule.periodic_slot(due, current - 1, ID, HOUR) == current


def test_no_catch_up_for_a_slot_already_reported() -> None:
    last = _current(NOW)
    start = schedule.slot_start(last + 1, HOUR, schedule.offset(ID, HOUR))
    assert schedule.periodic_slot(start, last, ID, HOUR) is None
    assert schedule.periodic_slot(_due(last + 1), last, ID, HOUR) == last + 1


@pytest.mark.parametrize("back", ["after_jitter", "during_jitter"])
def test_a_host_ticking_through_three_days_and_an_outage_sends_one_report_per_slot(
    back: str,
) -> None:
    """Drive the schedule as a host does: 10 s ticks, a 30 h outage, one report per due slot."""
    start, end = NOW, NOW + 3 * DAY
    back_in = _current(start + DAY + 30 * HOUR)
    slot_begins = schedule.slot_start(back_in, HOUR, schedule.offset(ID, HOUR))
    if back == "after_jitter":
        outage = (start + DAY + 1234.0, _due(back_in) + 600)
    else:
        outage = (start + DAY + 1234.0, (slot_begins + _due(back_in)) / 2)
    last = _current(start)
    reported: dict[int, float] = {}
    now = start
    while now < end:
        if not outage[0] <= now < outage[1]:
            slot = schedule.periodic_slot(now, last, ID, HOUR)
            if slot is not None:
                assert slot not in reported
                reported[slot] = now
                last = slot
        now += 10.0

    for slot, at in reported.items():
        # Reported once its jitter has passed, before the next slot's has, never while down.
        assert _due(slot) <= at < _due(slot + 1)
        assert not outage[0] <= at < outage[1]
        assert at < _due(slot) + 10.0 or at >= outage[1]
    for slot in range(_current(start) + 1, _current(end)):
        window = (_due(slot), _due(slot + 1))
        if window[1] <= outage[0] or window[0] >= outage[1]:
            assert slot in reported, slot  # the host was up for it
        if outage[0] <= window[0] and window[1] <= outage[1]:
            assert slot not in reported, slot  # the host was down for all of it
    # Coming back from 30 h down produced exactly one report at once.
    catch_up = [slot for slot, at in reported.items() if outage[1] <= at < outage[1] + 10]
    assert catch_up == ([back_in] if back == "after_jitter" else [back_in - 1])
    assert back_in in reported
    missed = [s for s in range(_current(start) + 1, _current(end)) if s not in reported]
    assert len(missed) >= 28


@pytest.mark.parametrize("interval", INTERVALS)
def test_due_times_spread_across_a_fleet(interval: int) -> None:
    fleet = _ids(500)
    last = {i: _current(NOW, i, interval) for i in fleet}
    due = [schedule.periodic_due_at(last[i], i, interval) for i in fleet]
    assert len(set(due)) == len(fleet)
    assert max(due) - min(due) > 0.8 * interval


# startup_allowed ------------------------------------------------------------------------


def test_startup_allowed_until_the_limit_within_the_window() -> None:
    assert schedule.STARTUP_LIMIT == 3
    assert schedule.STARTUP_WINDOW == HOUR
    assert schedule.startup_allowed([], NOW)
    assert schedule.startup_allowed([NOW - 10], NOW)
    assert schedule.startup_allowed([NOW - 10, NOW - 20], NOW)
    assert not schedule.startup_allowed([NOW - 10, NOW - 20, NOW - 30], NOW)
    assert not schedule.startup_allowed([NOW - 1] * 10, NOW)


def test_startups_older_than_the_window_do_not_count() -> None:
    old = [NOW - HOUR, NOW - HOUR - 1, NOW - 5 * DAY]
    assert schedule.startup_allowed(old, NOW)
    assert schedule.startup_allowed([*old, NOW - 100, NOW - 200], NOW)
    assert not schedule.startup_allowed([*old, NOW - 100, NOW - 200, NOW - HOUR + 1], NOW)


def test_startups_recorded_ahead_of_the_clock_still_count() -> None:
    # A host clock set back must not open the window again.
    assert not schedule.startup_allowed([NOW + 50, NOW + 60, NOW + 70], NOW)


def test_a_crash_looping_host_gets_three_startup_reports_per_hour() -> None:
    recent: list[float] = []
    sent = 0
    for minute in range(0, 180):  # restarts every minute for three hours
        now = NOW + minute * 60
        if schedule.startup_allowed(recent, now):
            recent.append(now)
            sent += 1
    assert sent == 9
