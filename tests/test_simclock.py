"""The simulated host's clock is aware UTC, reads wall time at most once, and moves
only forward, only when advanced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from e2e_support import START

from phonehome_plugin.testing import simclock
from phonehome_plugin.testing.simclock import SimClock


def test_a_clock_without_a_start_reads_wall_time_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    class Wall(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Wall:
            calls.append(tz)
            moment = datetime(2026, 5, 1, 9, 0, 0, 654321, tzinfo=UTC)
            return cls.fromtimestamp(moment.timestamp() + len(calls), tz)

    monkeypatch.setattr(simclock, "datetime", Wall)
    clock = SimClock()
    readings = {clock.now() for _ in range(100)}
    assert calls == [UTC]
    assert readings == {datetime(2026, 5, 1, 9, 0, 1, tzinfo=UTC)}, "whole seconds"


def test_the_clock_is_aware_utc_and_never_goes_back() -> None:
    with pytest.raises(ValueError, match="aware"):
        SimClock(datetime(2026, 3, 2, 8, 0))
    berlin = SimClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=1))))
    assert berlin.now() == START and berlin.now().tzinfo is UTC
    with pytest.raises(ValueError, match="backwards"):
        berlin.advance(-1)
    assert berlin.now() == START


def test_advance_to_moves_forward_to_a_time_never_back() -> None:
    clock = SimClock(START)
    assert clock.advance_to(START) == START
    later = clock.advance_to(START.astimezone(timezone(timedelta(hours=1))) + timedelta(hours=2))
    assert later == START + timedelta(hours=2) and later.tzinfo is UTC
    with pytest.raises(ValueError, match="backwards"):
        clock.advance_to(START)
    with pytest.raises(ValueError, match="aware"):
        clock.advance_to(datetime(2026, 3, 2, 12, 0))
    assert clock.now() == START + timedelta(hours=2)
