"""Shared parts of the end-to-end tests: a recording endpoint (the project's fault
server), a third-party distribution installed as real metadata, and helpers to drive a
simulated host."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict

from phonehome_plugin.reports import schedule
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.testing.faults import FaultServer, Reply, Seen
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
NEXT_SLOT = 3600 + schedule.MAX_JITTER
"""A tick this far ahead always passes the next periodic slot's start and jitter."""
INSTANCE_ID = "00000000-0000-4000-8000-000000000001"
"""An installation id for tests that count periodic reports over a stretch of host time.
The id sets where in each hour the slots start and how long each report waits after its
slot's start (:mod:`phonehome_plugin.reports.schedule`), so with a random id (a new one
per run) how many reports fall in a window depends on the run. This one's slots start
44 minutes into the hour, far from :data:`START` and from any 10-minute tick."""
GEOIP = {
    "status": "success",
    "query": "203.0.113.7",
    "country": "Germany",
    "regionName": "Bavaria",
    "city": "Munich",
    "isp": "Example Carrier",
}


class Endpoint:
    """A loopback telemetry endpoint and GeoIP service (the project's fault server):
    every report POST answered with ``status``, recorded decoded in arrival order."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[Mapping[str, str]] = []
        """Each report's headers, names in any case."""
        self.status = 202
        self.lock = threading.Lock()
        self.server = FaultServer(then=self._answer, geoip=GEOIP, on_request=self._record)

    def _answer(self) -> Reply:
        return Reply(self.status)

    def _record(self, seen: Seen) -> None:
        if seen.method == "POST":
            with self.lock:
                self.bodies.append(seen.body)
                self.headers.append(CaseInsensitiveDict(seen.headers))

    @property
    def reports(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for body in self.bodies]

    def by_trigger(self, trigger: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["trigger"] == trigger]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def geoip_url(self) -> str:
        return self.server.geoip_url


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    box = Endpoint()
    with box.server:
        yield box


COLLECTOR_MODULE = '''
from hookspecs import hookimpl, signals


class SaveCounter:
    """Counts connection saves by type, the way a real module's collector would."""

    name = "acme.counter"

    def __init__(self):
        self.saves = {}

    def receivers(self):
        return [(signals.connection_saved, self.on_saved)]

    def on_saved(self, sender, type=None, **extra):
        self.saves[type] = self.saves.get(type, 0) + 1

    def collect(self):
        return {"saves": sum(self.saves.values()), "by_type": dict(self.saves)}


class Broken:
    name = "acme.broken"

    def collect(self):
        raise RuntimeError("the historian is down")


@hookimpl(optionalhook=True)
def phonehome_register_collectors(register):
    register(SaveCounter())
    register(Broken())
'''


@pytest.fixture
def acme_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A third-party distribution, installed as real metadata on ``sys.path``.

    The host finds it exactly as it finds any installed MaestroHub module: through
    its ``entry_points.txt`` in the ``maestrohub`` group.
    """
    site = tmp_path / "site"
    info = site / "acme_counter-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-counter\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[maestrohub]\nacme_counter = acme_counter_plugin\n")
    (site / "acme_counter_plugin.py").write_text(textwrap.dedent(COLLECTOR_MODULE))
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("acme_counter_plugin", None)


def phonehome_config(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    return {
        "modules": {
            "phonehome": {"endpoint": endpoint.url, "geoip_url": endpoint.geoip_url, **extra}
        }
    }


def pin_instance(data_dir: Path, instance_id: str = INSTANCE_ID) -> None:
    """Make ``data_dir`` the state of an installation known as ``instance_id``."""
    store = open_store(data_dir)
    try:
        store.set("instance_id", instance_id)
    finally:
        store.close()


def make_host(config: dict[str, Any], data_dir: Path) -> SimHost:
    """A host on a clock starting at :data:`START`."""
    return SimHost(config, data_dir, clock=SimClock(START))


@pytest.fixture(autouse=True)
def _shut_down_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every host a test started is shut down after it, so that a failed assertion
    does not leave a running plugin (threads, receivers) behind for the next test."""
    started: list[SimHost] = []
    real_start = SimHost.start

    def start(self: SimHost, **kwargs: Any) -> Any:
        started.append(self)
        return real_start(self, **kwargs)

    monkeypatch.setattr(SimHost, "start", start)
    yield
    for host in reversed(started):
        host.shutdown()


def settle(host: SimHost) -> None:
    """Wait (bounded) until the plugin's worker has handled everything handed to it."""
    runtime = host.app.plugin_manager.get_plugin("phonehome-runtime")
    assert runtime is not None, "phonehome did not start"
    assert runtime.worker.wait_idle(20), "the worker did not settle within 20 s"


def tick(host: SimHost, seconds: float | None = None) -> None:
    host.tick(seconds)
    settle(host)
