"""Shared parts of the operator-control tests (switches and modes, the ``phonehome``
command, the read-only store, the privacy pipeline): a loopback server (the project's
fault server) that records what reached it and counts the connections it accepts,
readers of every byte in a data dir and of the state as the command reads it, a host
driven through a short life, and a host start in a process of its own
(:class:`HostProcess`), with an environment of its own, as a service runs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
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


# A host start in a process of its own ---------------------------------------------------

FORK = multiprocessing.get_context("fork")
REPLY_WAIT = 60.0


def _serve_host(
    config: Mapping[str, Any],
    data_dir: Path,
    at: datetime,
    config_path: Path | None,
    environ: Mapping[str, str | None],
    commands: Connection,
) -> None:
    """The child: its own environment (``None`` unsets a name), one host start, then
    whatever the parent says, each reply sent once the plugin's worker is idle."""
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    host = SimHost(dict(config), data_dir, clock=SimClock(at), config_path=config_path)
    host.start()

    def idle() -> bool:
        runtime: Any = host.app.plugin_manager.get_plugin("phonehome-runtime")
        return runtime is None or bool(runtime.worker.wait_idle(30))

    while True:
        command, argument = commands.recv()
        if command == "stop":
            host.shutdown()
            commands.send(True)
            return
        if command == "tick":
            host.tick(argument)
        elif command == "tick_at":
            host.tick_at(argument)
        elif command == "run_for":  # tick by tick, each handled before the next
            seconds, step = argument
            for _ in range(round(seconds / step)):
                host.tick(step)
                if not idle():
                    break
        elif command == "call":
            name, args = argument
            getattr(host, name)(*args)
        commands.send((idle(), host.clock.now()))


class HostProcess:
    """One start of a simulated MaestroHub with the real plugin, in a forked process
    with ``environ`` applied to its own environment (the test's stays as it is).

    Every call returns once the plugin's worker in the child has handled it; the
    child's clock starts at ``at`` and moves only as told.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        data_dir: Path,
        at: datetime = START,
        *,
        config_path: Path | None = None,
        environ: Mapping[str, str | None] | None = None,
    ) -> None:
        self._ours, theirs = FORK.Pipe()
        self.process = FORK.Process(
            target=_serve_host,
            args=(dict(config), data_dir, at, config_path, dict(environ or {}), theirs),
            daemon=True,
        )
        self.process.start()
        self.now = at

    def _ask(self, command: str, argument: Any = None) -> Any:
        self._ours.send((command, argument))
        assert self._ours.poll(REPLY_WAIT), "the host process hung or died"
        return self._ours.recv()

    def _do(self, command: str, argument: Any = None) -> None:
        settled, self.now = self._ask(command, argument)
        assert settled, "the plugin's worker in the host process did not settle"

    def tick(self, seconds: float | None = None) -> None:
        self._do("tick", seconds)

    def tick_at(self, when: datetime) -> None:
        self._do("tick_at", when)

    def run_for(self, seconds: float, step: float) -> None:
        """Tick every ``step`` seconds for ``seconds``, each tick handled before the next
        (a host ticking faster than reports are built may have ticks dropped)."""
        self._do("run_for", (seconds, step))

    def call(self, name: str, *args: Any) -> None:
        """``SimHost.<name>(*args)`` in the child (``create_user``, ``save_connection``...)."""
        self._do("call", (name, args))

    def stop(self) -> None:
        """``on_shutdown``, then the process ends."""
        if self.process.is_alive():
            self._ask("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def __enter__(self) -> HostProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


SWITCH_NAMES = ("DO_NOT_TRACK", "MAESTROHUB_PHONEHOME_ENABLED", "MAESTROHUB_CONFIG")


@pytest.fixture
def shell_env() -> dict[str, str]:
    """An operator's shell for a real ``phonehome`` process: none of the switches, no
    config path from the environment (each test adds what it means to)."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCH_NAMES}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def write_config(path: Path, section: Mapping[str, Any]) -> Path:
    """``section`` as ``modules.phonehome`` of a config.yaml at ``path``."""
    path.write_text(yaml.safe_dump(config_of(section)), "utf-8")
    return path


def blocks(text: str) -> dict[str, dict[str, str]]:
    """``phonehome status``'s readable output: each heading (its first word or two,
    ``The host``, ``The installation's state``, ``This shell's view``, ``Settings``)
    mapped to its ``label  value`` lines."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("  "):
            name = " ".join(line.split(" (")[0].split(",")[0].split()[:3])
            current = found.setdefault(name, {})
            continue
        label, _, value = line.strip().partition("  ")
        current[label] = value.strip()
    return found
