"""The running plugin for one host start: the host-facing side of the worker.

Registered with the host's plugin manager by :mod:`.plugin` when telemetry is
on, it implements ``on_user_created``, ``on_tick`` and ``on_shutdown``. Every
hook here does O(1) work and returns: the tally and inventory are updated by
signal receivers, everything else is handed to the :class:`~.worker.Worker`.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hookspecs import App, hookimpl
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.counting import receivers
from phonehome_plugin.counting.collectors import Registry
from phonehome_plugin.counting.inventory import Inventory
from phonehome_plugin.counting.tally import ExecutionTally
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.guard import privacy
from phonehome_plugin.worker import Worker

log = logging.getLogger(__name__)

SHUTDOWN_WAIT = 1.5
"""Seconds ``on_shutdown`` waits for the worker; the contract allows 2."""


class Runtime:
    """Telemetry for one host start: create, register with the plugin manager, :meth:`start`."""

    def __init__(self, app: App, settings: Settings, policy: RetryPolicy | None = None) -> None:
        self.app = app
        self.settings = settings
        self.policy = policy
        self.inventory = Inventory()
        self.tally = ExecutionTally()
        self.registry = Registry()
        self._builtins = receivers.builtin_receivers(self.inventory, self.tally)
        self.worker = self._new_worker()
        self._spare: Worker | None = self._new_worker()
        """Made now and never used here: what a forked child takes as its own worker
        (see _after_fork_in_child)."""
        self._stopped = False
        self._bad_now_logged = False

    def _new_worker(self) -> Worker:
        return Worker(
            self.settings, self.app, self.inventory, self.tally, self.registry, self.policy
        )

    def start(self) -> None:
        """Connect receivers and ask third parties for collectors. No thread starts
        here: the worker starts one when the first tick brings work (see .worker)."""
        list(receivers.connect_all(self._builtins, self.app))
        self.registry.connect(self.app, self._builtins)
        # Each module's registration on its own: one that raises costs its own
        # collectors and one log line naming it, never another module's (see
        # counting.collectors); those registered later are called by pluggy.
        try:
            self.registry.ask(self.app.plugin_manager)
        except Exception:  # ask() never raises; this is the host's last line of defence
            log.exception("phonehome: asking the modules for collectors failed")
        _watch_forks(self)

    @hookimpl
    def on_user_created(self, app: App, user: Mapping[str, Any]) -> None:
        """Count the user and, if it may be the first, wake the worker."""
        try:
            receivers.record_user(self.inventory, user)
            created_at = user.get("created_at")
            if isinstance(created_at, datetime) and created_at.tzinfo is not None:
                email = user.get("email")
                self.worker.user_created((created_at, email if isinstance(email, str) else ""))
        except Exception:  # never into the host
            log.exception("phonehome: on_user_created failed")

    @hookimpl
    def on_tick(self, app: App, now: datetime) -> None:
        """Hand ``now`` to the worker, unless nothing can be due before ``wake_at``."""
        try:
            if now < self.worker.wake_at:
                return
            self.worker.tick(now)
        except TypeError:
            if not self._bad_now_logged:
                self._bad_now_logged = True
                # The type only: an arbitrary object's repr may be huge or slow.
                got = "a naive datetime" if isinstance(now, datetime) else type(now).__name__
                log.error("phonehome: on_tick needs an aware UTC datetime, got %s; ignored", got)
        except Exception:
            log.exception("phonehome: on_tick failed")

    @hookimpl
    def on_shutdown(self, app: App) -> None:
        """Disconnect everything and give the worker up to 1.5 s to save its counts."""
        if self._stopped:
            return
        self._stopped = True
        self._spare = None
        try:
            receivers.disconnect_all(self._builtins)
            self.registry.disconnect()
            if not self.worker.stop(SHUTDOWN_WAIT):
                log.warning("phonehome: worker still busy at shutdown; unsent reports stay stored")
            else:
                # Saved: nothing the host gave (ids, types, states) is kept past here.
                self.inventory.clear()
        except Exception:
            log.exception("phonehome: on_shutdown failed")
        privacy.forget()  # the guard's cache keeps nothing the host sent past this point

    def _after_fork_in_child(self) -> None:
        # Runs in the child before any other thread exists. The parent keeps
        # counting what it counted and handles its own notes; the child starts
        # from zero with a worker of its own (no thread until its first tick),
        # which opens its own connections and claims as a process of its own.
        # A worker made in the child would copy every page its allocations touch
        # (about 0.17 ms of fork() in the child); the spare was made in the parent,
        # untouched since, so taking it copies one page. The child's own children
        # make theirs.
        self.tally.forget()
        self.inventory.after_fork()
        self.registry.after_fork()
        spare, self._spare = self._spare, None
        self.worker = spare if spare is not None else self._new_worker()


def _watch_forks(runtime: Runtime) -> None:
    ref = weakref.ref(runtime)

    def in_child() -> None:
        alive = ref()
        if alive is not None and not alive._stopped:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=in_child)
