"""Getting stored reports to the endpoint: what one POST came to (:mod:`.answer`), the
POST itself with its hard deadline (:mod:`.transport`, the only code that opens a
socket to the endpoint) and cutting an abandoned one off (:mod:`.cutoff`), which
answers are retried and how (:mod:`.retry`), and the sender that takes due reports
from the outbox through one send series each (:mod:`.sender`).

Runs on the worker's thread only.

May import: config, state.
"""
