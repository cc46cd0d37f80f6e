"""The startup notice: what telemetry sends, where, when, and how to turn it off.

It is logged once per installation when telemetry starts. Each fact gets a line
of its own (wrapped, continuation lines indented), so that the message reads on
an 80-column terminal and each way to turn telemetry off can be copied whole::

    phonehome: MaestroHub telemetry is on.
      What: reports of aggregate counts and system metadata (version, OS, hostname,
        public IP and approximate location, license, user count and the first admin
        email, connection/pipeline/UNS/execution counts).
      Where: https://telemetry.example.com/v1/reports (mode send).
      When: at startup, once at the first user's creation, and every 3600 s.
      Turn it off with any one of:
        `modules.phonehome.enabled: false` in config.yaml,
        MAESTROHUB_PHONEHOME_ENABLED=false, or
        DO_NOT_TRACK=1.
      `phonehome preview` shows the next report.
"""

from __future__ import annotations

import textwrap

__all__ = ["WIDTH", "notice"]

WIDTH = 80
"""Widest line of the notice, in characters."""

_FACT = "  "
_MORE = "    "

WHAT = (
    "reports of aggregate counts and system metadata (version, OS, hostname, public IP "
    "and approximate location, license, user count and the first admin email, "
    "connection/pipeline/UNS/execution counts)."
)
WAYS_OFF = (
    "`modules.phonehome.enabled: false` in config.yaml,",
    "MAESTROHUB_PHONEHOME_ENABLED=false, or",
    "DO_NOT_TRACK=1.",
)
"""The three switches, one line each; any one of them turns telemetry off."""


def notice(endpoint: str, mode: str, interval: int) -> str:
    """The startup notice for reports going to ``endpoint`` in ``mode`` every ``interval`` s.

    A multi-line message (lines joined by ``\\n``, no trailing newline) whose first
    line starts with ``phonehome:`` and none of whose lines is wider than
    :data:`WIDTH` characters, whatever the arguments: whitespace in ``endpoint``
    and ``mode`` (line breaks included) is folded to single spaces, any other
    character that does not print shows as ``?``, and a word longer than a line
    (an endpoint of over 70 characters) is broken across lines rather than let
    through. Pass the endpoint without credentials: it is quoted as given.
    """
    lines = [
        "phonehome: MaestroHub telemetry is on.",
        *_fact(f"What: {WHAT}"),
        *_fact(f"Where: {_printable(endpoint)} (mode {_printable(mode)})."),
        *_fact(f"When: at startup, once at the first user's creation, and every {interval:d} s."),
        *_fact("Turn it off with any one of:"),
        *(_MORE + way for way in WAYS_OFF),
        *_fact("`phonehome preview` shows the next report."),
    ]
    return "\n".join(lines)


def _printable(value: str) -> str:
    # str.split() knows every line break str.splitlines() does (\x85, \u2028...).
    folded = " ".join(value.split())
    return "".join(ch if ch.isprintable() else "?" for ch in folded)


def _fact(text: str) -> list[str]:
    # Words are never split at hyphens (an endpoint or a setting stays readable), only
    # when a single word is longer than a whole line.
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=_FACT,
        subsequent_indent=_MORE,
        break_on_hyphens=False,
        break_long_words=True,
    )
