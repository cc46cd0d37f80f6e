"""Tests for :mod:`phonehome_plugin.counting.collectors`: third-party collectors cost
only their section."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blinker
import pluggy
import pytest
from test_bounded import Hostile, HostileDict, HostileInt, HostileStr

import hookspecs
from hookspecs import hookimpl, signals
from phonehome_plugin.counting import collectors, receivers
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.riders import Builtin
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.guard import privacy
from phonehome_plugin.guard.privacy import DropCounter
from phonehome_plugin.testing.examples import historian
from phonehome_plugin.testing.examples.historian import HistorianCollector
from phonehome_plugin.testing.kit import Harness

SECRET = "hunter2-secret-value"
TIMEOUT = 0.05


class FakeApp:
    """The sender of every signal; only its identity matters."""


class Collector:
    """A well-behaved collector whose ``collect()`` returns ``result``."""

    def __init__(
        self,
        name: str,
        result: Any = None,
        pairs: list[tuple[Any, Callable[..., None]]] | None = None,
        receivers: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.result = {"value": 1} if result is None else result
        self.calls = 0
        if pairs is not None:
            self.receivers: Callable[[], Any] = lambda: iter(pairs)
        elif receivers is not None:
            self.receivers = receivers

    def collect(self) -> Any:
        self.calls += 1
        return self.result


class Counting:
    """A collector counting ``execution-finished`` through its own receiver."""

    name = "acme.counting"

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []

    def receivers(self) -> list[tuple[Any, Callable[..., None]]]:
        return [(signals.execution_finished, self.on_finished)]

    def on_finished(self, sender: Any, status: Any = None, **extra: Any) -> None:
        self.seen.append((sender, status))

    def collect(self) -> dict[str, int]:
        return {"finished": len(self.seen)}


class Raising:
    """A collector whose receiver raises on every signal."""

    name = "acme.raising"

    def receivers(self) -> list[tuple[Any, Callable[..., None]]]:
        return [(signals.execution_finished, self.on_finished)]

    def on_finished(self, sender: Any, **extra: Any) -> None:
        raise RuntimeError(f"receiver bug with {SECRET}")

    def collect(self) -> dict[str, int]:
        return {"counted": 3}


class Blocking:
    """A collector whose first ``collect()`` hangs until the test releases it."""

    def __init__(self, name: str, release: threading.Event) -> None:
        self.name = name
        self.release = release
        self.calls = 0
        self.running = 0
        self.most_running = 0

    def collect(self) -> dict[str, int]:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.calls == 1:
                STUCK.add(self.name)
                self.release.wait(HANG)
            return {"calls": self.calls}
        finally:
            STUCK.discard(self.name)
            self.running -= 1


HANG = 60.0
"""Seconds after which a wait that should have ended counts as hung (a hang detector)."""

STUCK: set[str] = set()
"""Names of :class:`Blocking` collectors inside a hanging ``collect()``."""
REPORTED: set[str] = set()
"""Those of them whose overrun :class:`ExactQueue` has already told the registry of."""


class ExactQueue(queue.SimpleQueue[Any]):
    """The runner's result queue, with a timeout that falls exactly when a collector
    hangs, never because the machine is slow: ``get`` waits (up to :data:`HANG`) for
    a result, and gives up (``queue.Empty``, as the real timeout would) once a
    :class:`Blocking` collector is stuck in ``collect()``. A runner calls its
    collectors one after another, so the one stuck is the one waited for."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        for _ in range(int(HANG / 0.005)):
            try:
                return super().get(timeout=0.005)
            except queue.Empty:
                if STUCK - REPORTED:
                    REPORTED.update(STUCK)
                    raise
        raise AssertionError("no result and no hanging collector")


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.disconnect()


@pytest.fixture
def drops() -> DropCounter:
    return DropCounter()


@pytest.fixture
def exact_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """``collect()``'s timeout falls when a :class:`Blocking` collector hangs (see
    :class:`ExactQueue`); :data:`TIMEOUT` is the figure the errors name."""
    monkeypatch.setattr(collectors, "CALL_TIMEOUT", TIMEOUT)
    monkeypatch.setattr(
        collectors, "queue", SimpleNamespace(SimpleQueue=ExactQueue, Empty=queue.Empty)
    )
    STUCK.clear()
    REPORTED.clear()
    yield TIMEOUT
    STUCK.clear()
    REPORTED.clear()


def _collect_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "phonehome-collect"}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that lets hanging collectors return; set, and their runners joined, at teardown."""
    before = _collect_threads()
    event = threading.Event()
    yield event
    event.set()
    for thread in _collect_threads() - before:
        thread.join(HANG)


def _wait_for_runners(before: set[threading.Thread]) -> None:
    for thread in _collect_threads() - before:
        thread.join(HANG)
        assert not thread.is_alive()


# register -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["acme.historian", "a.b", "acme.sub_mod.x2", "x" * 30 + ".y" * 17]
)
def test_register_accepts_dotted_lower_case_names(registry: Registry, name: str) -> None:
    collector = Collector(name)
    registry.register(collector)
    assert registry.collectors == {name: collector}


@pytest.mark.parametrize(
    "name",
    [
        "acme",
        "Acme.historian",
        "acme.Historian",
        "acme.",
        ".acme",
        "acme..x",
        "1acme.x",
        "acme.1x",
        "acme-x.y",
        "acme.historian ",
        "acme/historian.x",
        "",
        "a." + "b" * 63,
    ],
)
def test_register_rejects_names_that_are_not_dotted_identifiers(
    registry: Registry, name: str
) -> None:
    with pytest.raises(TypeError, match="dotted lower-case name"):
        registry.register(Collector(name))
    assert registry.collectors == {}


@pytest.mark.parametrize("name", [None, 3, b"acme.x", ["acme.x"]])
def test_register_rejects_a_name_that_is_not_a_string(registry: Registry, name: Any) -> None:
    collector = Collector("acme.x")
    collector.name = name
    with pytest.raises(TypeError, match="needs a str `name` and a callable `collect"):
        registry.register(collector)
    assert registry.collectors == {}


def test_register_rejects_objects_without_name_or_collect(registry: Registry) -> None:
    with pytest.raises(TypeError):
        registry.register(SimpleNamespace(collect=lambda: {}))
    with pytest.raises(TypeError):
        registry.register(SimpleNamespace(name="acme.x"))
    with pytest.raises(TypeError):
        registry.register(SimpleNamespace(name="acme.x", collect={"a": 1}))
    with pytest.raises(TypeError):
        registry.register(None)  # type: ignore[arg-type]  # deliberately no collector
    assert registry.collectors == {}


def test_the_collectors_here_are_collectors_of_the_contract() -> None:
    assert isinstance(Collector("acme.x"), hookspecs.Collector)
    assert not isinstance(Collector("acme.x"), hookspecs.CollectorWithReceivers)
    assert isinstance(Collector("acme.x", pairs=[]), hookspecs.CollectorWithReceivers)
    assert isinstance(Counting(), hookspecs.CollectorWithReceivers)
    assert isinstance(HistorianCollector(), hookspecs.CollectorWithReceivers)


@pytest.mark.parametrize(
    "candidate",
    [
        SimpleNamespace(name=3, collect=lambda: {}),
        SimpleNamespace(name="Not.Dotted", collect=lambda: {}),
        SimpleNamespace(name="acme.x", collect={"a": 1}),
    ],
)
def test_register_checks_more_than_the_protocol_does(
    registry: Registry, candidate: SimpleNamespace
) -> None:
    """``isinstance(..., Collector)`` sees only that the members are there; the registry
    checks what they are, as it must with objects of untrusted code."""
    assert isinstance(candidate, hookspecs.Collector)
    with pytest.raises(TypeError):
        registry.register(candidate)
    assert registry.collectors == {}


def test_register_rejects_a_duplicate_name_and_keeps_the_first(registry: Registry) -> None:
    first = Collector("acme.historian")
    registry.register(first)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Collector("acme.historian"))
    assert registry.collectors == {"acme.historian": first}


def test_register_accepts_any_object_with_name_and_collect(
    registry: Registry, drops: DropCounter
) -> None:
    registry.register(SimpleNamespace(name="acme.ns", collect=lambda: {"n": 2}))
    assert registry.collect_all(drops) == ({"acme.ns": {"n": 2}}, {})


# receivers() ----------------------------------------------------------------------------


def test_receivers_are_connected_for_the_sender_only(registry: Registry, app: FakeApp) -> None:
    counting = Counting()
    registry.register(counting)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert counting.seen == []  # not connected before connect()
    registry.connect(app)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    signals.execution_finished.send(FakeApp(), pipeline_id="p", status="failed", duration_ms=1)
    assert counting.seen == [(app, "completed")]


def test_collectors_registered_after_connect_are_connected_at_once(
    registry: Registry, app: FakeApp
) -> None:
    registry.connect(app)
    counting = Counting()
    registry.register(counting)
    signals.execution_finished.send(app, pipeline_id="p", status="failed", duration_ms=1)
    assert counting.seen == [(app, "failed")]


def test_disconnect_stops_every_receiver(registry: Registry, app: FakeApp) -> None:
    before = set(signals.execution_finished.receivers)
    counting = Counting()
    registry.register(counting)
    registry.connect(app)
    assert set(signals.execution_finished.receivers) > before
    registry.disconnect()
    registry.disconnect()
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert counting.seen == []
    # Gone from the signal altogether, not only from ``app``.
    assert set(signals.execution_finished.receivers) == before
    # A collector registered after disconnect is not connected either.
    late = Counting()
    late.name = "acme.late"
    registry.register(late)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert late.seen == []


def test_a_raising_receiver_never_reaches_the_sender_and_marks_its_collector(
    registry: Registry, app: FakeApp
) -> None:
    raising, counting = Raising(), Counting()
    tally = ExecutionTally()
    registry.register(raising)
    registry.register(counting)
    registry.connect(app)
    signals.execution_finished.connect(tally.receiver, sender=app, weak=False)
    try:
        for _ in range(3):
            signals.execution_finished.send(
                app, pipeline_id="p", status="completed", duration_ms=1
            )
    finally:
        signals.execution_finished.disconnect(tally.receiver)
    # Everyone else on the signal still got every send.
    assert len(counting.seen) == 3
    assert tally.totals()["completed"] == 3
    assert registry.errors == {"acme.raising": "receiver raised RuntimeError"}


# Riding in the plugin's own receivers --------------------------------------------------


@pytest.fixture
def tally() -> ExecutionTally:
    return ExecutionTally()


@pytest.fixture
def own(app: FakeApp, tally: ExecutionTally) -> Iterator[list[Builtin]]:
    """The plugin's own receivers, connected for ``app`` as the runtime connects them."""
    builtins = receivers.builtin_receivers(Inventory(), tally)
    list(receivers.connect_all(builtins, app))
    yield builtins
    receivers.disconnect_all(builtins)


def test_a_receiver_of_a_contract_signal_rides_in_the_plugins_own(
    registry: Registry, app: FakeApp, own: list[Builtin], tally: ExecutionTally
) -> None:
    before = set(signals.execution_finished.receivers)
    counting = Counting()
    registry.register(counting)
    registry.connect(app, own)
    assert set(signals.execution_finished.receivers) == before, "no receiver of its own"
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    signals.execution_finished.send(FakeApp(), pipeline_id="p", status="failed", duration_ms=1)
    assert counting.seen == [(app, "completed")]
    assert tally.totals()["completed"] == 1


@pytest.mark.parametrize("signal", signals.ALL, ids=lambda s: s.name)
def test_every_contract_signal_carries_riders(
    registry: Registry, app: FakeApp, own: list[Builtin], signal: Any
) -> None:
    got: list[tuple[Any, dict[str, Any]]] = []
    registry.register(
        Collector("acme.any", pairs=[(signal, lambda sender, **kw: got.append((sender, kw)))])
    )
    before = set(signal.receivers)
    registry.connect(app, own)
    assert set(signal.receivers) == before
    signal.send(app, id="x1", items=[])
    assert got == [(app, {"id": "x1", "items": []})]


def test_a_raising_rider_never_reaches_the_host_and_costs_its_collector_only(
    registry: Registry, app: FakeApp, own: list[Builtin], tally: ExecutionTally, drops: DropCounter
) -> None:
    counting = Counting()
    registry.register(Raising())
    registry.register(counting)
    registry.connect(app, own)
    for _ in range(3):
        signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert len(counting.seen) == 3
    assert tally.totals()["completed"] == 3
    assert registry.collect_all(drops) == (
        {"acme.counting": {"finished": 3}},
        {"acme.raising": "receiver raised RuntimeError"},
    )


def test_a_collector_registered_later_rides_at_once(
    registry: Registry, app: FakeApp, own: list[Builtin]
) -> None:
    registry.connect(app, own)
    counting = Counting()
    registry.register(counting)
    signals.execution_finished.send(app, pipeline_id="p", status="failed", duration_ms=1)
    assert counting.seen == [(app, "failed")]


def test_disconnect_takes_every_rider_off(
    registry: Registry, app: FakeApp, own: list[Builtin], tally: ExecutionTally
) -> None:
    counting = Counting()
    registry.register(counting)
    registry.connect(app, own)
    registry.disconnect()
    registry.disconnect()
    late = Counting()
    late.name = "acme.late"
    registry.register(late)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert counting.seen == [] and late.seen == []
    assert tally.totals()["completed"] == 1, "the plugin's own receiver is the runtime's"


def test_a_receiver_of_another_signal_is_connected_inside_a_guard(
    registry: Registry, app: FakeApp, own: list[Builtin]
) -> None:
    other = blinker.Signal("acme-own-signal")
    got: list[Any] = []

    def raising(sender: Any, **kw: Any) -> None:
        got.append(sender)
        raise RuntimeError(SECRET)

    registry.register(Collector("acme.other", pairs=[(other, raising)]))
    registry.connect(app, own)
    assert len(other.receivers) == 1
    other.send(app)  # raises nothing
    assert got == [app]
    assert registry.errors == {"acme.other": "receiver raised RuntimeError"}
    registry.disconnect()
    assert not other.receivers


def test_a_collector_whose_receiver_raised_loses_its_section_only(
    registry: Registry, app: FakeApp, drops: DropCounter
) -> None:
    registry.register(Raising())
    registry.register(Counting())
    registry.connect(app)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    sections, errors = registry.collect_all(drops)
    # Its counts missed what the raising receiver dropped: the section is left out.
    assert sections == {"acme.counting": {"finished": 1}}
    assert errors == {"acme.raising": "receiver raised RuntimeError"}
    assert SECRET not in repr(errors)


def test_a_raising_receivers_method_costs_only_that_collector(
    registry: Registry, app: FakeApp, drops: DropCounter
) -> None:
    def receivers() -> list[Any]:
        raise KeyError(SECRET)

    broken = Collector("acme.broken", receivers=receivers)
    counting = Counting()
    registry.register(broken)
    registry.register(counting)
    registry.connect(app)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert len(counting.seen) == 1
    assert registry.errors == {"acme.broken": "receivers() failed: KeyError"}
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.counting": {"finished": 1}}
    assert errors == {"acme.broken": "receivers() failed: KeyError"}


@pytest.mark.parametrize(
    "pairs",
    [
        [("not a signal", lambda sender, **kw: None)],
        [(signals.execution_finished, "not callable")],
    ],
)
def test_receivers_must_yield_signal_callable_pairs(
    registry: Registry, app: FakeApp, pairs: list[Any]
) -> None:
    before = set(signals.execution_finished.receivers)
    registry.register(Collector("acme.pairs", pairs=pairs))
    registry.connect(app)
    assert registry.errors == {"acme.pairs": "receivers() failed: TypeError"}
    assert set(signals.execution_finished.receivers) == before


def test_registering_while_connected_survives_a_raising_receivers(
    registry: Registry, app: FakeApp
) -> None:
    registry.connect(app)
    broken = Collector("acme.broken", receivers=lambda: 1 / 0)
    registry.register(broken)
    assert registry.errors == {"acme.broken": "receivers() failed: ZeroDivisionError"}


# collect() ------------------------------------------------------------------------------


def test_collect_all_of_nothing(registry: Registry, drops: DropCounter) -> None:
    assert registry.collect_all(drops) == ({}, {})


def test_healthy_collectors_are_called_each_time(registry: Registry, drops: DropCounter) -> None:
    first = Collector("acme.one", {"series": 12, "backends": {"influx": 1, "timescale": 2}})
    second = Collector("acme.two", {"ok": True, "mode": "fast", "ratio": 0.5})
    registry.register(first)
    registry.register(second)
    for round_ in (1, 2):
        sections, errors = registry.collect_all(drops)
        assert sections == {"acme.one": first.result, "acme.two": second.result}
        assert errors == {}
        assert first.calls == second.calls == round_
    assert drops.take() == {}


def test_a_raising_collect_costs_only_its_section(registry: Registry, drops: DropCounter) -> None:
    broken = Collector("acme.broken")

    def collect() -> Any:
        raise ValueError(f"cannot reach {SECRET}")

    broken.collect = collect  # type: ignore[method-assign]
    registry.register(Collector("acme.before"))
    registry.register(broken)
    registry.register(Collector("acme.after"))
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.before": {"value": 1}, "acme.after": {"value": 1}}
    assert errors == {"acme.broken": "collect() raised ValueError"}


@pytest.mark.parametrize("result", [[("a", 1)], "a=1", 42, {1, 2}, (1, 2)])
def test_a_non_mapping_costs_only_its_section(
    registry: Registry, drops: DropCounter, result: Any
) -> None:
    registry.register(Collector("acme.odd", result))
    registry.register(Collector("acme.fine"))
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.fine": {"value": 1}}
    assert errors == {"acme.odd": f"collect() returned {type(result).__name__}, not a mapping"}


def test_collect_returning_none_is_not_a_mapping(registry: Registry, drops: DropCounter) -> None:
    odd = Collector("acme.none")
    odd.result = None
    registry.register(odd)
    sections, errors = registry.collect_all(drops)
    assert sections == {}
    assert errors == {"acme.none": "collect() returned NoneType, not a mapping"}


def test_too_deep_and_secret_looking_values_are_dropped_and_counted(
    registry: Registry, drops: DropCounter
) -> None:
    registry.register(
        Collector(
            "acme.messy",
            {
                "series": 3,
                "by_backend": {"influx": 1, "deeper": {"x": 1}},
                "dsn": f"postgresql://admin:{SECRET}@db/x",
                "api_key": "abc",
                "owner": "alice@example.com",
                "note": "some free text",
                "token_value": "0123456789abcdef0123456789abcdef",
                "list": [1, 2],
            },
        )
    )
    registry.register(Collector("acme.fine"))
    sections, errors = registry.collect_all(drops)
    assert errors == {}
    assert sections == {
        "acme.messy": {"series": 3, "by_backend": {"influx": 1}},
        "acme.fine": {"value": 1},
    }
    assert drops.take() == {"collector_key": 2, "collector_value": 5}
    assert SECRET not in repr(sections)


class ExplodingMapping(Mapping[str, int]):
    """A mapping that fails while being read, like a dict changed during iteration."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getitem__(self, key: str) -> int:
        raise self.error

    def __iter__(self) -> Iterator[str]:
        raise self.error

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("dictionary changed size during iteration"),
        TypeError(f"leaked {SECRET}"),
        KeyError(SECRET),
    ],
)
def test_a_mapping_that_fails_while_read_costs_only_its_section(
    registry: Registry, drops: DropCounter, error: Exception
) -> None:
    registry.register(Collector("acme.live", ExplodingMapping(error)))
    registry.register(Collector("acme.fine"))
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.fine": {"value": 1}}
    assert set(errors) == {"acme.live"}
    assert type(error).__name__ in errors["acme.live"]
    assert SECRET not in errors["acme.live"]


# Hanging collect() ----------------------------------------------------------------------


@pytest.mark.usefixtures("exact_timeout")
@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_hanging_collect_costs_only_its_section_and_is_not_called_again_until_it_returns(
    registry: Registry, drops: DropCounter, release: threading.Event, position: int
) -> None:
    before = _collect_threads()
    slow = Blocking("acme.slow", release)
    others = [Collector("acme.one"), Collector("acme.two")]
    everyone: list[Any] = [*others]
    everyone.insert(position, slow)
    for collector in everyone:
        registry.register(collector)

    sections, errors = registry.collect_all(drops)
    assert not release.is_set() and slow.running == 1, "collect_all did not wait for it"
    assert sections == {"acme.one": {"value": 1}, "acme.two": {"value": 1}}
    assert errors == {"acme.slow": f"collect() took longer than {TIMEOUT} s"}

    # Still hanging: not called again, reported as such, the others unaffected.
    sections, errors = registry.collect_all(drops)
    assert slow.calls == 1
    assert sections == {"acme.one": {"value": 1}, "acme.two": {"value": 1}}
    assert errors == {"acme.slow": "collect() still running from an earlier report"}
    assert [c.calls for c in others] == [2, 2]

    release.set()
    _wait_for_runners(before)
    sections, errors = registry.collect_all(drops)
    assert slow.calls == 2
    assert slow.most_running == 1
    assert sections == {
        "acme.one": {"value": 1},
        "acme.slow": {"calls": 2},
        "acme.two": {"value": 1},
    }
    assert errors == {}


@pytest.mark.usefixtures("exact_timeout")
def test_two_hanging_collectors_each_cost_their_own_section(
    registry: Registry, drops: DropCounter, release: threading.Event
) -> None:
    registry.register(Blocking("acme.slow_a", release))
    registry.register(Collector("acme.fine"))
    registry.register(Blocking("acme.slow_b", release))
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.fine": {"value": 1}}
    assert set(errors) == {"acme.slow_a", "acme.slow_b"}


@pytest.mark.usefixtures("exact_timeout")
def test_a_result_arriving_just_after_the_deadline_does_not_mark_the_collector_hung(
    registry: Registry, drops: DropCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's result lands right after the caller gave up waiting for it."""
    late = {"armed": True}

    class LateQueue(ExactQueue):
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            if late["armed"]:
                late["armed"] = False
                super().get(timeout=5)  # the result does arrive ...
                raise queue.Empty  # ... but after the caller's deadline
            return super().get(block, timeout)

    monkeypatch.setattr(
        collectors, "queue", SimpleNamespace(SimpleQueue=LateQueue, Empty=queue.Empty)
    )
    before = _collect_threads()
    punctual = Collector("acme.punctual")
    registry.register(punctual)

    sections, errors = registry.collect_all(drops)
    assert errors == {"acme.punctual": f"collect() took longer than {TIMEOUT} s"}
    _wait_for_runners(before)

    # Its call has returned, so the next report calls it again.
    sections, errors = registry.collect_all(drops)
    assert punctual.calls == 2
    assert sections == {"acme.punctual": {"value": 1}}
    assert errors == {}


# Bounded work on what a third party hands over ------------------------------------------


def test_register_quotes_a_huge_name_by_a_short_prefix(registry: Registry) -> None:
    huge = "acme." + "x" * 10_000_000
    with pytest.raises(TypeError) as caught:
        registry.register(Collector(huge))
    message = str(caught.value)
    assert message == (
        f"collector name '{huge[:40]}'... (10000005 characters) is not a dotted lower-case "
        "name like acme.historian"
    )


def test_register_runs_no_method_of_the_object_or_name_it_is_given(registry: Registry) -> None:
    with pytest.raises(TypeError) as caught:
        # Deliberately no collector; its __repr__ and __str__ raise AssertionError.
        registry.register(Hostile())  # type: ignore[arg-type]
    assert str(caught.value).endswith("`collect()`, got a Hostile object")
    # A str whose every method fails: its text is used, none of its methods.
    named = SimpleNamespace(name=HostileStr("acme.x"), collect=lambda: {"n": 1})
    registry.register(named)
    assert type(next(iter(registry.collectors))) is str
    assert registry.collectors == {"acme.x": named}
    with pytest.raises(TypeError, match=r"^collector name 'a+'\.\.\. \(100 characters\) is not"):
        registry.register(SimpleNamespace(name=HostileStr("a" * 100), collect=dict))


def test_an_endless_receivers_costs_only_its_collector(
    registry: Registry, app: FakeApp, drops: DropCounter
) -> None:
    yielded = 0

    def endless() -> Iterator[tuple[Any, Callable[..., None]]]:
        nonlocal yielded
        while True:
            yielded += 1
            if yielded > 100 * collectors.RECEIVERS_MAX:  # endless to the code under test
                raise AssertionError("receivers() was read past its bound")
            yield signals.execution_finished, lambda sender, **kw: None

    before = set(signals.execution_finished.receivers)
    registry.register(Collector("acme.endless", receivers=endless))
    registry.register(Collector("acme.fine"))
    registry.connect(app)  # returns: the host's startup is not held up
    assert yielded == collectors.RECEIVERS_MAX + 1
    assert registry.errors == {"acme.endless": "receivers() failed: ValueError"}
    assert set(signals.execution_finished.receivers) == before, "none of its pairs connected"
    assert registry.collect_all(drops) == (
        {"acme.fine": {"value": 1}},
        {"acme.endless": "receivers() failed: ValueError"},
    )


def test_receivers_max_pairs_are_connected(registry: Registry, app: FakeApp) -> None:
    seen: list[int] = []
    pairs = [
        (signals.execution_finished, lambda sender, n=n, **kw: seen.append(n))
        for n in range(collectors.RECEIVERS_MAX)
    ]
    registry.register(Collector("acme.many", pairs=pairs))
    registry.connect(app)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert sorted(seen) == list(range(collectors.RECEIVERS_MAX))
    assert registry.errors == {}


def test_collector_errors_stay_within_the_schema_limit_whatever_the_exception_is_called(
    registry: Registry, app: FakeApp, drops: DropCounter
) -> None:
    long_error = type("Failure" * 100, (Exception,), {})
    odd_result = type("Result" * 100, (), {})

    class Failing:
        name = "acme.failing"

        def receivers(self) -> list[tuple[Any, Callable[..., None]]]:
            return [(signals.execution_finished, self.on_finished)]

        def on_finished(self, sender: Any, **extra: Any) -> None:
            raise long_error()

        def collect(self) -> dict[str, int]:
            raise long_error()

    registry.register(Failing())
    registry.register(Collector("acme.odd", odd_result()))
    registry.register(SimpleNamespace(name="acme.raises", collect=lambda: 1 / 0))
    registry.connect(app)
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    _, errors = registry.collect_all(drops)
    assert set(errors) == {"acme.failing", "acme.odd", "acme.raises"}
    for message in errors.values():
        assert len(message) <= collectors.ERROR_MAX and message.isprintable(), message
    assert errors["acme.failing"] == f"receiver raised {('Failure' * 5)[:32]}..."


def test_a_huge_self_referencing_section_is_read_in_bounded_work(
    registry: Registry, drops: DropCounter
) -> None:
    huge: dict[str, Any] = {f"k{i}": i for i in range(1_000_000)}
    huge["k0"] = huge  # the first entry holds the whole mapping again
    registry.register(Collector("acme.huge", huge))
    sections, errors = registry.collect_all(drops)
    assert errors == {}
    section = sections["acme.huge"]
    assert len(section) == privacy.KEYS_MAX
    assert section["k0"] == {f"k{i}": i for i in range(1, privacy.KEYS_MAX)}
    assert drops.take() == {
        "collector_key": 2 * (1_000_000 - privacy.KEYS_MAX),
        "collector_value": 1,
    }


# Reading what collect() returned: on the runner, bounded, built-in values only ----------


class Recording(Mapping[str, Any]):
    """A mapping of ``items`` that records the thread each of its methods ran on."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items_ = items
        self.threads: set[str] = set()

    def _seen(self) -> None:
        self.threads.add(threading.current_thread().name)

    def __getitem__(self, key: str) -> Any:
        self._seen()
        return self.items_[key]

    def __iter__(self) -> Iterator[str]:
        self._seen()
        return iter(self.items_)

    def __len__(self) -> int:
        self._seen()
        return len(self.items_)


def test_the_workers_thread_runs_none_of_a_collectors_code(
    registry: Registry, drops: DropCounter
) -> None:
    result = Recording({"series": 3, "by_type": Recording({"influx": 2})})
    threads: set[str] = set()

    def collect() -> Any:
        threads.add(threading.current_thread().name)
        return result

    registry.register(SimpleNamespace(name="acme.live", collect=collect))
    sections, errors = registry.collect_all(drops)
    assert (sections, errors) == ({"acme.live": {"series": 3, "by_type": {"influx": 2}}}, {})
    nested = result.items_["by_type"]
    assert threads == result.threads == nested.threads == {"phonehome-collect"}


def test_a_dict_is_read_through_dicts_own_slots(registry: Registry, drops: DropCounter) -> None:
    """A dict subclass's own ``__iter__``, ``__len__``, ``__getitem__`` are never called,
    nor the methods of str and int subclasses in it: their built-in values are used."""

    class Lying(str):
        def __len__(self) -> int:
            raise AssertionError("its own __len__ was called")

    section = HostileDict({Lying("series"): HostileInt(3), "mode": HostileStr("fast")})
    section["nested"] = HostileDict({"n": HostileInt(1)})
    registry.register(Collector("acme.hostile", section))
    sections, errors = registry.collect_all(drops)
    assert errors == {}
    assert sections == {"acme.hostile": {"series": 3, "mode": "fast", "nested": {"n": 1}}}
    [(key, value)] = [(k, v) for k, v in sections["acme.hostile"].items() if k == "series"]
    assert (type(key), type(value)) == (str, int)


def test_huge_values_are_dropped_without_being_copied(
    registry: Registry, drops: DropCounter
) -> None:
    registry.register(
        Collector(
            "acme.huge",
            {
                "text": "x" * 10_000_000,
                "number": 10**100_000,
                "k" * 10_000_000: 1,
                "fine": 2,
                "deep": {"deeper": {"x": 1}, "ok": 1},
            },
        )
    )
    sections, errors = registry.collect_all(drops)
    assert errors == {}
    assert sections == {"acme.huge": {"fine": 2, "deep": {"ok": 1}}}
    assert drops.take() == {"collector_value": 3, "collector_key": 1}


class Endless(Mapping[str, int]):
    """A mapping without end: its keys never stop, and its length is never found: a
    Python loop that ends only when the test releases it (or shutdown interrupts it)."""

    def __init__(self, name: str, release: threading.Event) -> None:
        self.name = name
        self.release = release

    def __getitem__(self, key: str) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        return (f"k{i}" for i in itertools.count())

    def __len__(self) -> int:
        STUCK.add(self.name)
        while not self.release.is_set():
            pass
        STUCK.discard(self.name)
        return 0


@pytest.mark.usefixtures("exact_timeout")
def test_an_endless_mapping_costs_its_section_and_no_thread_outlives_shutdown(
    registry: Registry, drops: DropCounter, release: threading.Event
) -> None:
    before = _collect_threads()
    endless = Endless("acme.endless", release)
    registry.register(Collector("acme.endless", endless))
    registry.register(Collector("acme.fine"))
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.fine": {"value": 1}}
    assert errors == {"acme.endless": f"collect() took longer than {TIMEOUT} s"}
    [runner] = _collect_threads() - before
    assert runner.is_alive() and not release.is_set(), "still spinning in its __len__"

    registry.disconnect()  # shutdown: the runner is stopped inside the mapping's code
    runner.join(HANG)
    assert not runner.is_alive()
    assert not release.is_set(), "it ended while the mapping's loop would still spin"
    # And nothing starts once shut down.
    assert registry.collect_all(drops) == (
        {},
        {
            "acme.endless": "collect() still running from an earlier report",
            "acme.fine": "phonehome was shutting down",
        },
    )
    assert _collect_threads() - before == set()


class Slow(Mapping[str, int]):
    """Three entries, the second of which takes until the test releases it."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.read: list[str] = []

    def __getitem__(self, key: str) -> int:
        self.read.append(key)
        if key == "b":
            STUCK.add("acme.slow")
            self.release.wait(HANG)
            STUCK.discard("acme.slow")
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(["a", "b", "c"])

    def __len__(self) -> int:
        return 3


@pytest.mark.usefixtures("exact_timeout")
def test_reading_stops_at_the_next_entry_once_the_deadline_passed(
    registry: Registry, drops: DropCounter, release: threading.Event
) -> None:
    before = _collect_threads()
    slow = Slow(release)
    registry.register(Collector("acme.slow", slow))
    _, errors = registry.collect_all(drops)
    assert errors == {"acme.slow": f"collect() took longer than {TIMEOUT} s"}
    release.set()
    _wait_for_runners(before)
    assert slow.read == ["a", "b"], "nothing read after the caller gave up"
    assert "acme.slow" not in registry._hung, "its call returned: called again next time"


# Registration: each module on its own ----------------------------------------------------


class Module:
    """A MaestroHub module: registers ``collectors``, then raises ``then`` if given."""

    def __init__(self, *collectors: object, then: Exception | None = None) -> None:
        self.collectors = collectors
        self.then = then
        self.calls = 0

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Callable[[Any], None]) -> None:
        self.calls += 1
        for collector in self.collectors:
            register(collector)
        if self.then is not None:
            raise self.then


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs.host)
    manager.add_hookspecs(hookspecs.phonehome)
    return manager


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("bad_first", [True, False])
def test_a_raising_registration_costs_its_own_module_only(
    registry: Registry,
    pm: pluggy.PluginManager,
    drops: DropCounter,
    caplog: pytest.LogCaptureFixture,
    bad_first: bool,
) -> None:
    good = Module(Collector("acme.good"))
    bad = Module(Collector("acme.partial"), then=RuntimeError(SECRET))
    for name, module in [("acme_bad", bad), ("acme_good", good)][:: 1 if bad_first else -1]:
        pm.register(module, name=name)
    registry.ask(pm)
    assert (good.calls, bad.calls) == (1, 1)
    assert list(registry.collectors) == ["acme.good"]
    sections, errors = registry.collect_all(drops)
    assert sections == {"acme.good": {"value": 1}}
    assert errors == {"acme.partial": "its module's registration raised RuntimeError"}
    assert SECRET not in repr(errors)
    [line] = _warnings(caplog)
    assert line.startswith(
        "phonehome: module acme_bad (test_collectors) failed to register its collectors: "
        "RuntimeError"
    )
    assert [(module, type(error)) for module, error in registry.refused] == [
        ("acme_bad (test_collectors)", RuntimeError)
    ]


def test_register_raises_in_the_modules_own_code(
    registry: Registry, pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[Exception] = []

    class Careful:
        @hookimpl(optionalhook=True)
        def phonehome_register_collectors(self, register: Callable[[Any], None]) -> None:
            for candidate in (object(), Collector("acme.first"), Collector("acme.first")):
                try:
                    register(candidate)
                except (TypeError, ValueError) as error:
                    raised.append(error)

    pm.register(Careful())
    registry.ask(pm)
    assert [type(e) for e in raised] == [TypeError, ValueError]
    assert list(registry.collectors) == ["acme.first"]
    assert [error for _, error in registry.refused] == raised
    assert [
        line.split(": a collector was refused: ")[1].split()[0] for line in _warnings(caplog)
    ] == [
        "TypeError",
        "ValueError",
    ]


def test_a_name_registered_by_another_module_is_refused(
    registry: Registry, pm: pluggy.PluginManager, drops: DropCounter
) -> None:
    pm.register(Module(Collector("acme.same", {"first": 1})), name="first")
    pm.register(Module(Collector("acme.same", {"second": 2})), name="second")
    registry.ask(pm)
    [(module, error)] = registry.refused
    assert module == "second (test_collectors)" and isinstance(error, ValueError)
    assert registry.collect_all(drops)[0] == {"acme.same": {"first": 1}}


def test_a_late_registration_never_raises_into_the_host(
    registry: Registry,
    pm: pluggy.PluginManager,
    app: FakeApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry.connect(app)
    registry.ask(pm)
    late = Module(object(), Counting())
    pm.register(late, name="acme_late")  # pluggy calls it now, inside the host's call
    assert late.calls == 1
    assert list(registry.collectors) == ["acme.counting"]
    signals.execution_finished.send(app, pipeline_id="p", status="completed", duration_ms=1)
    assert registry.collectors["acme.counting"].collect() == {"finished": 1}
    [line] = _warnings(caplog)
    assert line.startswith("phonehome: module test_collectors: a collector was refused: TypeError")
    assert [type(error) for _, error in registry.refused] == [TypeError]


def test_every_module_is_called_once(registry: Registry, pm: pluggy.PluginManager) -> None:
    """One implementing the hook under another name (``specname``), and one registered
    by another module from within its hook, are called once each, like the rest."""
    inner = Module(Collector("acme.inner"))

    class Outer:
        @hookimpl(optionalhook=True)
        def phonehome_register_collectors(self, register: Callable[[Any], None]) -> None:
            register(Collector("acme.outer"))
            pm.register(inner)

    class Renamed:
        calls = 0

        @hookimpl(optionalhook=True, specname="phonehome_register_collectors")
        def register_mine(self, register: Callable[[Any], None]) -> None:
            Renamed.calls += 1
            register(Collector("acme.renamed"))

    pm.register(Outer())
    pm.register(Renamed())
    registry.ask(pm)
    assert (inner.calls, Renamed.calls) == (1, 1)
    assert sorted(registry.collectors) == ["acme.inner", "acme.outer", "acme.renamed"]


def test_a_raising_registration_leaves_the_good_modules_section_in_the_report(
    tmp_path: Path,
) -> None:
    """Done when: a registration that raises, in either order against a good module,
    leaves the good module's section in the report (the plugin's, end to end)."""
    bad = Module(Collector("acme.partial"), then=RuntimeError("the historian is down"))
    for order in ([bad, historian], [historian, bad]):
        with Harness(tmp_path / f"data-{len(order)}-{order[0] is bad}", plugins=order) as kit:
            with pytest.raises(RuntimeError, match="the historian is down"):
                kit.start()  # the kit raises it in the author's test; the host runs on
            kit.tick()
            [report] = kit.reports
            assert kit.section("acme.historian")["series"] == 0
            assert report["diagnostics"]["collector_errors"] == {
                "acme.partial": "its module's registration raised RuntimeError"
            }


class _Counting:
    """A collector that counts its calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def collect(self) -> dict[str, int]:
        self.calls += 1
        return {"calls": self.calls}


def test_a_collector_switched_off_is_not_called(registry: Registry, drops: DropCounter) -> None:
    off, on = _Counting("acme.off"), _Counting("acme.on")
    registry.register(off)
    registry.register(on)
    sections, errors = registry.collect_all(drops, lambda name: name != "acme.off")
    assert sections == {"acme.on": {"calls": 1}} and errors == {}
    assert off.calls == 0  # its code does not run for a section that is not sent
