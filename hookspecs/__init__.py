"""The MaestroHub host contract: hook markers, host hooks, the ``app`` protocol, signals.

Hosts and plugins import the markers from here::

    from hookspecs import hookimpl

    @hookimpl
    def on_startup(app): ...

The pluggy project name, the marker name and the entry-point group are all
``maestrohub`` (:data:`PROJECT_NAME`).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "maestrohub"
"""pluggy project name, marker name and setuptools entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a hook specification of the MaestroHub contract."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a hook implementation in a MaestroHub plugin."""

from hookspecs.host import App  # noqa: E402  (the markers must exist before host imports them)

__all__ = ["PROJECT_NAME", "App", "hookimpl", "hookspec"]
