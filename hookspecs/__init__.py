"""The MaestroHub host contract: hook markers, host hooks, the ``app`` protocol, signals.

Hosts and plugins import the markers from here::

    from hookspecs import hookimpl

    @hookimpl
    def on_startup(app): ...

The pluggy project name, the marker name and the entry-point group are all
``maestrohub`` (:data:`PROJECT_NAME`).
"""

from __future__ import annotations

from hookspecs.host import App
from hookspecs.markers import PROJECT_NAME, hookimpl, hookspec

__all__ = ["PROJECT_NAME", "App", "hookimpl", "hookspec"]
