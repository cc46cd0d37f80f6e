"""Tests for :mod:`phonehome_plugin.counting.riders`: third-party receivers called inside
the plugin's own, as blinker would call them, and never into the host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from blinker import Signal

from phonehome_plugin.counting.riders import Rider, ride, rideable


class FakeApp:
    """The sender; only its identity matters."""


class Calls:
    """Records every call a receiver got, in the order they came, across receivers."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any, dict[str, Any]]] = []
        self.failures: list[tuple[str, Exception]] = []

    def receiver(self, who: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.log.append((who, sender, kwargs))

        return receive

    def raising(self, who: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.log.append((who, sender, kwargs))
            raise RuntimeError(f"{who} is broken")

        return receive

    def failed(self, who: str) -> Any:
        def record(error: Exception) -> None:
            self.failures.append((who, error))

        return record

    def rider(self, who: str, raising: bool = False) -> Rider:
        receive = self.raising(who) if raising else self.receiver(who)
        return receive, self.failed(who)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def signal() -> Iterator[Signal]:
    sig = Signal("riders-test")
    yield sig
    sig.receivers.clear()


def test_ride_calls_each_rider_with_the_sender_and_the_arguments_as_they_came(
    calls: Calls,
) -> None:
    app = FakeApp()
    ride((calls.rider("a"), calls.rider("b")), app, {"id": "c1", "type": "mqtt"})
    assert calls.log == [
        ("a", app, {"id": "c1", "type": "mqtt"}),
        ("b", app, {"id": "c1", "type": "mqtt"}),
    ]
    assert calls.failures == []


def test_a_raising_rider_is_reported_to_its_own_failure_and_the_rest_still_ride(
    calls: Calls,
) -> None:
    app = FakeApp()
    ride((calls.rider("a"), calls.rider("bad", raising=True), calls.rider("c")), app, {})
    assert [who for who, _, _ in calls.log] == ["a", "bad", "c"]
    assert [(who, str(error)) for who, error in calls.failures] == [("bad", "bad is broken")]


def test_no_riders_is_nothing(calls: Calls) -> None:
    ride((), FakeApp(), {"id": "x"})
    assert calls.log == [] and calls.failures == []


def test_a_rideable_receiver_does_its_own_work_first_then_each_rider(
    calls: Calls, signal: Signal
) -> None:
    app = FakeApp()
    receiver, board = rideable(calls.receiver("own"))
    signal.connect(receiver, sender=app, weak=False)
    signal.send(app, id="o1")
    assert calls.log == [("own", app, {"id": "o1"})]
    board((calls.rider("a"), calls.rider("b")))
    signal.send(app, id="o2", extra={"secret": 1})
    assert calls.log[1:] == [
        ("own", app, {"id": "o2", "extra": {"secret": 1}}),
        ("a", app, {"id": "o2", "extra": {"secret": 1}}),
        ("b", app, {"id": "o2", "extra": {"secret": 1}}),
    ]


def test_a_raising_rider_never_reaches_the_sender(calls: Calls, signal: Signal) -> None:
    app = FakeApp()
    receiver, board = rideable(calls.receiver("own"))
    signal.connect(receiver, sender=app, weak=False)
    board((calls.rider("bad", raising=True), calls.rider("good")))
    for n in range(3):
        signal.send(app, id=f"o{n}")  # raises nothing
    assert [who for who, _, _ in calls.log].count("own") == 3
    assert [who for who, _, _ in calls.log].count("good") == 3
    assert len(calls.failures) == 3


def test_the_board_replaces_the_riders_whole(calls: Calls, signal: Signal) -> None:
    app = FakeApp()
    receiver, board = rideable(calls.receiver("own"))
    signal.connect(receiver, sender=app, weak=False)
    board((calls.rider("a"),))
    board((calls.rider("b"),))
    signal.send(app)
    board(())
    signal.send(app)
    assert [who for who, _, _ in calls.log] == ["own", "b", "own"]


def test_boards_are_independent(calls: Calls) -> None:
    first, board_first = rideable(calls.receiver("first"))
    second, _ = rideable(calls.receiver("second"))
    board_first((calls.rider("a"),))
    app = FakeApp()
    first(app)
    second(app)
    assert [who for who, _, _ in calls.log] == ["first", "a", "second"]
