"""MaestroHub's telemetry ("phone home") plugin.

The host discovers :mod:`phonehome_plugin.plugin` through the ``maestrohub``
entry-point group. Everything else here is loaded by that module, mostly on the
plugin's own thread, so that importing the plugin stays cheap for the host.

One folder per stage of the data path, each ``__init__`` saying what it owns and
what it may import; the arrows run one way, down this list:

- ``testing/``: the simulated host, its activity and clock, the loopback
  endpoint and guard, the demo (opt-in tooling, never imported by the rest);
- ``cli/``: the ``phonehome`` command and the generated documentation;
- the engine, the modules at the top: ``plugin`` (the entry point), ``runtime``
  (the hooks of one host start) and ``worker`` (the plugin's own thread);
- ``admin/``: what operators see and do (status, preview, what was sent, export,
  upload, forget) as plain data, for the command and the host's admin UI, and the
  record each host start writes of what it decided;
- ``reports/``: triggers, schedule, the report's shape, schema and facts;
- ``delivery/``: one POST, retries and the sender;
- ``state/``: the store and its backends, the outbox and the history;
- ``counting/``: signal receivers, tally, inventory, collectors (host threads);
- ``config/``: settings, the on/off switch, the startup notice;
- ``guard/``: what a foreign value may become (privacy) and how it is quoted.

This module holds the version only and imports nothing, so any module may use it.
The version is written here once: pyproject.toml reads it (``dynamic``).
The engine may import: admin, config, counting, delivery, guard, reports, state.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
