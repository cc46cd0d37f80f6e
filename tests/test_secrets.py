"""Masking secrets: URLs fit to quote, their secret parts, and the log filter that keeps
them out of every record of the plugin's and its libraries' loggers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from phonehome_plugin.guard import secrets
from phonehome_plugin.guard.secrets import MASK, Redactor, mask_url, url_secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://telemetry.example/v1/reports", "https://telemetry.example/v1/reports"),
        (
            "https://ingest:pw@telemetry.example:8443/v1?token=abc&site=7#frag",
            "https://***@telemetry.example:8443/v1?token=***&site=***#***",
        ),
        ("http://token@relay.example/", "http://***@relay.example/"),
        ("http://a:b@c@relay.example/", "http://***@relay.example/"),
        ("https://geo.example/json?flag", "https://geo.example/json?flag"),
        ("https://geo.example/json?s3cr3t%20key", "https://geo.example/json?***"),
        ("https://geo.example/json?=x", "https://geo.example/json?***=***"),
        ("postgresql://phonehome:pw@db.example:5432/t?sslpassword=x", None),
        ("https://[::1/x?token=abc", MASK),
        ("https://host:99999/x?token=abc", MASK),
        ("not a url", MASK),
        ("", ""),
        ("host=db.example user=phonehome password=pw dbname=t", None),
        ("host=db password='p w' sslkey=/k", "host=db password=*** sslkey=***"),
    ],
)
def test_mask_url(url: str, masked: str | None) -> None:
    got = mask_url(url)
    if masked is not None:
        assert got == masked
    assert "pw" not in got and "abc" not in got and "s3cr3t" not in got


def test_a_libpq_string_keeps_its_keys() -> None:
    got = mask_url("host=db.example user=phonehome password=pw dbname=t")
    assert got == "host=db.example user=phonehome password=*** dbname=t"


def test_url_secrets_are_the_substrings_a_line_could_carry() -> None:
    found = url_secrets("https://ingest:pw-123@relay.example/v1?token=abc&x=1#frag")
    assert found == {"ingest:pw-123", "pw-123", "abc", "1", "frag"}
    assert "ingest" not in found, "a user name alone is no secret"
    assert url_secrets(None) == set() and url_secrets("") == set()
    assert url_secrets("https://plain.example/path") == set()
    assert url_secrets("host=db password='p w'") >= {"p w"}


class Keeping(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, list[logging.LogRecord], Redactor]]:
    """A logger with a fresh Redactor on it, and the records (as handled) it passed on."""
    logger = logging.getLogger("phonehome_plugin.tests.secrets")
    records: list[logging.LogRecord] = []
    handler = Keeping(records)
    redactor = Redactor()
    logger.addFilter(redactor)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, records, redactor
    logger.removeHandler(handler)
    logger.removeFilter(redactor)
    logger.propagate = True


def _text(record: logging.LogRecord) -> str:
    return logging.Formatter().format(record)


def test_the_filter_masks_known_secrets_in_message_arguments_and_tracebacks(
    logged: tuple[logging.Logger, list[logging.LogRecord], Redactor],
) -> None:
    logger, records, redactor = logged
    redactor.add({"SECRET-TOKEN", "ab"})
    logger.debug('"GET /json?key=%s HTTP/1.1" 200', "SECRET-TOKEN")
    try:
        raise ValueError("failed with SECRET-TOKEN")
    except ValueError:
        logger.exception("oops")
    assert len(records) == 2, "no record is dropped"
    assert _text(records[0]) == '"GET /json?key=*** HTTP/1.1" 200'
    assert "SECRET-TOKEN" not in _text(records[1])
    assert "failed with ***" in _text(records[1])
    assert "ab" in redactor.redact("ab cd"), "too short to search whole lines for"


def test_on_the_plugins_threads_every_url_is_masked(
    logged: tuple[logging.Logger, list[logging.LogRecord], Redactor],
) -> None:
    logger, records, _ = logged
    foreign = logging.getLogger("urllib3.tests.secrets")
    foreign.addFilter(logged[2])
    foreign.addHandler(logger.handlers[0])
    foreign.propagate = False
    foreign.setLevel(logging.DEBUG)
    try:

        def log() -> None:
            foreign.debug("to %s", "https://u:never-configured@h.example/?k=v")

        for name in ("phonehome-post", "host-thread"):
            thread = threading.Thread(target=log, name=name)
            thread.start()
            thread.join()
    finally:
        foreign.removeFilter(logged[2])
        foreign.removeHandler(logger.handlers[0])
        foreign.propagate = True
    assert [_text(r) for r in records] == [
        "to https://***@h.example/?k=***",
        "to https://u:never-configured@h.example/?k=v",  # not the plugin's: left alone
    ]


def test_on_the_plugins_threads_a_request_targets_query_values_are_masked() -> None:
    redactor = Redactor()
    line = '127.0.0.1:443 "POST /v1/reports?token=abc&site=7 HTTP/1.1" 202 0'
    assert redactor.redact(line, urls=True) == (
        '127.0.0.1:443 "POST /v1/reports?token=***&site=*** HTTP/1.1" 202 0'
    )
    assert redactor.redact(line) == line, "elsewhere only known secrets are masked"


def test_a_record_whose_arguments_do_not_format_is_passed_on_untouched(
    logged: tuple[logging.Logger, list[logging.LogRecord], Redactor],
) -> None:
    redactor = logged[2]
    redactor.add({"SECRET-TOKEN"})
    assert redactor.filter(logging.makeLogRecord({"msg": "%s %s", "args": ("one",)}))


def test_protect_puts_one_filter_on_each_library_logger() -> None:
    import urllib3.connectionpool  # noqa: F401

    import phonehome_plugin.delivery.sender  # noqa: F401  (its logger exists)

    redactor = secrets.protect({"SECRET-PROTECTED"})
    for name in ("phonehome_plugin", "phonehome_plugin.delivery.sender", "urllib3.connectionpool"):
        assert logging.getLogger(name).filters.count(redactor) == 1, name
    assert secrets.protect({"SECRET-TWO"}) is redactor
    assert logging.getLogger("urllib3.connectionpool").filters.count(redactor) == 1
    assert {"SECRET-PROTECTED", "SECRET-TWO"} <= set(redactor.secrets)
