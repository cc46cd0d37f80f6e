"""Counting on the host's threads: the built-in signal receivers (:mod:`.receivers`),
the execution tally (:mod:`.tally`), the installation's inventory
(:mod:`.inventory`), the registry of third-party collectors (:mod:`.collectors`)
and the riders, the collectors' receivers called inside the plugin's own
(:mod:`.riders`).

Everything a receiver does is O(1) and never waits: no I/O, no lock held for long.
Reading the counts happens on the worker's thread, when a report is built.

May import: guard.
"""
