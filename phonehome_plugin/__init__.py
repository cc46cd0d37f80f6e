"""MaestroHub's telemetry ("phone home") plugin.

The host discovers :mod:`phonehome_plugin.plugin` through the ``maestrohub``
entry-point group. Everything else here is loaded by that module, mostly on the
plugin's own thread, so that importing the plugin stays cheap for the host.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
