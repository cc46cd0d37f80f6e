"""Shared parts of the operator-control tests (switches and modes, the ``phonehome``
command, the read-only store, the privacy pipeline): a loopback server (the project's
fault server) that records what reached it and counts the connections it accepts,
readers of every byte in a data dir and of the state as the command reads it, and a
host driven through a short life."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import GEOIP, START, settle

from phonehome_plugin.config.settings import OutboxLimits
from phonehome_plugin.state.backends import open_store
from phonehome_plugin.state.outbox import Outbox
from phonehome_plugin.state.store import Store
from phonehome_plugin.testing.faults import FaultServer, Reply, Seen
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost


@dataclass
class Traffic:
    """What reached the counting server, in order; ``events`` is shared with log watchers.

    ``status`` (and ``Retry-After``, for a status of 300 or more) answers every report
    POST from the next one on; ``geoip`` every GeoIP lookup. ``headers`` have
    lower-case names.
    """

    server: FaultServer = field(repr=False)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    status: int = 202
    retry_after: str | None = None
    geoip: dict[str, Any] = field(default_factory=lambda: dict(GEOIP))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accepted(self) -> int:
        """Connections accepted, whether or not a request followed on them."""
        return self.server.connections

    @property
    def geoip_requests(self) -> int:
        return self.server.geoip_requests

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def record(self, seen: Seen) -> None:
        """The server's ``on_request``: every request in the event list, in order, and
        every report's body (decoded) and headers."""
        self.note(f"{seen.method} {seen.target}")
        if seen.method != "GET":
            with self.lock:
                self.bodies.append(seen.body)
                self.headers.append(dict(seen.headers))

    def answer(self) -> Reply:
        """The server's ``then``: what the test set, at the time of the request."""
        with self.lock:
            status, retry_after = self.status, self.retry_after
        late = {"Retry-After": retry_after} if retry_after is not None and status >= 300 else {}
        return Reply(status, late)


class CountingServer(FaultServer):
    """A telemetry endpoint and GeoIP service on 127.0.0.1 (the project's fault server)
    that answers as ``traffic`` says and records what reached it there."""

    def __init__(self) -> None:
        self.traffic = Traffic(self)
        super().__init__(
            then=self.traffic.answer,
            geoip=lambda: self.traffic.geoip,
            on_request=self.traffic.record,
        )


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    with CountingServer() as server:
        yield server


def phonehome_section(server: CountingServer, **extra: Any) -> dict[str, Any]:
    return {"endpoint": server.url, "geoip_url": server.geoip_url, **extra}


def stored_bytes(data_dir: Path) -> dict[str, bytes]:
    """Every file under ``data_dir`` (SQLite database, WAL, shared memory, anything else)."""
    if not data_dir.exists():
        return {}
    return {
        str(path.relative_to(data_dir)): path.read_bytes()
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
    }


def listing(directory: Path) -> list[str] | None:
    """The names in ``directory``, sorted; None when it does not exist."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else None


@contextmanager
def read_only(data_dir: Path) -> Iterator[Store]:
    """The state under ``data_dir``, opened read-only as the ``phonehome`` command opens it."""
    store = open_store(data_dir, read_only=True)
    try:
        yield store
    finally:
        store.close()


def pending_bodies(data_dir: Path) -> list[bytes]:
    """The bodies in the outbox under ``data_dir``, oldest first, read read-only."""
    with read_only(data_dir) as store:
        return [entry.body for entry in Outbox(store, OutboxLimits()).pending()]


def phonehome_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("phonehome")}


def make(
    config: Mapping[str, Any], data_dir: Path, at: datetime = START, **kwargs: Any
) -> SimHost:
    """A host whose clock starts ``at``, discovering plugins from installed metadata.

    A restart needs a later ``at``: a start is known by its ``started_at``.
    """
    return SimHost(dict(config), data_dir, clock=SimClock(at), **kwargs)


@contextmanager
def running(host: SimHost) -> Iterator[SimHost]:
    """``host`` started, and shut down however the block ends."""
    host.start()
    try:
        yield host
    finally:
        host.shutdown()


def short_life(host: SimHost) -> None:
    """Startup report, the first user's report, and the periodic reports of two hours."""
    host.save_connection("mqtt")
    host.save_pipeline(["trigger.manual", "action.http"])
    host.tick()
    settle(host)
    host.create_user("admin@example.com")
    settle(host)
    host.run_for(2 * 3600, step=600)
    settle(host)


def config_of(section: Mapping[str, Any]) -> dict[str, Any]:
    return {"modules": {"phonehome": dict(section)}}


@dataclass(frozen=True)
class Run:
    """A finished ``python -m phonehome_plugin`` process."""

    code: int
    stdout: bytes
    stderr: str


def run_cli(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> Run:
    """Run the command as operators do, in a real process; never more than 30 s."""
    done = subprocess.run(
        [sys.executable, "-m", "phonehome_plugin", *args],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


@dataclass(frozen=True)
class Installation:
    """A data dir after two starts: one report sent, then two kept in offline mode.

    ``config`` is the config.yaml of the second start (offline mode).
    """

    root: Path
    data: Path
    config: Path
    sent: list[bytes]


@pytest.fixture
def installation(counting_server: CountingServer, tmp_path: Path) -> Installation:
    data = tmp_path / "data"
    with running(make(config_of(phonehome_section(counting_server)), data)) as host:
        host.tick()
        settle(host)
    offline = config_of(phonehome_section(counting_server, mode="offline"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(offline), "utf-8")
    later = START + timedelta(seconds=1)  # a new start, in the same periodic slot
    with running(make(offline, data, at=later, config_path=config)) as host:
        host.tick()
        settle(host)
        host.create_user("admin@example.com")
        settle(host)
    return Installation(tmp_path, data, config, list(counting_server.traffic.bodies))
