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

import sys

import hookspecs.phonehome
from hookspecs import App, hookimpl
from phonehome_plugin.config import switch

LOGGER = "phonehome_plugin"
RUNTIME_NAME = "phonehome-runtime"


@hookimpl
def on_startup(app: App) -> None:
    """Start telemetry for this host start, if it is on; never raises."""
    try:
        _start(app)
    except Exception:
        import logging

        logging.getLogger(LOGGER).exception(
            "phonehome: could not start; telemetry is off for this run"
        )


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
    if decision.switch == switch.INVALID:
        _log("phonehome: %s", decision.reason, error=True)
    else:
        _log("phonehome: telemetry %s", decision.reason, error=False)
    if not decision.on:
        return
    settings = decision.settings
    if settings is None:
        return
    from phonehome_plugin.runtime import Runtime  # only paid for when telemetry is on

    runtime = Runtime(app, settings)
    pm.register(runtime, name=RUNTIME_NAME)
    runtime.start()


def _log(message: str, reason: str, error: bool) -> None:
    """Log one line to ``phonehome_plugin`` (ERROR or INFO), importing :mod:`logging`
    only when the line can go anywhere.

    A host that has not imported :mod:`logging` has configured no handler and no
    level: its root logger is at WARNING, so an INFO line would be dropped as it is
    made (a later configuration does not bring back a dropped line). Such a host
    does not pay the import for nothing; an error is always logged
    (:data:`logging.lastResort` prints it to stderr)."""
    if not error and "logging" not in sys.modules:
        return
    import logging

    logging.getLogger(LOGGER).log(logging.ERROR if error else logging.INFO, message, reason)
