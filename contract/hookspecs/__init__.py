"""The MaestroHub host contract: hook markers, host hooks, the ``app`` protocol, signals,
and the ``Collector`` protocol of the phonehome plugin's hook.

Hosts and plugins import the markers from here::

    from hookspecs import hookimpl

    @hookimpl
    def on_startup(app): ...

The pluggy project name, the marker name and the entry-point group are all
``maestrohub`` (:data:`PROJECT_NAME`). The two protocols are exported here for
type annotations: :class:`App` (what every hook gets as ``app``) and
:class:`Collector` (what a third-party module hands to ``register``).

The package is the distribution ``maestrohub-hookspecs``, versioned on its own
(:data:`__version__`): a MaestroHub module depends on it alone, so that installing
the module never installs telemetry. Its major version changes only when a name of
the contract changes.
"""

from __future__ import annotations

from hookspecs.host import App
from hookspecs.markers import PROJECT_NAME, hookimpl, hookspec
from hookspecs.phonehome import Collector, CollectorWithReceivers

__version__ = "1.0.0"
"""The contract's version (the distribution's, read from here by its pyproject.toml)."""

__all__ = ["PROJECT_NAME", "App", "Collector", "CollectorWithReceivers", "hookimpl", "hookspec"]
