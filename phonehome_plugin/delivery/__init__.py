"""Getting stored reports to the endpoint: what one request came to (:mod:`.answer`),
the request itself with its hard deadline (:mod:`.transport`, the only code that opens
a socket to the endpoint or to the location service: the plugin's one way out) and
cutting an abandoned one off (:mod:`.cutoff`), which answers are retried and how
(:mod:`.retry`), and the sender that takes due reports from the outbox through one
send series each (:mod:`.sender`).

Runs on the worker's thread only.

May import: config, guard, state.
"""
