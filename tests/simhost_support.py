"""Shared parts of the simulated host's tests: a recorder of every hook and signal in
one ordered log, and hosts on the test clock that are shut down after the test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import START

from hookspecs import hookimpl, signals
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

OFF = {"modules": {"phonehome": {"enabled": False}}}
"""A config with phonehome off, so only the simulator's own behaviour is seen."""


@dataclass
class Event:
    kind: str  # "hook" or "signal"
    name: str
    kwargs: dict[str, Any]
    sender: object = None
    thread: int = 0


@dataclass
class Recorder:
    """A MaestroHub plugin and a receiver per signal, writing one ordered log."""

    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, name: str, kwargs: dict[str, Any], sender: object = None) -> None:
        with self.lock:
            self.events.append(Event(kind, name, kwargs, sender, threading.get_ident()))

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.add("hook", "on_startup", {"app": app})

    @hookimpl
    def on_tick(self, app: Any, now: datetime) -> None:
        self.add("hook", "on_tick", {"app": app, "now": now})

    @hookimpl
    def on_user_created(self, app: Any, user: Mapping[str, Any]) -> None:
        self.add("hook", "on_user_created", {"app": app, "user": user})

    @hookimpl
    def on_shutdown(self, app: Any) -> None:
        self.add("hook", "on_shutdown", {"app": app})

    def receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: object, **kwargs: Any) -> None:
            self.add("signal", name, kwargs, sender)

        return receive

    def names(self) -> list[str]:
        """``on_tick``, ``inventory-synced:users``, ``connection-saved``..., in order."""
        with self.lock:
            events = list(self.events)
        return [
            f"{e.name}:{e.kwargs['module']}" if e.name == "inventory-synced" else e.name
            for e in events
        ]

    def of(self, name: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.name == name]

    def synced(self) -> dict[str, list[dict[str, Any]]]:
        return {e.kwargs["module"]: e.kwargs["items"] for e in self.of("inventory-synced")}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A recorder whose receivers are connected to every signal, for any sender."""
    rec = Recorder()
    pairs = [(signal, rec.receiver(signal.name)) for signal in signals.ALL]
    for signal, receive in pairs:
        signal.connect(receive, weak=False)
    yield rec
    for signal, receive in pairs:
        signal.disconnect(receive)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Callable[..., SimHost]]:
    """Make hosts on the test clock, without entry points unless asked; all shut down."""
    made: list[SimHost] = []

    def make(*plugins: object, **kwargs: Any) -> SimHost:
        kwargs.setdefault("clock", SimClock(START))
        kwargs.setdefault("load_entrypoints", False)
        host = SimHost(OFF, tmp_path / "data", extra_plugins=plugins, **kwargs)
        made.append(host)
        return host

    yield make
    for host in made:
        host.shutdown()
