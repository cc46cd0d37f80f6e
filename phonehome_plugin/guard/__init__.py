"""Guards on foreign values, for every stage: what a value may become in a report
(:mod:`.privacy`, the privacy guard) and how it may be quoted in a message
(:mod:`.bounded`), each in bounded time whatever the value.

Below the stages rather than in ``reports/`` or ``config/``: the receivers and the
inventory apply the privacy guard on the host's threads as they count, long before
a report exists, and the settings, the switch, the collectors and the schema check
all quote values they did not make.

May import: nothing.
"""
