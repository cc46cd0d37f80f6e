"""Approximate location from the public IP, through the configured ``geoip_url``.

The service answers a GET with JSON in ip-api.com's format. A failure of any
kind leaves the fields empty; it never breaks a report. The answer is cached in
the state store for a day (host clock), so a fleet of restarts does not hammer it.

The same way out as the reports (:meth:`.transport.Transport.for_lookup`): the
configured proxy and CA bundle, the plugin's User-Agent, no redirect followed, and a
hard deadline of ``timeout`` seconds for the whole lookup, so that a slow or trickling
service delays the report it is made for by at most that. Never with the relay's
headers or client certificate: those are for the report endpoint alone.

What the operator chose (``privacy``) is applied before anything is asked or kept:

- ``privacy.location: omit`` or ``privacy.public_ip: omit`` make no lookup at all
  (the service would see the public IP either way), and neither does an empty
  ``geoip_url``;
- ``privacy.location: country`` keeps the country and drops city, region and ISP
  from the answer before it is cached, so they are neither reported nor stored.

The cache entry is keyed by a digest of the URL and the choice, never the URL itself:
a location service's ``?key=`` does not end up in the state (an entry of an earlier
version, which kept the URL, is emptied when it is read). Where no lookup may be made,
the entry is emptied too: what an earlier one found is not kept either.

The answer is read to its end, but never more than :data:`ANSWER_LIMIT` bytes
(an answer is a few hundred): a larger one is a failure, cut off unread rather
than held in memory. It is asked for uncompressed, so the bound is the size in
memory too; an answer compressed anyway is a failure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import threading
from typing import Any

from phonehome_plugin.config.settings import Settings
from phonehome_plugin.delivery.answer import Fetched
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.state.store import Store

log = logging.getLogger(__name__)

CACHE_KEY = "location"
CACHE_SECONDS = 86400.0
ANSWER_LIMIT = 64 * 1024
"""Most bytes of an answer read; a longer answer is a failed lookup."""
FIELDS = {"country": "country", "city": "city", "region": "regionName", "isp": "isp"}
COUNTRY_ONLY = ("country",)
"""The fields ``privacy.location: country`` keeps."""
EMPTY: dict[str, Any] = {"public_ip": None, **dict.fromkeys(FIELDS)}
_NEVER = threading.Event()


def wanted(settings: Settings) -> bool:
    """Whether a lookup may be made at all under ``settings`` (see the module docs)."""
    privacy = settings.privacy
    return bool(settings.geoip_url) and "omit" not in (
        privacy.get("location", "send"),
        privacy.get("public_ip", "send"),
    )


def lookup(
    settings: Settings,
    store: Store,
    now: float,
    *,
    transport: Transport | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """``public_ip`` plus the location fields the settings allow; all None when no
    lookup may be made, or it failed. ``now`` is the host's clock (for the cache);
    ``transport`` defaults to :meth:`.Transport.for_lookup` of ``settings``."""
    if not wanted(settings):
        if store.get(CACHE_KEY):
            store.set(CACHE_KEY, "")  # what an earlier lookup found is not kept either
        return dict(EMPTY)
    choice = settings.privacy.get("location", "send")
    key = cache_key(settings)
    cached = _cached(store, key, now)
    if cached is not None:
        return cached
    fetched = (transport or Transport.for_lookup(settings)).get(
        settings.geoip_url, settings.timeout, cancel or _NEVER, ANSWER_LIMIT
    )
    found = _read(fetched)
    if found is None:
        return dict(EMPTY)
    if choice == "country":
        found = {k: (v if k in ("public_ip", *COUNTRY_ONLY) else None) for k, v in found.items()}
    store.set(CACHE_KEY, json.dumps({"key": key, "at": now, "value": found}))
    return found


def cache_key(settings: Settings) -> str:
    """The key of the cache entry a lookup under ``settings`` reads and writes: a
    digest of the URL and the location choice (the URL may hold the service's key,
    and the state must not)."""
    choice = settings.privacy.get("location", "send")
    return hashlib.sha256(f"{choice}\n{settings.geoip_url}".encode()).hexdigest()


def _cached(store: Store, key: str, now: float) -> dict[str, Any] | None:
    raw = store.get(CACHE_KEY)
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        if "url" in entry:
            # An entry of an earlier version, which kept the URL (and any key in it).
            store.set(CACHE_KEY, "")
            return None
        if entry["key"] == key and 0 <= now - float(entry["at"]) < CACHE_SECONDS:
            return {name: entry["value"].get(name) for name in EMPTY}
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _read(fetched: Fetched) -> dict[str, Any] | None:
    """The fields of a whole, plain, successful 200 answer; None (and one log line that
    quotes neither the URL nor the answer) for anything else."""
    why: str | None = None
    data: Any = None
    if fetched.status is None:
        why = f"({fetched.error})"
    elif fetched.status != 200:
        why = f"(HTTP {fetched.status})"
    elif len(fetched.body) > ANSWER_LIMIT:
        why = f"(an answer of more than {ANSWER_LIMIT} bytes)"
    elif fetched.content_encoding != "identity":
        why = "(a compressed answer)"
    else:
        try:
            data = json.loads(fetched.body)
        except ValueError:
            why = "(not JSON)"
    if why is not None:
        log.info("phonehome: location lookup failed %s; reporting no location", why)
        return None
    if not isinstance(data, dict) or data.get("status") != "success":
        log.info("phonehome: location lookup gave no answer; reporting no location")
        return None
    fields = {key: _text(data.get(name)) for key, name in FIELDS.items()}
    return {"public_ip": _ip(data.get("query")), **fields}


def _ip(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _text(value: Any, limit: int = 80) -> str | None:
    """A place or ISP name: printable, short, one line."""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    if not value.isprintable() or any(ch in value for ch in "<>{}@/\\"):
        return None
    return value.strip()
