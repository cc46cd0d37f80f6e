"""The startup notice: what telemetry sends, where, when, and how to turn it off.

It is logged when telemetry starts for the first time in an installation, and again
whenever what is sent changes: a new schema version, endpoint, mode, or any setting
that changes a report's content (:func:`facts`: privacy choices, the location
lookup, any category a later version adds). What it last told is kept in the
installation's state, so a restart with the same settings logs nothing new.

Each fact gets a line of its own (wrapped, continuation lines indented), so that the
message reads on an 80-column terminal and each way to turn telemetry off can be
copied whole::

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

import dataclasses
import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.guard.secrets import MASK, mask_url

__all__ = [
    "NOTICE_VERSION",
    "WIDTH",
    "changes",
    "chosen",
    "facts",
    "masked",
    "notice",
    "shown_settings",
]

WIDTH = 80
"""Widest line of the notice, in characters."""
NOTICE_VERSION = 2
"""The notice's own version: a new one is shown again once, whatever else changed."""

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

HOW_ONLY = frozenset({"enabled", "interval", "timeout", "proxy", "ca_bundle", "state_url"})
"""Settings that change how or when reports travel, never what they hold; every other
field of :class:`~.settings.Settings` (those added later included) is a fact of the
notice. ``outbox`` bounds local storage, so it is left out too (see :func:`facts`)."""
_LOCAL_ONLY = frozenset({"outbox"})
_PASSWORD = re.compile(r"(?i)(password\s*=\s*)(\S+)")


def notice(
    endpoint: str,
    mode: str,
    interval: int,
    changed: Sequence[str] = (),
    choices: Mapping[str, Any] | None = None,
) -> str:
    """The startup notice for reports going to ``endpoint`` in ``mode`` every ``interval`` s.

    ``changed`` names what changed since the notice was last shown (a line says so);
    ``choices`` are the settings that differ from the defaults and change what a
    report holds (a line lists them: ``privacy.email=omit``...).

    A multi-line message (lines joined by ``\\n``, no trailing newline) whose first
    line starts with ``phonehome:`` and none of whose lines is wider than
    :data:`WIDTH` characters, whatever the arguments: whitespace in the values
    (line breaks included) is folded to single spaces, any other character that does
    not print shows as ``?``, and a word longer than a line (an endpoint of over 70
    characters) is broken across lines rather than let through. Pass the endpoint
    without credentials: it is quoted as given.
    """
    lines = ["phonehome: MaestroHub telemetry is on."]
    if changed:
        said = ", ".join(_printable(name) for name in changed)
        lines += _fact(f"Changed since the last notice: {said}.")
    lines += [
        *_fact(f"What: {WHAT}"),
        *_fact(f"Where: {_printable(endpoint)} (mode {_printable(mode)})."),
        *_fact(f"When: at startup, once at the first user's creation, and every {interval:d} s."),
    ]
    if choices:
        said = ", ".join(f"{_printable(k)}={_printable(_text(v))}" for k, v in choices.items())
        lines += _fact(f"Settings that change what is sent: {said}.")
    lines += [
        *_fact("Turn it off with any one of:"),
        *(_MORE + way for way in WAYS_OFF),
        *_fact("`phonehome preview` shows the next report."),
    ]
    return "\n".join(lines)


def shown_settings(settings: Settings) -> dict[str, Any]:
    """Every field of ``settings`` as plain JSON data, by dotted name (``outbox.max_reports``,
    ``privacy.email``), with credentials masked: what ``phonehome status`` lists.

    Generic over :class:`~.settings.Settings`: a field added later is listed without any
    change here. A URL's user name and password are masked, and so is a ``password=``
    in a libpq keyword string (``state_url``).
    """
    shown: dict[str, Any] = {}
    for item in dataclasses.fields(settings):
        _flatten(item.name, getattr(settings, item.name), shown)
    return shown


def facts(settings: Settings, schema_version: int) -> dict[str, Any]:
    """What the notice stands for: the schema version, the notice's version and every
    setting that changes what is sent (see :data:`HOW_ONLY`). When these differ from
    what the installation was last told, the notice is shown again."""
    found: dict[str, Any] = {"notice": NOTICE_VERSION, "schema_version": schema_version}
    for name, value in shown_settings(settings).items():
        if name.split(".")[0] not in HOW_ONLY | _LOCAL_ONLY:
            found[name] = value
    return found


def changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The facts that differ between ``before`` (as last shown) and ``now``, sorted;
    ``[]`` when they are the same (the notice need not be shown again)."""
    return sorted(k for k in {*before, *now} if before.get(k) != now.get(k))


def chosen(settings: Settings) -> dict[str, Any]:
    """The facts of ``settings`` that differ from the defaults, besides endpoint and mode
    (which the notice states anyway)."""
    defaults = shown_settings(Settings())
    return {
        k: v
        for k, v in facts(settings, 0).items()
        if k in defaults and k not in ("endpoint", "mode") and defaults[k] != v
    }


def _flatten(name: str, value: Any, into: dict[str, Any]) -> None:
    if name == "headers" and isinstance(value, Mapping):
        # A relay's header is a credential as a whole: only its name is shown.
        for key in sorted(value, key=str):
            into[f"{name}.{key}"] = MASK
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            _flatten(f"{name}.{item.name}", getattr(value, item.name), into)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _flatten(f"{name}.{key}", value[key], into)
    else:
        into[name] = _plain(value)


def masked(text: str) -> str:
    """``text`` with any credentials in it masked: a URL's user name, password, query
    values and fragment (:func:`.secrets.mask_url`), and a ``password=`` of a libpq
    keyword string."""
    return _PASSWORD.sub(r"\1***", mask_url(text) if "://" in text else text)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return masked(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return _plain(str(value))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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
