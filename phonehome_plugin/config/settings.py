"""Reading ``modules.phonehome`` from the host's config.yaml into :class:`Settings`.

Unknown keys are errors, not warnings: a misspelt ``enabeld: false`` must not
leave telemetry on. Any error makes the plugin inert (see :mod:`.switch`).

Bounded work on any input. The section comes from the operator's YAML, and a
few hundred bytes of YAML aliases parse into a small graph of shared lists whose
``repr``, copy or recursive walk is exponential. So nothing here walks a value
of unknown shape:

- a mapping's keys are looked at only up to :data:`KEYS_SCAN` of them (with at
  most 16 known keys, that many keys always hold an unknown one to name);
- a value is checked by its type first; only a mapping the plugin knows
  (``outbox``, ``privacy``, ``categories``, ``headers``) is entered, at most two
  levels, and only its known keys (``headers``: its first :data:`HEADERS_MAX`);
  a list of globs is read up to :data:`GLOBS_MAX` items, each checked by type;
- strings longer than :data:`STRING_MAX` characters are refused before they are
  parsed as URLs or paths;
- error messages quote a value only as :func:`.bounded.describe` has it (type
  and at most a short prefix), and a key as :func:`.bounded.label` has it.

So :func:`parse` takes a constant number of steps (each on at most
:data:`STRING_MAX` characters) whatever the section holds, and every
:class:`ConfigError` message is one line of fewer than :data:`ERROR_MAX`
characters.

Secrets. URLs and headers hold them, so an error message never quotes a header's
value, and quotes a URL only masked (:func:`.secrets.mask_url`); :func:`effective`
lists the settings as an operator may see them, masked the same way, and is also
what a :class:`Settings` shows as its ``repr``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from phonehome_plugin.guard.bounded import describe, label
from phonehome_plugin.guard.secrets import MASK, mask_url, url_secrets

DEFAULT_ENDPOINT = "https://telemetry.maestrohub.com/api/v1/reports"
DEFAULT_GEOIP_URL = "http://ip-api.com/json/?fields=status,query,country,regionName,city,isp"
MODES = ("send", "log", "offline")
PRIVACY_CHOICES = ("send", "hash", "omit")
PRIVACY_FIELDS = ("email", "hostname", "public_ip")
LOCATION_CHOICES = ("send", "country", "omit")
"""``privacy.location``: every location field, the country alone, or no lookup at all."""
HEADERS_MAX = 32
"""Extra request headers (``headers``) at most."""
RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "host",
        "idempotency-key",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
"""Header names ``headers`` may not set: the plugin's own (the receiver reads them) and
those of the HTTP framing, which a relay header has no business changing."""
GLOBS_MAX = 64
"""Globs in one of ``categories.collectors``' lists at most."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
"""An HTTP header name (RFC 9110 token), of at most 64 characters."""
_GLOB = re.compile(r"[a-z0-9_.*?\[\]!\-]{1,128}")
"""A glob over collector names (dotted, lower case)."""
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
class Categories:
    """What the operator switched off beyond the page's categories (``categories``).

    :param system_details: the ``system`` fields beyond the public page's examples
        (``os_release``, ``python``, ``cpu_count``, ``memory_mb``).
    :param collectors_allow: globs over collector names; a third-party section is sent
        only when one of them matches its name (``*`` by default: every section).
    :param collectors_deny: globs over collector names; a match switches the section
        off whatever ``collectors_allow`` says.
    """

    system_details: bool = True
    collectors_allow: tuple[str, ...] = ("*",)
    collectors_deny: tuple[str, ...] = ()

    def collector_on(self, name: str) -> bool:
        """Whether collector ``name``'s section may be sent."""
        # The defaults (every section, none denied) decided without a glob: a report
        # asks this of each of its collectors.
        if self.collectors_deny and any(
            fnmatch.fnmatchcase(name, glob) for glob in self.collectors_deny
        ):
            return False
        return self.collectors_allow == ("*",) or any(
            fnmatch.fnmatchcase(name, glob) for glob in self.collectors_allow
        )


@dataclass(frozen=True, repr=False)
class Settings:
    """The plugin's validated configuration. Defaults are the documented ones.

    Its ``repr`` is :func:`effective`'s, secrets masked: a settings object that ends up
    in a log line or a traceback shows no token, password or header value.
    """

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
        default_factory=lambda: {**dict.fromkeys(PRIVACY_FIELDS, "send"), "location": "send"}
    )
    categories: Categories = field(default_factory=Categories)
    prerelease_endpoint: str | None = None
    """Where reports of a pre-release MaestroHub version go instead of ``endpoint``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers of every report request (a relay's), never of the location lookup."""
    client_cert: Path | None = None
    """Client certificate (PEM) for mutual TLS with the endpoint, never the lookup."""
    client_key: Path | None = None
    """Its private key (PEM, unencrypted), when not in ``client_cert``'s file."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in effective(self))
        return f"Settings({shown})"


Shown = str | int | float | bool | None
"""A setting's value as :func:`effective` shows it: plain, JSON-ready."""


def effective(settings: Settings) -> list[tuple[str, Shown]]:
    """Every setting as ``(dotted key, value)`` pairs, in the documented order, fit to
    show an operator (``phonehome status``, ``preview``) or to log: each URL masked by
    :func:`.secrets.mask_url`, each header value ``***``, a list of globs joined by
    commas, an unset value None."""
    pairs: list[tuple[str, Shown]] = []
    for item in fields(settings):
        value = getattr(settings, item.name)
        key = item.name
        if key in _URL_KEYS:
            pairs.append((key, None if value is None else mask_url(value)))
        elif isinstance(value, Path):
            pairs.append((key, str(value)))
        elif key == "headers":
            pairs.extend((f"headers.{name}", MASK) for name in value)
        elif key == "privacy":
            pairs.extend((f"privacy.{name}", choice) for name, choice in value.items())
        elif isinstance(value, OutboxLimits):
            pairs.extend((f"outbox.{f.name}", getattr(value, f.name)) for f in fields(value))
        elif isinstance(value, Categories):
            pairs.append(("categories.system_details", value.system_details))
            pairs.append(("categories.collectors.allow", ",".join(value.collectors_allow)))
            pairs.append(("categories.collectors.deny", ",".join(value.collectors_deny)))
        else:
            pairs.append((key, value))
    return pairs


_URL_KEYS = frozenset({"endpoint", "prerelease_endpoint", "geoip_url", "proxy", "state_url"})


def secret_values(settings: Settings) -> set[str]:
    """The secret substrings of the settings as a log line could carry them (see
    :func:`.secrets.url_secrets`): of every URL, and each header's value."""
    found: set[str] = set()
    for key in sorted(_URL_KEYS):
        found |= url_secrets(getattr(settings, key))
    found.update(value for value in settings.headers.values() if value)
    return found


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
    if values.get("client_key") is not None and values.get("client_cert") is None:
        raise ConfigError("modules.phonehome.client_key: set client_cert too (the certificate)")
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
            f"{key}: plain http:// is allowed only for loopback, got {_quoted_url(url)}"
        )
    return url


def _optional_endpoint(key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value):
        return None
    return _endpoint(key, value)


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a URL string, got {describe(value)}")
    _refuse_long(key, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - an out-of-range port raises here, not in the transport
    except ValueError as error:  # e.g. an unclosed IPv6 bracket; callers catch ConfigError only
        raise ConfigError(f"{key}: expected an http(s) URL, got {_quoted_url(value)}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http(s) URL, got {_quoted_url(value)}")
    return value


def _quoted_url(url: str) -> str:
    """A URL for an error message: masked first (its secrets never reach the log), then
    described (bounded, one line)."""
    return describe(mask_url(url))


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
        return str.__str__(value)
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
    checks = {
        **dict.fromkeys(PRIVACY_FIELDS, _choice(PRIVACY_CHOICES)),
        "location": _choice(LOCATION_CHOICES),
    }
    return {**Settings().privacy, **_submapping(key, value, checks)}


def _categories(key: str, value: Any) -> Categories:
    checks = {"system_details": _bool, "collectors": _collectors}
    chosen = _submapping(key, value, checks)
    allow, deny = chosen.pop("collectors", (("*",), ()))
    return Categories(**chosen, collectors_allow=allow, collectors_deny=deny)


def _collectors(key: str, value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``categories.collectors``: true (all), false (none), or ``{allow: [...], deny: [...]}``."""
    if isinstance(value, bool):
        return (("*",) if value else ()), ()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key}: expected true, false or a mapping of allow and deny, got {describe(value)}"
        )
    lists = _submapping(key, value, {"allow": _globs, "deny": _globs})
    return lists.get("allow", ("*",)), lists.get("deny", ())


def _globs(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone glob, as YAML makes of `deny: acme.*`
        value = [value]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of globs, got {describe(value)}")
    items = list(itertools.islice(value, GLOBS_MAX + 1))
    if len(items) > GLOBS_MAX:
        raise ConfigError(f"{key}: expected at most {GLOBS_MAX} globs")
    for item in items:
        if not (isinstance(item, str) and _GLOB.fullmatch(item)):
            raise ConfigError(
                f"{key}: expected globs over collector names like acme.*, got {describe(item)}"
            )
    return tuple(str.__str__(item) for item in items)


def _headers(key: str, value: Any) -> Mapping[str, str]:
    """Extra request headers; a value is never quoted (it is usually a credential)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of header names to values")
    items = list(itertools.islice(value.items(), HEADERS_MAX + 1))
    if len(items) > HEADERS_MAX:
        raise ConfigError(f"{key}: expected at most {HEADERS_MAX} headers")
    found: dict[str, str] = {}
    for name, text in items:
        if not (isinstance(name, str) and _TOKEN.fullmatch(name)):
            raise ConfigError(f"{key}.{label(name)}: not a header name")
        where = f"{key}.{name}"
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(f"{where}: set by the plugin itself, not in headers")
        if name.lower() in {n.lower() for n in found}:
            raise ConfigError(f"{where}: given twice")
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: expected a non-empty string")
        _refuse_long(where, text)
        # One line of visible characters: a line break would smuggle in a header.
        if not (text.isprintable() and text.isascii()) or text != text.strip():
            raise ConfigError(f"{where}: expected one line of printable ASCII")
        found[str.__str__(name)] = str.__str__(text)
    return found


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
    "categories": _categories,
    "prerelease_endpoint": _optional_endpoint,
    "headers": _headers,
    "client_cert": _path,
    "client_key": _path,
}
