"""The privacy guard: what may enter a report, and in which shape.

Reports are built from an allowlist of fields; this module decides which
*values* may fill them. Strings are limited to short identifiers; anything that
looks like a secret, a URL, an email address, a path or free text is dropped and
counted, never truncated into the report.

Bounded work on any input, since every value here is foreign (a signal
argument, a collector's section):

- a string is looked at only when it is short: :func:`identifier` refuses one
  longer than :data:`IDENT_MAX` by its length, before matching, hashing or
  caching it; :func:`is_email` likewise past 254 characters;
- :func:`section` looks at most at :data:`KEYS_MAX` entries of a section and
  at most :data:`KEYS_MAX` of each mapping nested in them, and never deeper:
  at most ``KEYS_MAX * (KEYS_MAX + 1)`` entries, whatever ``collect()``
  returned (a huge, deep or self-referencing mapping). Entries past the first
  :data:`KEYS_MAX` are dropped and counted unseen, from the mapping's length.

Bounded memory on any input. The one cache here (:func:`identifier`'s verdicts)
holds at most :data:`CACHE_MAX` strings of at most :data:`IDENT_MAX` characters
each, plain ``str`` copies only (a ``str`` subclass the host passed, with
whatever it carries, is never kept), about a megabyte at most whatever the host
sends; :func:`forget` empties it, and the runtime calls it at ``on_shutdown``,
so that nothing the host handed over stays in this module after telemetry stops.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from phonehome_plugin.guard.bounded import type_name

IDENT_MAX = 64
KEYS_MAX = 200
CACHE_MAX = 4096
"""Strings :func:`identifier` remembers its verdict on (least recently used dropped)."""
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,63}")
# A long unbroken run of letters and digits reads like a token or key, not a name.
# 32 characters is a 128-bit key in hex (token_hex(16), uuid4().hex) or base64 of 24 bytes.
_TOKENISH = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
# Cloud access key ids and similar: a run of 16 or more capitals and digits, mixing both
# (AKIAIOSFODNN7EXAMPLE is 20), where names and versions use separators.
_KEYISH = re.compile(
    r"(?=[A-Z0-9]*[0-9])(?=[A-Z0-9]*[A-Z])[A-Z0-9]{16,}"
    r"|(AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}"
)
_SECRET_WORDS = re.compile(r"(?i)(passw|secret|token|api[_-]?key|bearer|private|credential)")
_EMAIL = re.compile(r"[^@\s]{1,64}@(?=[^@\s]{1,253}\Z)[^@\s.]+(?:\.[^@\s.]+)*")
"""One address as a host accepts it: a local part, ``@``, a domain of one or more
non-empty labels, which may be a single name (``admin@localhost``) and need not be
ASCII (``josé@münchen.de``); no whitespace anywhere, one ``@``."""
OTHER = "other"


class DropCounter:
    """Counts values the guard refused, by reason; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, reason: str, count: int = 1) -> None:
        """Count ``count`` values refused for ``reason``."""
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + count

    def take(self) -> dict[str, int]:
        """Return the counts so far and start again from zero."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts


def identifier(value: Any) -> str | None:
    """``value`` when it is a short identifier (``mqtt``, ``system.uns.publish``), else None.

    What is returned is always a plain ``str``, equal to ``value``.
    """
    # The length before the cache: hashing is linear, and the cache would keep the string.
    if type(value) is not str:
        # A str subclass: its length read by str's own method (not one it overrides),
        # then a plain copy of its text, so that the cache and the counts keep only
        # that, never the host's object (its attributes, its own hash and eq).
        if not isinstance(value, str) or str.__len__(value) > IDENT_MAX:
            return None
        value = str.__str__(value)
    elif len(value) > IDENT_MAX:
        return None
    return _identifier(value)


def forget() -> None:
    """Empty the cache of :func:`identifier`: it then holds nothing it was given."""
    _identifier.cache_clear()


def cached() -> int:
    """How many strings :func:`identifier`'s cache holds now (at most :data:`CACHE_MAX`)."""
    return _identifier.cache_info().currsize


@lru_cache(maxsize=CACHE_MAX)
def _identifier(value: str) -> str | None:
    # Cached: a large inventory repeats a few dozen type names tens of thousands of times.
    if not _IDENT.fullmatch(value):
        return None
    if _SECRET_WORDS.search(value) or _TOKENISH.search(value) or _KEYISH.search(value):
        return None
    return value


def bucket(value: Any) -> str:
    """An identifier to count under: ``value`` itself, or ``other`` when it is not one."""
    return identifier(value) or OTHER


def is_email(value: Any) -> bool:
    """True when ``value`` is shaped like one email address (see :data:`_EMAIL`)."""
    # fullmatch: with match, "$" would also accept a trailing newline.
    return isinstance(value, str) and len(value) <= 254 and bool(_EMAIL.fullmatch(value))


def count(value: Any) -> int | None:
    """A non-negative whole count, or None (booleans and floats are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def pseudonym(value: str, salt: bytes) -> str:
    """A keyed hash of ``value``: stable for one installation, useless without its salt."""
    import hashlib  # deferred: loading libcrypto costs megabytes the host need not pay for
    import hmac

    digest = hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest[:32]}"


def scalar(value: Any) -> bool | int | float | str | None:
    """A value allowed in a collector section, or None when it must be dropped."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return identifier(value)


def section(raw: Any, drops: DropCounter) -> dict[str, Any]:
    """Clean a third-party collector's section: keys and leaves as the contract allows.

    One level of nesting is allowed; deeper structure, bad keys and bad leaves
    are dropped and counted. At most :data:`KEYS_MAX` entries of each level are
    kept, and at most that many are looked at: the rest are dropped and counted
    as ``collector_key`` without being read. Raises ``TypeError`` when ``raw`` is
    not a mapping.
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):  # the ABC's check last
        raise TypeError(f"collect() returned {type_name(raw)}, not a mapping")
    return _level(raw, drops, nested_ok=True)


def _level(raw: Mapping[Any, Any], drops: DropCounter, nested_ok: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen = 0
    for key, value in itertools.islice(raw.items(), KEYS_MAX):
        seen += 1
        name = _identifier(key) if type(key) is str and len(key) <= IDENT_MAX else identifier(key)
        if name is None:
            drops.add("collector_key")
            continue
        kind = type(value)
        # The built-in types a section is made of, decided without the Mapping ABC's
        # isinstance (a report of 500 collectors cleans thousands of values).
        if kind is int:
            clean = value if abs(value) < 2**63 else None  # scalar(), for an exact int
        elif kind is str:
            clean = _identifier(value) if len(value) <= IDENT_MAX else None
        elif kind is bool or kind is float:
            clean = scalar(value)
        elif kind is dict or isinstance(value, Mapping):
            if nested_ok:
                out[name] = _level(value, drops, nested_ok=False)
                continue
            clean = None
        else:
            clean = scalar(value)
        if clean is None:
            drops.add("collector_value")
            continue
        out[name] = clean
    unseen = len(raw) - seen
    if unseen > 0:  # a mapping's len may disagree with what it yields: never count below 0
        drops.add("collector_key", unseen)
    return out
