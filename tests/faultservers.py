"""The loopback fault servers, TLS for them, and a host that drives the real plugin.

- The servers (:class:`FaultServer` with its behaviours, :class:`Proxy`) are the
  project's shipped fault-injecting ones, :mod:`phonehome_plugin.testing.faults`,
  re-exported here under the names the tests use.
- :func:`make_tls`: a trustme CA and a server certificate for 127.0.0.1/localhost.
- :class:`Host`: the simulated host (:class:`~phonehome_plugin.testing.simhost.SimHost`)
  loading the installed entry points, ticked at given times, timing every hook call.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trustme

import hookspecs.phonehome
from hookspecs import hookimpl
from phonehome_plugin import plugin
from phonehome_plugin.config import switch
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.runtime import Runtime
from phonehome_plugin.testing.faults import (
    IO_TIMEOUT,
    Behaviour,
    CloseAfterHeaders,
    Endless,
    FaultServer,
    Hang,
    Linger,
    Proxy,
    Reply,
    Reset,
    Seen,
    Silent,
    Trickle,
    read_body,
    read_head,
)
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimApp, SimHost, SimState

__all__ = [
    "IO_TIMEOUT",
    "START",
    "Behaviour",
    "CloseAfterHeaders",
    "Endless",
    "FaultServer",
    "Hang",
    "Host",
    "Linger",
    "Proxy",
    "Reply",
    "Reset",
    "Seen",
    "Silent",
    "Timings",
    "Tls",
    "Trickle",
    "make_tls",
    "read_body",
    "read_head",
    "running",
]


# TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """A server context whose certificate (127.0.0.1, localhost) is signed by ``ca_file``."""

    server: ssl.SSLContext
    ca_file: Path


def make_tls(directory: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server)
    ca_file = directory / "trustme-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(server, ca_file)


# A host -------------------------------------------------------------------------------

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@dataclass
class Timings:
    """CPU time of the host's thread in every hook call the host made, in seconds.

    CPU time, not wall time: on a shared machine wall-clock maxima measure the
    scheduler, not the hook. What a hook costs the host's thread is its CPU; a
    hook that blocks instead (on the network, on a lock held for long) shows in
    the tests of that fault by what does or does not happen, never by a clock.
    """

    startup: list[float] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    shutdown: list[float] = field(default_factory=list)

    def slow_ticks(self, budget: float) -> list[float]:
        """Ticks that used ``budget`` seconds of CPU or more."""
        return [t for t in self.ticks if t >= budget]

    def observe(self, hook: str, wall: float, cpu: float) -> None:
        """A :class:`SimHost` ``hook_observer``: keeps the CPU time of each call."""
        kept = {"on_startup": self.startup, "on_tick": self.ticks, "on_shutdown": self.shutdown}
        if hook in kept:
            kept[hook].append(cpu)


class _RuntimeWithPolicy:
    """Builds the runtime with ``policy`` and registers it, first in ``on_startup``,
    as :func:`phonehome_plugin.plugin._start` would build it (which then finds it)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    @hookimpl(tryfirst=True)
    def on_startup(self, app: Any) -> None:
        decision = switch.resolve(app.config)
        assert decision.on and decision.settings is not None, decision.reason
        pm = app.plugin_manager
        pm.add_hookspecs(hookspecs.phonehome)
        runtime = Runtime(app, decision.settings, policy=self.policy)
        pm.register(runtime, name=plugin.RUNTIME_NAME)
        runtime.start()


class Host:
    """A MaestroHub host start (:class:`SimHost`, plugins from the installed entry points)
    ticked at given times, timing every hook call in CPU seconds (:class:`Timings`).

    :param section: ``modules.phonehome`` of config.yaml.
    :param policy: when given, the runtime is built with it and registered before the
        plugin's ``on_startup`` runs, so that in-series waits stay short in tests.
    :param users: the users module's inventory, synced at start.
    """

    def __init__(
        self,
        data_dir: Path,
        section: Mapping[str, Any],
        started_at: datetime = START,
        policy: RetryPolicy | None = None,
        users: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        state = SimState()
        state.modules["users"] = {str(user["id"]): dict(user) for user in users}
        self.timings = Timings()
        self.sim = SimHost(
            {"modules": {"phonehome": dict(section)}},
            data_dir,
            clock=SimClock(started_at),
            started_at=started_at,
            extra_plugins=() if policy is None else (_RuntimeWithPolicy(policy),),
            state=state,
            hook_observer=self.timings.observe,
        )
        self.pm = self.sim.plugin_manager

    @property
    def app(self) -> SimApp:
        return self.sim.app

    @property
    def now(self) -> datetime:
        return self.sim.clock.now()

    @property
    def runtime(self) -> Runtime:
        runtime = self.pm.get_plugin(plugin.RUNTIME_NAME)
        assert isinstance(runtime, Runtime), "telemetry did not start"
        return runtime

    def start(self) -> None:
        self.sim.start()

    def tick(self, now: datetime, idle: float = 10.0) -> None:
        """One ``on_tick`` at ``now`` (timed), then wait until the worker handled it."""
        self.sim.tick_at(now)
        if idle:
            assert self.runtime.worker.wait_idle(idle), "worker still busy"

    def shutdown(self) -> None:
        self.sim.shutdown()


@contextlib.contextmanager
def running(host: Host) -> Iterator[Host]:
    host.start()
    try:
        yield host
    finally:
        host.shutdown()
