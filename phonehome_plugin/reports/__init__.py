"""Turning counts into reports: claiming triggers and building, checking and storing
their reports (:mod:`.triggers`), when they fall due (:mod:`.schedule`), the report's
shape (:mod:`.shape`), its JSON Schema (``report.schema.json``) and the check every
report passes (:mod:`.schema`), and the facts it carries about the machine and the
host (:mod:`.system`) and its location (:mod:`.location`, looked up through the
delivery's transport: the same way out as the reports).

Runs on the worker's thread only.

May import: config, counting, delivery, guard, state.
"""
