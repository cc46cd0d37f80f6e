"""A simulated MaestroHub host, for module authors and for the project's tests.

It does what section 1 of the host contract says a host does, in that order, on a
clock the caller drives::

    host = SimHost({"modules": {"phonehome": {...}}}, tmp_path)
    Activity(seed=1).populate_factory(host)  # state set before start() is synced by it
    host.start()                             # on_startup, inventory-synced, uns, license
    host.tick()                              # the first on_tick, after every module synced
    host.create_user("admin@example.com")    # on_user_created
    host.run_for(3600, step=600)
    host.shutdown()

Where the contract is silent:

- A hook that raises propagates out of the simulator: the contract forbids it, and a
  host that swallowed the error would hide the bug from the test.
- Every signal, inventory item and user carries extra fields holding
  :data:`SECRET_MARKER`, as the real host passes whole objects along; a test greps
  reports and the data dir for it.
- Changes while the host is not running (before ``start()``, after ``shutdown()``)
  change the state only. Deletes of unknown ids are still sent, to exercise idempotency.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pluggy
from blinker import NamedSignal

import hookspecs.host
from hookspecs import PROJECT_NAME, signals

SECRET_MARKER = "sim-secret-c0ffee"
"""In every sensitive value the simulator passes; never in a correct report or data file."""

MODULES = ("users", "connections", "pipelines", "organizations", "data_models")
"""The modules that emit ``inventory-synced``, in the order ``start()`` syncs them."""

CONNECTION_TYPES = tuple(
    ["mqtt", "opcua", "modbus", "s7", "opcda", "postgresql", "mssql", "rest", "pubsub"]
)
TRIGGER_NODES = ("trigger.manual", "trigger.webhook", "trigger.uns.subscribe")
WORK_NODES = tuple(
    [
        "system.uns.publish",
        "system.uns.publishBatch",
        "system.uns.fetchdata",
        "system.uns.searchnodes",
        "action.http",
    ]
)
STATUSES = ("completed", "failed", "completed_with_errors", "cancelled")

_ID_PREFIX = {
    "connections": "conn",
    "pipelines": "pipe",
    "organizations": "org",
    "data_models": "dm",
}
# One shared copy for every send: receivers must neither keep nor change what they get.
_EXTRAS: Mapping[str, Any] = {
    "workflow": {"nodes": [{"type": "action.http", "script": f"token = '{SECRET_MARKER}'"}]},
    "credentials": {"username": "svc-maestro", "password": f"{SECRET_MARKER}-password"},
    "actor": {"email": f"{SECRET_MARKER}.operator@example.com", "ip": "198.51.100.23"},
}
_ITEM_EXTRAS: Mapping[str, Mapping[str, Any]] = {
    "connections": {"config": {"host": "192.0.2.10", "password": f"{SECRET_MARKER}-plc"}},
    "pipelines": {"definition": {"script": f"secret = '{SECRET_MARKER}'"}},
    "organizations": {"name": f"ACME Plant {SECRET_MARKER}"},
    "data_models": {"schema": {"default_token": SECRET_MARKER}},
}


class SimClock:
    """A controllable aware-UTC clock that moves only when ``advance()`` is called.

    Wall time is read at most once, as the start value when none is given.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = datetime.now(UTC).replace(microsecond=0) if start is None else start
        if start.utcoffset() is None:
            raise ValueError("SimClock needs an aware datetime")
        self._now, self._lock = start.astimezone(UTC), threading.Lock()

    def now(self) -> datetime:
        """The current simulated time (aware, UTC)."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` >= 0 (the host clock never goes back); returns now."""
        if seconds < 0:
            raise ValueError("the host clock never goes backwards")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


@dataclass
class SimApp:
    """The ``app`` passed to every hook and as every signal's sender (``hookspecs.App``)."""

    version: str
    edition: str
    config: Mapping[str, Any]
    config_path: Path | None
    data_dir: Path
    started_at: datetime
    plugin_manager: pluggy.PluginManager


@dataclass
class SimState:
    """The simulated installation's state; ``SimHost.restart()`` carries it over.

    ``modules`` maps module name to id to the whole record (sensitive extras
    included). ``executions`` counts every execution emitted over the installation's
    life, by status: compare it with a report's lifetime totals.
    """

    modules: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {module: {} for module in MODULES}
    )
    uns: dict[str, Any] = field(
        default_factory=lambda: dict(
            topic_count=0, client_count=0, mqtt_mode="embedded", storage_mode="pebble"
        )
    )
    license: dict[str, str] = field(
        default_factory=lambda: dict(license_id="LIC-SIM-0001", status="trial")
    )
    executions: Counter[str] = field(default_factory=Counter)
    last_id: int = 0


class SimHost:
    """One start of a MaestroHub host: plugin discovery, hooks, signals, a driven clock.

    ``extra_plugins`` are registered after the entry points (loaded when
    ``load_entrypoints``) and before ``on_startup``. ``started_at`` defaults to the
    clock's time at construction. ``state`` is used by reference (see ``restart()``).

    The ``save_*``/``delete_*``/``set_*`` methods change the state and, while the host
    runs, send the matching signal; ``save_*`` return the id (a new one when none is
    given; an existing id is an update).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        data_dir: Path,
        *,
        clock: SimClock | None = None,
        version: str = "2.3.0",
        edition: str = "enterprise",
        extra_plugins: Sequence[object] = (),
        started_at: datetime | None = None,
        load_entrypoints: bool = True,
        config_path: Path | None = None,
        state: SimState | None = None,
    ) -> None:
        self.config, self.data_dir, self.config_path = config, Path(data_dir), config_path
        self.clock = clock or SimClock()
        self.version, self.edition = version, edition
        self.extra_plugins, self.load_entrypoints = tuple(extra_plugins), load_entrypoints
        self.started_at = started_at or self.clock.now()
        if self.started_at.utcoffset() is None:
            raise ValueError("started_at must be aware")
        self.state = state or SimState()
        self.signals_sent: Counter[str] = Counter()
        """Signals sent by this start, by signal name."""
        self.hook_seconds: dict[str, float] = {}
        """Slowest call of each hook, in wall seconds (the contract allows about 1 ms)."""
        self._app: SimApp | None = None
        self.running = False
        """True between ``start()`` and ``shutdown()``."""

    @property
    def app(self) -> SimApp:
        """The ``app`` object; exists from ``start()`` on."""
        if self._app is None:
            raise RuntimeError("SimHost.start() has not been called")
        return self._app

    @property
    def emitted_executions(self) -> Counter[str]:
        """Executions emitted over the installation's life (across restarts), by status."""
        return self.state.executions

    def start(self) -> SimApp:
        """Discover plugins, call ``on_startup``, then sync every module (contract 1.1-1.4)."""
        if self._app is not None:
            raise RuntimeError("a SimHost starts once; restart() makes the next start")
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs.host)
        if self.load_entrypoints:
            pm.load_setuptools_entrypoints(PROJECT_NAME)
        for plugin in self.extra_plugins:
            pm.register(plugin)
        app = SimApp(
            self.version,
            self.edition,
            self.config,
            self.config_path,
            self.data_dir,
            self.started_at,
            pm,
        )
        self._app, self.running = app, True
        self._call("on_startup", lambda: pm.hook.on_startup.call_historic(kwargs={"app": app}))
        for module in MODULES:
            items = [dict(record) for record in self.state.modules[module].values()]
            self._emit(signals.inventory_synced, module=module, items=items)
        self._emit(signals.uns_state_changed, **self.state.uns)
        self._emit(signals.license_changed, **self.state.license)
        return app

    def tick(self, seconds: float | None = None) -> datetime:
        """Advance the clock by ``seconds`` (if given), call ``on_tick``; returns its ``now``."""
        self._require_running()
        now = self.clock.advance(seconds) if seconds else self.clock.now()
        self._call("on_tick", lambda: self.app.plugin_manager.hook.on_tick(app=self.app, now=now))
        return now

    def run_for(self, seconds: float, step: float = 10.0) -> int:
        """Tick every ``step`` seconds of host time until ``seconds`` passed; returns ticks."""
        if step <= 0:
            raise ValueError("step must be positive")
        ticks = math.ceil(seconds / step - 1e-9)
        for index in range(ticks):
            self.tick(min(step, seconds - index * step))
        return ticks

    def shutdown(self) -> None:
        """Call ``on_shutdown`` once; later calls, or calls before ``start()``, do nothing."""
        if self.running:
            self.running = False
            hook = self.app.plugin_manager.hook.on_shutdown
            self._call("on_shutdown", lambda: hook(app=self.app))

    def restart(self, *, shutdown: bool = True) -> SimHost:
        """The next start: a new host, not yet started, with this one's config, data dir,
        clock, plugins and a copy of its state; ``started_at`` is the clock's time now.

        ``shutdown=False`` skips ``on_shutdown`` here, as a crashed process would.
        """
        if shutdown:
            self.shutdown()
        return SimHost(
            self.config,
            self.data_dir,
            clock=self.clock,
            version=self.version,
            edition=self.edition,
            extra_plugins=self.extra_plugins,
            load_entrypoints=self.load_entrypoints,
            config_path=self.config_path,
            state=copy.deepcopy(self.state),
        )

    def create_user(self, email: str | None = None) -> dict[str, Any]:
        """Commit a user, then (when running) call ``on_user_created`` with the whole
        record: ``id``, ``email``, ``created_at`` (clock time), role and secrets."""
        user_id = self._new_id("usr")
        user = {
            "id": user_id,
            "email": email or f"{user_id}@example.com",
            "created_at": self.clock.now(),
            "role": "editor" if self.state.modules["users"] else "admin",
            "password_hash": f"$argon2id$v=19$m=65536,t=3,p=4${SECRET_MARKER}",
            "api_token": f"mh_{SECRET_MARKER}",
        }
        self.state.modules["users"][user_id] = user
        if self.running:
            hook = self.app.plugin_manager.hook.on_user_created
            self._call("on_user_created", lambda: hook(app=self.app, user=dict(user)))
        return dict(user)

    def delete_user(self, user_id: str) -> None:
        self._delete("users", signals.user_deleted, user_id)

    def save_connection(self, kind: str, connection_id: str | None = None) -> str:
        return self._save("connections", signals.connection_saved, connection_id, type=kind)

    def delete_connection(self, connection_id: str) -> None:
        self._delete("connections", signals.connection_deleted, connection_id)

    def save_pipeline(
        self, node_types: Sequence[str], *, enabled: bool = True, pipeline_id: str | None = None
    ) -> str:
        fields = {"enabled": enabled, "node_types": list(node_types)}
        return self._save("pipelines", signals.pipeline_saved, pipeline_id, **fields)

    def delete_pipeline(self, pipeline_id: str) -> None:
        self._delete("pipelines", signals.pipeline_deleted, pipeline_id)

    def save_organization(self, organization_id: str | None = None) -> str:
        return self._save("organizations", signals.organization_saved, organization_id)

    def delete_organization(self, organization_id: str) -> None:
        self._delete("organizations", signals.organization_deleted, organization_id)

    def save_data_model(self, model_id: str | None = None) -> str:
        return self._save("data_models", signals.data_model_saved, model_id)

    def delete_data_model(self, model_id: str) -> None:
        self._delete("data_models", signals.data_model_deleted, model_id)

    def set_uns(
        self,
        *,
        topic_count: int | None = None,
        client_count: int | None = None,
        mqtt_mode: str | None = None,
        storage_mode: str | None = None,
    ) -> None:
        """Change the given UNS values; ``uns-state-changed`` carries all four, absolute."""
        given = {
            "topic_count": topic_count,
            "client_count": client_count,
            "mqtt_mode": mqtt_mode,
            "storage_mode": storage_mode,
        }
        self.state.uns.update({key: value for key, value in given.items() if value is not None})
        self._emit(signals.uns_state_changed, **self.state.uns)

    def set_license(self, status: str, license_id: str | None = None) -> None:
        """Change the license status (and id, when given); sends ``license-changed``."""
        self.state.license["status"] = status
        self.state.license["license_id"] = license_id or self.state.license["license_id"]
        self._emit(signals.license_changed, **self.state.license)

    def run_executions(
        self,
        n: int,
        statuses: Sequence[str] | Mapping[str, float] = ("completed",),
        threads: int = 1,
    ) -> Counter[str]:
        """Send ``n`` ``execution-finished`` signals; returns how many of each status.

        ``statuses`` as a sequence is cycled through (``("completed", "failed")``
        alternates); as a mapping it holds weights, apportioned exactly (largest
        remainder), so counts are known without randomness. The saved pipelines take
        turns. With ``threads`` > 1 the sends come from that many threads at once, as
        from a host's worker pool. Needs a running host.
        """
        self._require_running()
        if threads < 1:
            raise ValueError("threads must be at least 1")
        plan, app = _status_plan(n, statuses), self.app
        pipeline_ids = list(self.state.modules["pipelines"]) or ["pipe-unsaved"]
        gate, errors = threading.Barrier(threads), list[BaseException]()

        def send(indices: range) -> None:
            for i in indices:
                signals.execution_finished.send(
                    app,
                    pipeline_id=pipeline_ids[i % len(pipeline_ids)],
                    status=plan[i],
                    duration_ms=15 + i * 7919 % 4000,
                    **_EXTRAS,
                )

        def worker(indices: range) -> None:
            try:
                gate.wait()  # release every worker at once, so they contend as a pool's do
                send(indices)
            except BaseException as error:  # re-raised on the caller's thread below
                errors.append(error)

        if threads == 1:
            send(range(n))
        else:
            pool = [
                threading.Thread(target=worker, args=(range(k, n, threads),))
                for k in range(threads)
            ]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            if errors:
                raise errors[0]
        counts = Counter(plan)
        self.state.executions.update(counts)
        self.signals_sent[signals.execution_finished.name] += n
        return counts

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the simulated host is not running")

    def _new_id(self, prefix: str) -> str:
        self.state.last_id += 1
        return f"{prefix}-{self.state.last_id:06d}"

    def _save(self, module: str, signal: NamedSignal, item_id: str | None, **fields: Any) -> str:
        item_id = item_id or self._new_id(_ID_PREFIX[module])
        record = {"id": item_id, **fields, **_ITEM_EXTRAS[module]}
        self.state.modules[module][item_id] = record
        self._emit(signal, **record)
        return item_id

    def _delete(self, module: str, signal: NamedSignal, item_id: str) -> None:
        self.state.modules[module].pop(item_id, None)
        self._emit(signal, id=item_id)

    def _emit(self, signal: NamedSignal, **kwargs: Any) -> None:
        if self.running:
            signal.send(self.app, **{**_EXTRAS, **kwargs})
            self.signals_sent[signal.name] += 1

    def _call(self, hook: str, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        try:
            call()
        finally:
            elapsed = time.perf_counter() - started
            self.hook_seconds[hook] = max(elapsed, self.hook_seconds.get(hook, 0.0))


def _status_plan(n: int, statuses: Sequence[str] | Mapping[str, float]) -> list[str]:
    weights = statuses if isinstance(statuses, Mapping) else None
    if n and not (sum(weights.values()) > 0 if weights is not None else statuses):
        raise ValueError("statuses must name at least one status (with a positive weight)")
    if weights is None:
        order = (statuses,) if isinstance(statuses, str) else statuses
        return list(itertools.islice(itertools.cycle(order), n))
    shares = {status: n * weight / sum(weights.values()) for status, weight in weights.items()}
    counts = {status: math.floor(share) for status, share in shares.items()}
    for status in sorted(shares, key=lambda s: counts[s] - shares[s])[: n - sum(counts.values())]:
        counts[status] += 1
    # Spread each status evenly over the run rather than sending it in one block.
    slots = sorted(((k + 0.5) / c, status) for status, c in counts.items() for k in range(c))
    return [status for _, status in slots]


class Activity:
    """Plausible module activity in MaestroHub's vocabulary, reproducible from ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def nodes(self) -> list[str]:
        """Node types of one pipeline: a trigger, then one to six working nodes."""
        work = self.rng.choices(WORK_NODES, weights=(6, 2, 3, 1, 3), k=self.rng.randint(1, 6))
        return [self.rng.choices(TRIGGER_NODES, weights=(2, 3, 5))[0], *work]

    def populate_factory(self, host: SimHost) -> None:
        """A typical factory: 10 connections, 30 pipelines, 2 organizations, 4 data
        models, 2,000 topics, an active license; no users (the first comes live)."""
        kinds = self.rng.choices(CONNECTION_TYPES[:8], weights=(3, 2, 2, 1, 0, 1, 0, 1), k=10)
        self._populate(host, kinds, pipelines=30, organizations=2, data_models=4)
        host.set_uns(topic_count=2000, client_count=self.rng.randint(6, 20))
        host.set_license("active", license_id="LIC-FACTORY-0042")

    def populate_enterprise(self, host: SimHost) -> None:
        """Large Enterprise: 5,000 connections, 10,000 pipelines, 36 organizations,
        480 data models, 100,000 topics on an external broker and TimescaleDB."""
        weights = (30, 25, 15, 10, 3, 8, 4, 4, 1)
        kinds = self.rng.choices(CONNECTION_TYPES, weights=weights, k=5000)
        self._populate(host, kinds, pipelines=10_000, organizations=36, data_models=480)
        host.set_uns(topic_count=100_000, client_count=2400, mqtt_mode="external")
        host.set_uns(storage_mode="timescale")
        host.set_license("active", license_id="LIC-ENT-7001")

    def hour_of_work(self, host: SimHost, *, tick_every: float | None = None) -> Counter[str]:
        """One plausible hour on a running host: a few edits, hundreds of executions
        (mostly completed). Returns the executions sent, by status.

        Without ``tick_every`` it all happens at once and the clock is untouched; with
        it the work is spread over the hour, ticking every ``tick_every`` seconds, so
        the clock ends one hour later.
        """
        rng, slices = self.rng, max(1, round(3600 / tick_every)) if tick_every else 1
        pipelines = list(host.state.modules["pipelines"])
        edits: list[Callable[[], object]] = []
        for pipeline_id in rng.sample(pipelines, min(len(pipelines), rng.randint(1, 3))):
            edits.append(partial(host.save_pipeline, self.nodes(), pipeline_id=pipeline_id))
        if rng.random() < 0.3:
            edits.append(partial(host.save_pipeline, self.nodes(), enabled=rng.random() < 0.5))
        if pipelines and rng.random() < 0.2:
            edits.append(partial(host.delete_pipeline, rng.choice(pipelines)))
        if rng.random() < 0.3:
            edits.append(partial(host.save_connection, rng.choice(CONNECTION_TYPES)))
        if rng.random() < 0.1:
            edits.append(host.save_data_model)
        topics = host.state.uns["topic_count"] + rng.randint(0, 40)
        edits.append(partial(host.set_uns, topic_count=topics))
        when = [rng.randrange(slices) for _ in edits]
        total = rng.randint(200, 900)
        plan = rng.choices(STATUSES, weights=(950, 20, 25, 5), k=total)
        sent: Counter[str] = Counter()
        for index in range(slices):
            for edit in (edit for edit, slot in zip(edits, when, strict=True) if slot == index):
                edit()
            chunk = plan[index * total // slices : (index + 1) * total // slices]
            sent += host.run_executions(len(chunk), statuses=chunk)
            if tick_every:
                host.tick(3600 / slices)
        return sent

    def _populate(
        self,
        host: SimHost,
        kinds: list[str],
        *,
        pipelines: int,
        organizations: int,
        data_models: int,
    ) -> None:
        for kind in kinds:
            host.save_connection(kind)
        for _ in range(pipelines):
            host.save_pipeline(self.nodes(), enabled=self.rng.random() < 0.8)
        for _ in range(organizations):
            host.save_organization()
        for _ in range(data_models):
            host.save_data_model()
