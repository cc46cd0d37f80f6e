"""A minimal MaestroHub host, driven the way the host contract says, and its inventory.

Only the contract is used: a real ``pluggy.PluginManager("maestrohub")`` with
``hookspecs.host``, the plugin loaded from its entry point, ``on_startup`` called
historic, every module's ``inventory-synced``, then ``on_tick`` on the host's
clock. The plugin's runtime is reached as ``pm.get_plugin("phonehome-runtime")``.
This module imports nothing from ``phonehome_plugin`` itself.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy

import hookspecs.host
from hookspecs import hookimpl, signals

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


@dataclass(eq=False)
class App:
    """The host object of section 3 of the contract (hashable by identity, weakly referable)."""

    version: str
    edition: str
    config: Mapping[str, Any]
    config_path: Path | None
    data_dir: Path
    started_at: datetime
    plugin_manager: pluggy.PluginManager


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


class CollectorsPlugin:
    """A third-party MaestroHub module registering ``count`` collectors (optional hook)."""

    def __init__(self, count: int) -> None:
        self.collectors = [VendorCollector(i) for i in range(count)]

    @hookimpl(optionalhook=True)
    def phonehome_register_collectors(self, register: Callable[[Any], None]) -> None:
        for collector in self.collectors:
            register(collector)


# The host -------------------------------------------------------------------------------


@dataclass
class Host:
    """One host start: plugin manager, app, data directory, and the host's clock ``now``."""

    config: Mapping[str, Any]
    edition: str = "enterprise"
    load_plugin: bool = True
    plugins: list[object] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __post_init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="phonehome-bench-"))
        self.pm = pluggy.PluginManager("maestrohub")
        self.pm.add_hookspecs(hookspecs.host)
        for plugin in self.plugins:
            self.pm.register(plugin)
        if self.load_plugin:
            self.pm.load_setuptools_entrypoints("maestrohub")
        self.app = App(
            version="2.3.0",
            edition=self.edition,
            config=self.config,
            config_path=None,
            data_dir=self.data_dir,
            started_at=self.started_at,
            plugin_manager=self.pm,
        )
        self.now = self.started_at
        self._shut = False

    @property
    def runtime(self) -> Any:
        """The plugin's runtime, or None when telemetry is off (or not started)."""
        return self.pm.get_plugin(RUNTIME)

    def start(self) -> None:
        self.pm.hook.on_startup.call_historic(kwargs={"app": self.app})

    def sync(self, inventory: Inventory) -> None:
        """What every module emits after ``on_startup``: its full state, UNS and license."""
        for module, items in inventory.modules.items():
            signals.inventory_synced.send(self.app, module=module, items=items)
        signals.uns_state_changed.send(self.app, **inventory.uns)
        signals.license_changed.send(self.app, **inventory.license)

    def tick(self, now: datetime | None = None) -> None:
        if now is not None:
            self.now = now
        self.pm.hook.on_tick(app=self.app, now=self.now)

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
        if not self._shut:
            self._shut = True
            self.pm.hook.on_shutdown(app=self.app)

    def close(self) -> None:
        self.shutdown()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def host_with(endpoint: str, inventory: Inventory | None = None, **settings: Any) -> Host:
    """A host running the plugin (with ``inventory.collectors`` third-party collectors)."""
    plugins: list[object] = []
    if inventory is not None and inventory.collectors:
        plugins.append(CollectorsPlugin(inventory.collectors))
    return Host(phonehome_config(endpoint, **settings), plugins=plugins)
