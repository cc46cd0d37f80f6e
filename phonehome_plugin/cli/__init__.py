"""The operator's side: the ``phonehome`` command (:mod:`.commands`), the read-only
view of an installation's state it shows (:mod:`.state_view`), and the telemetry
documentation generated from the report schema (:mod:`.telemetry_doc`).

The command never creates state. Its ``demo`` subcommand alone imports
:mod:`phonehome_plugin.testing.demo`, inside the subcommand's function, so the
shipped command loads no simulation tooling for anything else.

May import: config, reports, state.
"""
