"""Keeping the operator's secrets out of log lines, messages and stored state.

Configured URLs and headers carry secrets: an endpoint's ``?token=``, a
``user:password@`` in a proxy or PostgreSQL URL, a location service's ``?key=``,
a relay's ``Authorization`` header. Three tools, each total (never raises) and
bounded by the length of its input:

- :func:`mask_url` makes a URL fit to quote: its user info, every query value and
  its fragment become ``***``; scheme, host, port and path stay, so an operator can
  still tell which service is meant. A libpq ``key=value`` string (a ``state_url``
  may be one) keeps its keys and loses the values of the secret ones.
- :func:`url_secrets` lists the secret parts of a URL as the exact substrings a
  log line could carry them as (user info, password, query values), for
- :class:`Redactor`, a :class:`logging.Filter` that replaces those substrings with
  ``***`` in every record of the loggers it is put on (:func:`protect`), its
  exception text included; on the plugin's own threads (named ``phonehome-...``)
  it also masks every URL it finds, and every query value of a request target. It is
  put on the plugin's loggers and those of the HTTP and database libraries it drives
  (urllib3 logs each request line, query string included, at DEBUG), so that a
  secret the plugin hands to them cannot come back out in a log line whatever level
  the host logs at. Records of other threads are changed only where they hold one of
  the configured secrets.

Secrets shorter than :data:`SECRET_MIN` characters are masked inside URLs (and, on
the plugin's threads, in request targets) but not searched for in whole lines:
replacing every ``ab`` in a foreign log line would garble it without protecting
anything worth the name.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["MASK", "SECRET_MIN", "Redactor", "mask_url", "protect", "redactor", "url_secrets"]

MASK = "***"
SECRET_MIN = 4
"""Characters a secret needs to be searched for in whole log lines."""
LOGGERS = ("phonehome_plugin", "urllib3", "requests", "psycopg", "psycopg.pool")
"""Prefixes of the loggers :func:`protect` puts the filter on."""
THREAD_PREFIX = "phonehome-"
"""Threads of the plugin are named so; on them every URL in a record is masked."""

_QUERY_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,40}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# A query's values where a line quotes a request target without its URL's head, as
# urllib3's request line does: ``"POST /v1/reports?token=abc HTTP/1.1"``.
_QUERY_VALUE = re.compile(r"(?<=[?&])([^=&\s'\"#?]+)=[^&\s'\"#]*")
# libpq keyword/value connection strings: the values of these keys are secret.
_LIBPQ_SECRET = re.compile(
    r"\b(password|sslpassword|passfile|sslkey)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """``url`` fit for a log line, a CLI or a stored value (see the module docs).

    ``https://user:pw@relay.example:8443/v1/reports?token=abc#x`` becomes
    ``https://***@relay.example:8443/v1/reports?token=***#***``. Text that does not
    parse as a URL is not quoted at all (``***``), except a libpq ``key=value``
    string, whose secret values alone are masked.
    """
    if "://" not in url:
        if "=" in url:
            return _LIBPQ_SECRET.sub(lambda m: f"{m[1]}={MASK}", url)
        return url if not url.strip() else MASK
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - an out-of-range port raises here, not later
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    masked = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        masked += "?" + "&".join(_masked_pair(pair) for pair in parts.query.split("&"))
    if parts.fragment:
        masked += f"#{MASK}"
    return masked


def _masked_pair(pair: str) -> str:
    name, has_value, _ = pair.partition("=")
    # A name that is not a short plain word may itself be the secret (``?s3cr3t``).
    shown = name if _QUERY_NAME.fullmatch(name) else MASK
    return f"{shown}={MASK}" if has_value else shown


def url_secrets(url: str | None) -> set[str]:
    """The secret substrings of ``url`` as a log line could quote them: the user info
    (whole, and its password alone), each query value (a name without a value: the
    name), the fragment; for a libpq string, its secret values."""
    found: set[str] = set()
    if not url:
        return found
    if "://" not in url:
        for match in _LIBPQ_SECRET.finditer(url):
            found.add(match[2])
            found.add(match[2].strip("'"))
        return found
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.add(userinfo)
        # The password alone too; the user name alone is no secret (and "postgres"
        # masked in every line would garble the database library's own messages).
        found.add(userinfo.partition(":")[2])
    if parts.query:
        for pair in parts.query.split("&"):
            name, _, value = pair.partition("=")
            found.update({value} if value else {name})
    if parts.fragment:
        found.add(parts.fragment)
    return {secret for secret in found if secret}


class Redactor(logging.Filter):
    """Masks the secrets it knows in every record it sees; never drops a record.

    Thread-safe: secrets may be added while other threads log.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` from now on (those shorter than :data:`SECRET_MIN` only in URLs)."""
        with self._lock:
            known = set(self._secrets) | {s for s in secrets if len(s) >= SECRET_MIN}
            # Longest first: a secret that contains another is masked whole.
            self._secrets = tuple(sorted(known, key=lambda s: (-len(s), s)))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def redact(self, text: str, urls: bool = False) -> str:
        """``text`` with every known secret (and, when ``urls``, every URL) masked."""
        if urls:
            text = _URL.sub(lambda m: mask_url(m[0]), text)
            text = _QUERY_VALUE.sub(lambda m: f"{m[1]}={MASK}", text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        ours = (record.threadName or "").startswith(THREAD_PREFIX) or (
            record.name or ""
        ).startswith(LOGGERS[0])
        if not self._secrets and not ours:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        masked = self.redact(message, urls=ours)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted here once, masked: handlers use exc_text when it is set.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redact(text, urls=ours)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info, urls=ours)
        return True


_redactor = Redactor()
_installed: set[str] = set()
_install_lock = threading.Lock()


def redactor() -> Redactor:
    """The process's one :class:`Redactor` (what :func:`protect` installs)."""
    return _redactor


def protect(secrets: Iterable[str]) -> Redactor:
    """Mask ``secrets`` in every record of the plugin's, urllib3's, requests' and
    psycopg's loggers from now on; returns the filter. Idempotent: the filter is put
    on each logger once, and secrets add up (one process, one configuration)."""
    _redactor.add(secrets)
    with _install_lock:
        names = {name for name in LOGGERS}
        names.update(
            name
            for name in list(logging.Logger.manager.loggerDict)
            if any(name.startswith(prefix + ".") for prefix in LOGGERS)
        )
        for name in sorted(names - _installed):
            logging.getLogger(name).addFilter(_redactor)
            _installed.add(name)
    return _redactor
