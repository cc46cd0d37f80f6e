"""A minimal MaestroHub host, driven the way the host contract says, and its inventory.

Only the contract is used: a real ``pluggy.PluginManager("maestrohub")`` with
``hookspecs.host``, the plugin loaded from its entry point, ``on_startup`` called
historic, every module's ``inventory-synced``, then ``on_tick`` on the host's
clock. The plugin's runtime is reached as ``pm.get_plugin("phonehome-runtime")``.
The host is the project's simulated one (:mod:`phonehome_plugin.testing.simhost`);
the bench imports nothing else of ``phonehome_plugin``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hookspecs import PROJECT_NAME, hookimpl, signals
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimApp, SimHost

RUNTIME = "phonehome-runtime"
STATUSES = ("completed", "failed", "completed_with_errors", "cancelled")
CONNECTION_TYPES = (
    "mqtt",
    "opcua",
    "modbus",
    "s7",
    "opcda",
    "postgresql",
    "mssql",
    "rest",
    "pubsub",
)
NODE_TYPES = (
    "trigger.manual",
    "trigger.webhook",
    "trigger.schedule",
    "trigger.uns",
    "system.uns.publish",
    "system.uns.subscribe",
    "action.http",
    "action.sql",
    "action.mqtt.publish",
    "action.opcua.write",
    "transform.javascript",
    "transform.mapping",
    "transform.filter",
    "logic.switch",
    "logic.merge",
    "notify.email",
    "notify.slack",
    "ai.predict",
)


def phonehome_config(endpoint: str, **extra: Any) -> dict[str, Any]:
    """A config.yaml mapping with the plugin's section (geoip lookup off)."""
    return {"modules": {"phonehome": {"endpoint": endpoint, "geoip_url": "", **extra}}}


# Inventory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How big an installation is, in the units the signals carry."""

    name: str
    users: int
    connections: int
    pipelines: int
    topics: int
    clients: int
    organizations: int
    data_models: int
    collectors: int
    nodes: tuple[int, int] = (3, 8)


TYPICAL = Scale(
    "typical factory",
    users=12,
    connections=10,
    pipelines=30,
    topics=2_000,
    clients=6,
    organizations=2,
    data_models=12,
    collectors=0,
)
LARGE = Scale(
    "large Enterprise",
    users=400,
    connections=5_000,
    pipelines=10_000,
    topics=100_000,
    clients=300,
    organizations=40,
    data_models=1_000,
    collectors=50,
)

SIZES = (100, 1_000, 10_000, 100_000)
"""Installation sizes of the growth table, in pipelines."""


def scale_of(pipelines: int) -> Scale:
    """An installation of ``pipelines`` pipelines, the rest in proportion: at 10,000 it is
    :data:`LARGE` (5,000 connections, 100,000 topics, 50 collectors...), at 100,000 it
    has 500 third-party collectors."""
    return Scale(
        f"{pipelines:,} pipelines",
        users=max(1, pipelines // 25),
        connections=max(1, pipelines // 2),
        pipelines=pipelines,
        topics=pipelines * 10,
        clients=max(1, pipelines * 3 // 100),
        organizations=max(1, pipelines // 250),
        data_models=max(1, pipelines // 10),
        collectors=max(1, pipelines // 200),
    )


@dataclass
class Inventory:
    """What the host's modules hold: ``inventory-synced`` items per module, UNS and license."""

    modules: dict[str, list[dict[str, Any]]]
    uns: dict[str, Any]
    license: dict[str, Any]
    collectors: int = 0

    @property
    def node_count(self) -> int:
        return sum(len(p["node_types"]) for p in self.modules["pipelines"])


def make_inventory(scale: Scale, started_at: datetime, seed: int = 7) -> Inventory:
    """A deterministic inventory of ``scale``. Items carry extra fields, as the host's do."""
    rng = random.Random(seed)
    users = [
        {
            "id": f"u{i}",
            "email": f"user{i}@example.com",
            "created_at": started_at - timedelta(days=400 - i % 400, seconds=i),
            "password_hash": "pbkdf2$260000$x",
            "display_name": f"User {i}",
        }
        for i in range(scale.users)
    ]
    connections = [
        {
            "id": f"c{i}",
            "type": rng.choice(CONNECTION_TYPES),
            "host": f"10.0.{i // 250}.{i % 250}",
            "password": "hunter2",
            "options": {"keepalive": 30},
        }
        for i in range(scale.connections)
    ]
    pipelines = [
        {
            "id": f"p{i}",
            "enabled": rng.random() < 0.8,
            "node_types": [rng.choice(NODE_TYPES) for _ in range(rng.randint(*scale.nodes))],
            "name": f"Pipeline {i}",
            "definition": {"nodes": [], "edges": []},
        }
        for i in range(scale.pipelines)
    ]
    return Inventory(
        modules={
            "users": users,
            "connections": connections,
            "pipelines": pipelines,
            "organizations": [
                {"id": f"o{i}", "name": f"Org {i}"} for i in range(scale.organizations)
            ],
            "data_models": [
                {"id": f"m{i}", "name": f"Model {i}"} for i in range(scale.data_models)
            ],
        },
        uns={
            "topic_count": scale.topics,
            "client_count": scale.clients,
            "mqtt_mode": "embedded",
            "storage_mode": "timescale",
        },
        license={"license_id": "lic-bench-0001", "status": "active"},
        collectors=scale.collectors,
    )


# Third-party collectors -------------------------------------------------------------


class VendorCollector:
    """A third-party collector as the contract describes it: ``name`` and ``collect()``."""

    def __init__(self, index: int) -> None:
        self.name = f"vendor{index:02d}.module"
        self._index = index

    def collect(self) -> dict[str, Any]:
        i = self._index
        return {
            "items": 100 + i,
            "enabled": i % 2 == 0,
            "mode": "edge",
            "backends": {"influx": i % 3, "timescale": 1, "pebble": 2},
        }


class CountingCollector:
    """A third-party collector with a receiver: it counts executions by status."""

    name = "acme.executions"

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}

    def receivers(self) -> list[tuple[Any, Callable[..., None]]]:
        return [(signals.execution_finished, self.on_execution)]

    def on_execution(self, sender: Any, status: Any = None, **extra: Any) -> None:
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1

    def collect(self) -> dict[str, Any]:
        return {"seen": sum(self.counts.values())}


class CollectorsPlugin:
    """A third-party MaestroHub module registering ``count`` collectors (optional hook)."""

    def __init__(self, count: int, extra: Sequence[object] = ()) -> None:
        self.collectors: list[Any] = [VendorCollector(i) for i in range(count)]
        self.collectors.extend(extra)

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Callable[[Any], None]) -> None:
        for collector in self.collectors:
            register(collector)


# The host -------------------------------------------------------------------------------


class Host:
    """One host start: the simulated host (``SimHost``) in a temporary data directory,
    ticked at the time ``now`` says, its steps taken one at a time (``start()`` calls
    ``on_startup`` only; ``sync()`` sends an inventory), so each is measured alone.

    ``plugins`` are registered before the entry points are loaded (when
    ``load_plugin``); ``pm`` exists from construction, ``app`` from ``start()`` on.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        edition: str = "enterprise",
        load_plugin: bool = True,
        plugins: Sequence[object] = (),
        started_at: datetime | None = None,
    ) -> None:
        self.started_at = started_at or datetime.now(UTC).replace(microsecond=0)
        self.data_dir = Path(tempfile.mkdtemp(prefix="phonehome-bench-"))
        self.sim = SimHost(
            config,
            self.data_dir,
            clock=SimClock(self.started_at),
            edition=edition,
            load_entrypoints=False,
            started_at=self.started_at,
        )
        self.pm = self.sim.plugin_manager
        for plugin in plugins:
            self.pm.register(plugin)
        if load_plugin:
            self.pm.load_setuptools_entrypoints(PROJECT_NAME)

    @property
    def app(self) -> SimApp:
        return self.sim.app

    @property
    def now(self) -> datetime:
        """The host's clock; setting it moves the clock on (never back)."""
        return self.sim.clock.now()

    @now.setter
    def now(self, when: datetime) -> None:
        self.sim.clock.advance_to(when)

    @property
    def runtime(self) -> Any:
        """The plugin's runtime, or None when telemetry is off (or not started)."""
        return self.pm.get_plugin(RUNTIME)

    def start(self) -> None:
        """``on_startup`` (historic), nothing else: ``sync()`` is measured on its own."""
        self.sim.start(sync=False)

    def sync(self, inventory: Inventory) -> None:
        """What every module emits after ``on_startup``: its full state, UNS and license."""
        state = self.sim.state
        for module, items in inventory.modules.items():
            state.modules[module] = {str(item["id"]): item for item in items}
        state.uns.update(inventory.uns)
        state.license.update(inventory.license)
        self.sim.sync()

    def tick(self, now: datetime | None = None) -> None:
        if now is not None:
            self.now = now
        self.sim.tick()

    def idle(self, timeout: float = 30.0) -> bool:
        """Wait until the worker has handled every note it was given.

        The worker opens its store on its first note (the first tick), so before a
        tick there is nothing to wait for.
        """
        runtime = self.runtime
        if runtime is None:
            return True
        return bool(runtime.worker.wait_idle(timeout))

    def boot(self, inventory: Inventory | None = None, timeout: float = 30.0) -> None:
        """The contract's order: startup, inventory sync, first tick; then wait for the worker."""
        self.start()
        if inventory is not None:
            self.sync(inventory)
        self.tick()
        self.idle(timeout)

    def shutdown(self) -> None:
        self.sim.shutdown()

    def close(self) -> None:
        self.shutdown()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def host_with(endpoint: str, inventory: Inventory | None = None, **settings: Any) -> Host:
    """A host running the plugin (with ``inventory.collectors`` third-party collectors)."""
    plugins: list[object] = []
    if inventory is not None and inventory.collectors:
        plugins.append(CollectorsPlugin(inventory.collectors))
    return Host(phonehome_config(endpoint, **settings), plugins=plugins)
