"""The phonehome plugin's entry point (``phonehome = "phonehome_plugin.plugin"``).

A module with no state: ``on_startup`` decides whether telemetry is on and, if
it is, registers a :class:`~.runtime.Runtime` for this host start with the
host's plugin manager. The runtime implements ``on_user_created``, ``on_tick``
and ``on_shutdown``. When telemetry is off nothing is registered, connected,
written or started, so the other hooks cost nothing at all.

The plugin owns the ``phonehome_register_collectors`` hook and adds its
specification here, on or off, so that third-party implementations are checked
against it either way.
"""

from __future__ import annotations

import logging

import hookspecs.phonehome
from hookspecs import App, hookimpl
from phonehome_plugin.config import switch

log = logging.getLogger("phonehome_plugin")

RUNTIME_NAME = "phonehome-runtime"


@hookimpl
def on_startup(app: App) -> None:
    """Start telemetry for this host start, if it is on; never raises."""
    try:
        _start(app)
    except Exception:
        log.exception("phonehome: could not start; telemetry is off for this run")


def _start(app: App) -> None:
    pm = app.plugin_manager
    if (
        not hasattr(pm.hook, "phonehome_register_collectors")
        or pm.hook.phonehome_register_collectors.spec is None
    ):
        pm.add_hookspecs(hookspecs.phonehome)
    if pm.get_plugin(RUNTIME_NAME) is not None:
        return
    decision = switch.resolve(app.config)
    if decision.config_error:
        log.error("phonehome: %s", decision.reason)
    else:
        log.info("phonehome: telemetry %s", decision.reason)
    if not decision.on or decision.settings is None:
        return
    from phonehome_plugin.runtime import Runtime  # only paid for when telemetry is on

    runtime = Runtime(app, decision.settings)
    pm.register(runtime, name=RUNTIME_NAME)
    runtime.start()
