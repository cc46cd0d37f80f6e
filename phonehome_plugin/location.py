"""Approximate location from the public IP, through the configured ``geoip_url``.

The service answers a GET with JSON in ip-api.com's format. A failure of any
kind leaves the fields empty; it never breaks a report. The answer is cached in
the state store for a day (host clock), so a fleet of restarts does not hammer it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from phonehome_plugin.store import Store

log = logging.getLogger(__name__)

CACHE_KEY = "location"
CACHE_SECONDS = 86400.0
TIMEOUT = (2.0, 3.0)
FIELDS = {"country": "country", "city": "city", "region": "regionName", "isp": "isp"}
EMPTY: dict[str, Any] = {"public_ip": None, **dict.fromkeys(FIELDS)}


def lookup(url: str, store: Store, now: float) -> dict[str, Any]:
    """``public_ip`` plus the location fields; all None when off or failed."""
    if not url:
        return dict(EMPTY)
    cached = _cached(store, url, now)
    if cached is not None:
        return cached
    found = _fetch(url)
    if found is not None:
        store.set(CACHE_KEY, json.dumps({"url": url, "at": now, "value": found}))
        return found
    return dict(EMPTY)


def _cached(store: Store, url: str, now: float) -> dict[str, Any] | None:
    raw = store.get(CACHE_KEY)
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
        if entry["url"] == url and 0 <= now - float(entry["at"]) < CACHE_SECONDS:
            return dict(entry["value"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


def _fetch(url: str) -> dict[str, Any] | None:
    import requests  # deferred: only the worker thread ever needs it

    try:
        with requests.Session() as session:
            session.trust_env = True
            answer = session.get(url, timeout=TIMEOUT, allow_redirects=False)
            data = answer.json() if answer.status_code == 200 else None
    except (requests.RequestException, ValueError) as error:
        log.info("phonehome: location lookup failed (%s); reporting no location", error)
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
