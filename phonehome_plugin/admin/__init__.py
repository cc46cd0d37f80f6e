"""What operators see and do, as plain data: the ``phonehome`` command's engine and a
Python API for MaestroHub's admin UI, so that both show the same truth.

Read-only (they never create, write or lock anything in the installation's state):

- :mod:`.status`: what the host decided at its start (as it recorded it), this
  shell's own view beside it, and the state: instance id, last report, outbox,
  next report;
- :mod:`.preview`: the next report, built now from the installation's state
  through the code that builds real reports, without sending or consuming anything;
- :mod:`.sent`: what was sent: outcomes, the exact bytes of each report, a
  field-level diff against the previous one.

Actions (each says what it changes): :mod:`.export` (writes pending reports to a
file for an air-gapped site, and marks them exported), :mod:`.upload` (sends such a
file from a connected machine, through the plugin's own transport), :mod:`.forget`
(erases the local telemetry state).

Beside them: where the operator's config.yaml and state are (:mod:`.locate`), and
the record each host start with telemetry on writes of what it decided, with the
startup notice (:mod:`.startrecord`, called by the worker when it opens the state).

May import: config, counting, delivery, guard, reports, state.
"""
