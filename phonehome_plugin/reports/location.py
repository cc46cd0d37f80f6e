"""Approximate location from the public IP, through the configured ``geoip_url``.

The service answers a GET with JSON in ip-api.com's format. A failure of any
kind leaves the fields empty; it never breaks a report. The answer is cached in
the state store for a day (host clock), so a fleet of restarts does not hammer it.

The answer is read to its end, but never more than :data:`ANSWER_LIMIT` bytes
(an answer is a few hundred): a larger one is a failure, cut off unread rather
than held in memory. It is asked for uncompressed, so the bound is the size in
memory too; an answer compressed anyway is a failure.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from typing import Any

from phonehome_plugin.state.store import Store

log = logging.getLogger(__name__)

CACHE_KEY = "location"
CACHE_SECONDS = 86400.0
TIMEOUT = (2.0, 3.0)
ANSWER_LIMIT = 64 * 1024
"""Most bytes of an answer read; a longer answer is a failed lookup."""
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
    import urllib3

    try:
        with requests.Session() as session:
            session.trust_env = True
            # Streamed, so that only a bounded part of the body is ever read; closed
            # after reading it, so that the service sees a clean close, not a reset.
            with session.get(
                url,
                timeout=TIMEOUT,
                allow_redirects=False,
                stream=True,
                headers={"Accept-Encoding": "identity"},
            ) as answer:
                raw = answer.raw.read(ANSWER_LIMIT + 1, decode_content=False)
                data = _parse(answer.status_code, answer.headers, raw)
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as error:
        log.info("phonehome: location lookup failed (%s); reporting no location", error)
        return None
    if not isinstance(data, dict) or data.get("status") != "success":
        log.info("phonehome: location lookup gave no answer; reporting no location")
        return None
    fields = {key: _text(data.get(name)) for key, name in FIELDS.items()}
    return {"public_ip": _ip(data.get("query")), **fields}


def _parse(status: int, headers: Mapping[str, str], raw: bytes) -> Any:
    """The JSON of a whole, plain 200 answer, else None; ValueError when it is not JSON."""
    if status != 200 or len(raw) > ANSWER_LIMIT:
        return None
    if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return None
    return json.loads(raw)


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
