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

The host speaks MaestroHub's vocabulary (:mod:`.vocabulary`) on a
:class:`~.simclock.SimClock`; :class:`~.activity.Activity` drives it plausibly.

Where the contract is silent:

- A hook that raises propagates out of the simulator: the contract forbids it, and a
  host that swallowed the error would hide the bug from the test.
- Every signal, inventory item and user carries extra fields holding
  :data:`SECRET_MARKER`, as the real host passes whole objects along; a test greps
  reports and the data dir for it.
- Changes while the host is not running (before ``start()``, after ``shutdown()``)
  change the state only. Deletes of unknown ids are still sent, to exercise idempotency.
- The app is equal only to itself (and hashable), as a host's one object is.

A test or benchmark that needs the steps one by one has them: ``plugin_manager``
exists from construction (register plugins on it, or load entry points at a moment
of its choosing), ``start(sync=False)`` stops after ``on_startup`` and ``sync()``
sends the modules' state; ``tick_at()`` ticks at a given time; ``hook_observer``
sees the wall and CPU time of every hook call.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pluggy
from blinker import NamedSignal

import hookspecs.host
from hookspecs import PROJECT_NAME, signals
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.vocabulary import (
    EXTRAS,
    ID_PREFIX,
    ITEM_EXTRAS,
    SECRET_MARKER,
    send_executions,
    status_plan,
)

__all__ = ["MODULES", "SimApp", "SimHost", "SimState"]

MODULES = ("users", "connections", "pipelines", "organizations", "data_models")
"""The modules that emit ``inventory-synced``, in the order ``start()`` syncs them."""


@dataclass(eq=False)
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
    ``hook_observer``, when given, is called after every hook call the host makes
    with the hook's name, its wall seconds and the CPU seconds of the calling thread
    (what the hook cost the host's thread, whatever else the machine does).

    The ``save_*``/``delete_*``/``set_*`` methods change the state and, while the host
    runs, send the matching signal.
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
        hook_observer: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self.config, self.data_dir, self.config_path = config, Path(data_dir), config_path
        self.clock = clock or SimClock()
        self.version, self.edition = version, edition
        self.extra_plugins, self.load_entrypoints = tuple(extra_plugins), load_entrypoints
        self.started_at = started_at or self.clock.now()
        if self.started_at.utcoffset() is None:
            raise ValueError("started_at must be aware")
        self.state = state or SimState()
        self.hook_observer = hook_observer
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        """The host's plugin manager, with the host's hooks; ``start()`` loads the plugins."""
        self.plugin_manager.add_hookspecs(hookspecs.host)
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

    def start(self, *, sync: bool = True) -> SimApp:
        """Discover plugins, call ``on_startup``, then sync every module (contract 1.1-1.4).

        ``sync=False`` stops after ``on_startup``; ``sync()`` then sends the modules' state.
        """
        if self._app is not None:
            raise RuntimeError("a SimHost starts once; restart() makes the next start")
        pm = self.plugin_manager
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
        if sync:
            self.sync()
        return app

    def sync(self) -> None:
        """What every module sends after ``on_startup``: ``inventory-synced`` with its full
        state, then the UNS state and the license (contract 1.4). Needs a running host."""
        self._require_running()
        for module in MODULES:
            items = [dict(record) for record in self.state.modules[module].values()]
            self._emit(signals.inventory_synced, module=module, items=items)
        self._emit(signals.uns_state_changed, **self.state.uns)
        self._emit(signals.license_changed, **self.state.license)

    def tick(self, seconds: float | None = None) -> datetime:
        """Advance the clock by ``seconds`` (if given), call ``on_tick``; returns its ``now``."""
        self._require_running()
        now = self.clock.advance(seconds) if seconds else self.clock.now()
        self._call("on_tick", lambda: self.app.plugin_manager.hook.on_tick(app=self.app, now=now))
        return now

    def tick_at(self, now: datetime) -> datetime:
        """Move the clock to ``now`` (never back), call ``on_tick``; returns ``now``."""
        self._require_running()
        self.clock.advance_to(now)
        return self.tick()

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

        ``started_at`` names a start (contract section 3), so the next start needs its
        own: a restart takes time, and when the clock has not moved a second past this
        start's ``started_at``, it is advanced to that second.
        ``shutdown=False`` skips ``on_shutdown`` here, as a crashed process would.
        """
        if shutdown:
            self.shutdown()
        since = (self.clock.now() - self.started_at).total_seconds()
        if since < 1:
            self.clock.advance(1 - since)
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
            hook_observer=self.hook_observer,
        )

    def create_user(self, email: str | None = None) -> dict[str, Any]:
        """Commit a user, then (when running) call ``on_user_created`` with the whole
        record: ``id``, ``email``, ``created_at`` (clock time), role and secrets."""
        user_id = self._new_id(ID_PREFIX["users"])
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
        plan = status_plan(n, statuses)
        pipeline_ids = list(self.state.modules["pipelines"]) or ["pipe-unsaved"]
        send_executions(self.app, plan, pipeline_ids, threads)
        counts = Counter(plan)
        self.state.executions.update(counts)
        self.signals_sent[signals.execution_finished.name] += n
        return counts

    # What the installation's modules change ------------------------------------------
    # Each changes ``state`` and, while the host runs, sends the matching signal
    # (:meth:`_emit`). ``save_*`` return the id: a new one when none is given; an
    # existing id is an update. Deletes of unknown ids are still sent, to exercise
    # the receivers' idempotency.

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

    def _new_id(self, prefix: str) -> str:
        self.state.last_id += 1
        return f"{prefix}-{self.state.last_id:06d}"

    def _save(self, module: str, signal: NamedSignal, item_id: str | None, **fields: Any) -> str:
        item_id = item_id or self._new_id(ID_PREFIX[module])
        record = {"id": item_id, **fields, **ITEM_EXTRAS[module]}
        self.state.modules[module][item_id] = record
        self._emit(signal, **record)
        return item_id

    def _delete(self, module: str, signal: NamedSignal, item_id: str) -> None:
        self.state.modules[module].pop(item_id, None)
        self._emit(signal, id=item_id)

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the simulated host is not running")

    def _emit(self, signal: NamedSignal, **kwargs: Any) -> None:
        if self.running:
            signal.send(self.app, **{**EXTRAS, **kwargs})
            self.signals_sent[signal.name] += 1

    def _call(self, hook: str, call: Callable[[], object]) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            call()
        finally:
            elapsed = time.perf_counter() - started
            self.hook_seconds[hook] = max(elapsed, self.hook_seconds.get(hook, 0.0))
            if self.hook_observer is not None:
                self.hook_observer(hook, elapsed, time.thread_time() - cpu)
