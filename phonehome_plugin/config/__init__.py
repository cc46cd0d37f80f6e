"""What the operator sets and is told: ``modules.phonehome`` read into
:class:`~.settings.Settings` (:mod:`.settings`), the one decision whether telemetry
is on and why (:mod:`.switch`), and the startup notice (:mod:`.notice`).

Pure functions of config.yaml and the environment: no I/O, no thread.

May import: guard.
"""
