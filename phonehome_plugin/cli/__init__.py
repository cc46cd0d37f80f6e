"""The operator's side: the ``phonehome`` command (:mod:`.commands`) and the telemetry
documentation generated from the report schema (:mod:`.telemetry_doc`).

The command never creates state: it reads the installation's state through the
plugin's own store, opened read-only (:func:`phonehome_plugin.state.backends.open_store`).
Its ``demo`` subcommand alone imports :mod:`phonehome_plugin.testing.demo`, inside
the subcommand's function, so the shipped command loads no simulation tooling for
anything else.

May import: admin, config, reports, state.
"""
