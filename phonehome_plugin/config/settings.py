"""Reading ``modules.phonehome`` from the host's config.yaml into :class:`Settings`.

Unknown keys are errors, not warnings: a misspelt ``enabeld: false`` must not
leave telemetry on. Any error makes the plugin inert (see :mod:`.switch`).

Bounded work on any input. The section comes from the operator's YAML, and a
few hundred bytes of YAML aliases parse into a small graph of shared lists whose
``repr``, copy or recursive walk is exponential. So nothing here walks a value
of unknown shape:

- a mapping's keys are looked at only up to :data:`KEYS_SCAN` of them (with at
  most 11 known keys, that many keys always hold an unknown one to name);
- a value is checked by its type first; only a mapping the plugin knows
  (``outbox``, ``privacy``) is entered, one level, and only its known keys;
- strings longer than :data:`STRING_MAX` characters are refused before they are
  parsed as URLs or paths;
- error messages quote a value only as :func:`.bounded.describe` has it (type
  and at most a short prefix), and a key as :func:`.bounded.label` has it.

So :func:`parse` takes a constant number of steps (each on at most
:data:`STRING_MAX` characters) whatever the section holds, and every
:class:`ConfigError` message is one line of fewer than :data:`ERROR_MAX`
characters.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from phonehome_plugin.guard.bounded import describe, label

DEFAULT_ENDPOINT = "https://telemetry.maestrohub.com/api/v1/reports"
DEFAULT_GEOIP_URL = "http://ip-api.com/json/?fields=status,query,country,regionName,city,isp"
MODES = ("send", "log", "offline")
PRIVACY_CHOICES = ("send", "hash", "omit")
PRIVACY_FIELDS = ("email", "hostname", "public_ip")
MIN_INTERVAL = 60
KEYS_SCAN = 64
"""Keys of a mapping looked at, at most, to find an unknown one."""
STRING_MAX = 4096
"""Characters a URL, path or other string setting may have (PATH_MAX on Linux)."""
ERROR_MAX = 256
"""Characters a :class:`ConfigError` message has, at most."""


class ConfigError(ValueError):
    """A value in ``modules.phonehome`` is wrong; the message names the key."""


@dataclass(frozen=True)
class OutboxLimits:
    """Bounds of the outbox; the oldest periodic reports are evicted first."""

    max_reports: int = 256
    max_bytes: int = 8 * 1024 * 1024
    max_age_days: float = 7.0


@dataclass(frozen=True)
class Settings:
    """The plugin's validated configuration. Defaults are the documented ones."""

    enabled: bool = True
    mode: str = "send"
    endpoint: str = DEFAULT_ENDPOINT
    interval: int = 3600
    geoip_url: str = DEFAULT_GEOIP_URL
    timeout: float = 10.0
    proxy: str | None = None
    ca_bundle: Path | None = None
    state_url: str | None = None
    outbox: OutboxLimits = field(default_factory=OutboxLimits)
    privacy: Mapping[str, str] = field(
        default_factory=lambda: dict.fromkeys(PRIVACY_FIELDS, "send")
    )


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def section_of(host_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``modules.phonehome`` mapping of a parsed config.yaml (empty when absent)."""
    if not isinstance(host_config, Mapping):
        raise ConfigError(f"config.yaml: expected a mapping, got {describe(host_config)}")
    modules = host_config.get("modules")
    if modules is None:
        return {}
    if not isinstance(modules, Mapping):
        raise ConfigError("modules: expected a mapping")
    section = modules.get("phonehome")
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError("modules.phonehome: expected a mapping")
    return section


def parse(section: Mapping[str, Any]) -> Settings:
    """Validate ``modules.phonehome``; raises :class:`ConfigError` on the first problem.

    Bounded whatever ``section`` holds (see the module docstring).
    """
    _refuse_unknown("modules.phonehome", section, _PARSERS)
    # Every key is known now, so there are at most len(_PARSERS) of them.
    values = {key: _PARSERS[key](f"modules.phonehome.{key}", section[key]) for key in section}
    return Settings(**values)


def _refuse_unknown(where: str, mapping: Mapping[Any, Any], known: Mapping[str, Any]) -> None:
    """Raise naming the first unknown key (in sorted order) among the first KEYS_SCAN.

    Only the first :data:`KEYS_SCAN` keys are looked at: a mapping with more
    keys than there are known ones has an unknown one among any that many.
    """
    unknown = sorted(
        label(key)
        for key in itertools.islice(mapping, KEYS_SCAN)
        if not (isinstance(key, str) and key in known)
    )
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected true or false, got {describe(value)}")


def _choice(choices: tuple[str, ...]) -> Any:
    def check(key: str, value: Any) -> str:
        # The type first: ``in`` would compare whatever ``value`` is with each choice.
        if isinstance(value, str) and value in choices:
            return str.__str__(value)  # a plain str, even from a str subclass
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {describe(value)}")

    return check


def _number(minimum: float, integer: bool = False) -> Any:
    def check(key: str, value: Any) -> float | int:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        # NaN compares false with everything, so it would pass ``value < minimum``;
        # infinity is no usable timeout or age either.
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok or isinstance(value, bool) or value < minimum:
            kind = "a whole number" if integer else "a number"
            raise ConfigError(
                f"{key}: expected {kind} of at least {minimum}, got {describe(value)}"
            )
        number: float | int = value
        return number

    return check


def _endpoint(key: str, value: Any) -> str:
    url = _url(key, value)
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{key}: plain http:// is allowed only for loopback, got {describe(url)}"
        )
    return url


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a URL string, got {describe(value)}")
    _refuse_long(key, value)
    try:
        parts = urlsplit(value)
    except ValueError as error:  # e.g. an unclosed IPv6 bracket; callers catch ConfigError only
        raise ConfigError(f"{key}: expected an http(s) URL, got {describe(value)}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http(s) URL, got {describe(value)}")
    return value


def _refuse_long(key: str, text: str) -> None:
    # Before urlsplit or Path: each copies the text, and urlsplit caches it.
    if len(text) > STRING_MAX:
        raise ConfigError(f"{key}: expected at most {STRING_MAX} characters, got {describe(text)}")


def _geoip(key: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value):
        return ""
    return _url(key, value)


def _optional_str(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        _refuse_long(key, value)
        return value
    raise ConfigError(f"{key}: expected a non-empty string, got {describe(value)}")


def _path(key: str, value: Any) -> Path | None:
    text = _optional_str(key, value)
    return None if text is None else Path(text)


def _outbox(key: str, value: Any) -> OutboxLimits:
    checks = {
        "max_reports": _number(1, integer=True),
        "max_bytes": _number(1024, integer=True),
        "max_age_days": _number(0.01),
    }
    return OutboxLimits(**_submapping(key, value, checks))


def _privacy(key: str, value: Any) -> Mapping[str, str]:
    checks = dict.fromkeys(PRIVACY_FIELDS, _choice(PRIVACY_CHOICES))
    return {**Settings().privacy, **_submapping(key, value, checks)}


def _submapping(key: str, value: Any, checks: Mapping[str, Any]) -> dict[str, Any]:
    """The checked values of a known sub-mapping; only its known keys are read, one level."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {describe(value)}")
    _refuse_unknown(key, value, checks)
    return {name: checks[name](f"{key}.{name}", item) for name, item in value.items()}


_PARSERS: dict[str, Any] = {
    "enabled": _bool,
    "mode": _choice(MODES),
    "endpoint": _endpoint,
    "interval": _number(MIN_INTERVAL, integer=True),
    "geoip_url": _geoip,
    "timeout": _number(0.1),
    "proxy": _optional_str,
    "ca_bundle": _path,
    "state_url": _optional_str,
    "outbox": _outbox,
    "privacy": _privacy,
}
