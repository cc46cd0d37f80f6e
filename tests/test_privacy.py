"""Tests for :mod:`phonehome_plugin.guard.privacy`: which values may enter a report."""

from __future__ import annotations

import base64
import json
import string
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Endpoint, make_host, phonehome_config, settle
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bounded import PEAK_MAX, traced

from phonehome_plugin.guard import privacy
from phonehome_plugin.guard.privacy import DropCounter

# Strategies -----------------------------------------------------------------------------

IDENT_CHARS = string.ascii_letters + string.digits + "_.:+-"
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"

_filler = st.text(alphabet=IDENT_CHARS, max_size=12)

secret_words = st.sampled_from(
    [
        "password",
        "Password",
        "passwd",
        "db_password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "TOKEN",
        "api_key",
        "apikey",
        "api-key",
        "X-Api-Key",
        "bearer",
        "Bearer",
        "private",
        "private_key",
        "credential",
        "credentials",
    ]
)
# An identifier-shaped string that merely contains a secret word (e.g. "db_password").
named_secrets = st.builds(lambda a, w, b: f"{a}{w}{b}", _filler, secret_words, _filler)
# Key/value and header forms.
assigned_secrets = st.builds(
    lambda w, sep, v: f"{w}{sep}{v}",
    secret_words,
    st.sampled_from(["=", ":", ": ", " "]),
    st.text(alphabet=ALNUM, min_size=1, max_size=20),
)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Random tokens of at least 128 bits in their usual encodings (token_hex(16), uuid4().hex,
# base64 keys, vendor-prefixed API keys, JWTs).
hex_tokens = st.binary(min_size=16, max_size=40).map(bytes.hex)
b64_tokens = st.binary(min_size=24, max_size=48).map(_b64)
b64url_tokens = st.binary(min_size=24, max_size=48).map(_b64url)
vendor_tokens = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["ghp_", "gho_", "sk_live_", "sk_test_", "xoxb-", "npm_", "glpat-", "AIza"]),
    st.text(alphabet=ALNUM, min_size=28, max_size=40),
)
jwts = st.builds(
    lambda claims, sig: ".".join(
        [
            _b64url(b'{"alg":"HS256","typ":"JWT"}'),
            _b64url(json.dumps(claims).encode()),
            _b64url(sig),
        ]
    ),
    st.dictionaries(st.text(ALNUM, min_size=1, max_size=8), st.integers(), max_size=4),
    st.binary(min_size=32, max_size=64),
)
secrets_ = st.one_of(
    named_secrets, assigned_secrets, hex_tokens, b64_tokens, b64url_tokens, vendor_tokens, jwts
)

emails = st.emails()

_user = st.text(alphabet=ALNUM + "._-", min_size=1, max_size=12)
_password = st.text(alphabet=ALNUM + "!$%&*()-_", min_size=1, max_size=16)
_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)
urls_with_credentials = st.builds(
    lambda scheme, user, pw, host, path: f"{scheme}://{user}:{pw}@{host}{path}",
    st.sampled_from(["http", "https", "mqtt", "postgresql", "opc.tcp", "amqp"]),
    _user,
    _password,
    _host,
    st.sampled_from(["", "/", "/db", "/api/v1?x=1"]),
)

_segment = st.text(alphabet=ALNUM + "._-", min_size=1, max_size=10)
posix_paths = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["/", "./", "../", "~/", ""]),
    st.lists(_segment, min_size=2, max_size=5),
)
windows_paths = st.builds(
    lambda drive, parts: f"{drive}:\\" + "\\".join(parts),
    st.sampled_from(list("CDEZ")),
    st.lists(_segment, min_size=1, max_size=5),
)
unc_paths = st.builds(
    lambda parts: "\\\\" + "\\".join(parts), st.lists(_segment, min_size=2, max_size=4)
)
paths = st.one_of(posix_paths, windows_paths, unc_paths)

_word = st.text(alphabet=string.ascii_letters, min_size=1, max_size=10)
free_text = st.builds(
    lambda words, sep, end: sep.join(words) + end,
    st.lists(_word, min_size=2, max_size=8),
    st.sampled_from([" ", "  ", "\t", "\n", ", "]),
    st.sampled_from(["", ".", "!", "?"]),
)

forbidden = st.one_of(secrets_, emails, urls_with_credentials, paths, free_text)


# Property tests -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(value=forbidden)
def test_forbidden_values_are_never_identifiers(value: str) -> None:
    assert privacy.identifier(value) is None
    assert privacy.bucket(value) == privacy.OTHER
    assert privacy.scalar(value) is None


@settings(max_examples=300, deadline=None)
@given(value=forbidden, number=st.integers(min_value=-(2**62), max_value=2**62))
def test_forbidden_values_never_pass_section_as_keys_or_values(value: str, number: int) -> None:
    drops = DropCounter()
    raw = {
        "kept": number,
        "as_value": value,
        value: 1,
        "nested": {"as_value": value, value: 2, "kept": True},
    }
    assert privacy.section(raw, drops) == {"kept": number, "nested": {"kept": True}}
    assert drops.take() == {"collector_key": 2, "collector_value": 2}


@settings(max_examples=100, deadline=None)
@given(value=secrets_)
def test_secrets_never_survive_inside_a_nested_list_or_mapping(value: str) -> None:
    drops = DropCounter()
    out = privacy.section({"a": {"b": {"c": value}}, "l": [value], "t": (value,)}, drops)
    assert value not in json.dumps(out)
    assert out == {"a": {}}


# identifier -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "mqtt",
        "opcua",
        "s7",
        "system.uns.publish",
        "trigger.webhook",
        "completed_with_errors",
        "6.8.0-1015-aws",
        "10.0.22631",
        "x86_64",
        "v2.3.0+build.7",
        "ns:topic",
        "A",
        "0",
        "abcd.efgh." * 6 + "ijkl",
    ],
)
def test_identifier_accepts_short_identifiers(value: str) -> None:
    assert privacy.identifier(value) == value
    assert privacy.bucket(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "_leading_underscore",
        ".dot",
        "-dash",
        "with space",
        "tab\there",
        "new\nline",
        "trailing\n",
        "a/b",
        "a\\b",
        "a@b",
        "café",
        "a,b",
        "a;b",
        "a=b",
        "abcd.efgh." * 6 + "ijklm",  # 65 characters
        "a" * 32,
        secrets_hex := "5f4dcc3b5aa765d61d8327deb882cf99",  # 128-bit hex, like token_hex(16)
        secrets_hex.upper(),
        "a" * 200,
    ],
)
def test_identifier_rejects_everything_else(value: str) -> None:
    assert privacy.identifier(value) is None
    assert privacy.bucket(value) == "other"


@pytest.mark.parametrize("value", [None, 1, 1.5, True, b"mqtt", ["mqtt"], {"mqtt": 1}, object()])
def test_identifier_rejects_non_strings(value: Any) -> None:
    assert privacy.identifier(value) is None
    assert privacy.bucket(value) == "other"


def test_identifier_length_limit_is_exactly_ident_max() -> None:
    longest = ("ab.cd." * 20)[: privacy.IDENT_MAX - 1] + "z"
    assert len(longest) == privacy.IDENT_MAX
    assert privacy.identifier(longest) == longest
    assert privacy.identifier(longest + "z") is None


@pytest.mark.parametrize(
    "word",
    [
        "passw",
        "secret",
        "token",
        "api_key",
        "api-key",
        "apikey",
        "bearer",
        "private",
        "credential",
    ],
)
def test_identifier_rejects_secret_words_in_any_case_and_position(word: str) -> None:
    for value in (word, word.upper(), f"x.{word}", f"{word}_count", f"my{word.title()}2"):
        assert privacy.identifier(value) is None, value


# is_email -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com",
        "a.b+tag@mail.example.co.uk",
        "x@y.io",
        "ALICE@EXAMPLE.COM",
        # What a host accepts as a first admin, and so the report keeps as it is.
        "admin@localhost",
        "alice@example",
        "josé@münchen.de",
        "operator@factory.internal",
    ],
)
def test_is_email_accepts_addresses(value: str) -> None:
    assert privacy.is_email(value) is True


@pytest.mark.parametrize(
    "value",
    [
        "alice",
        "alice@",
        "@example.com",
        "al ice@example.com",
        "alice@example..com",
        "alice@.example.com",
        "alice@example.com.",
        "alice@exa mple.com",
        "alice@example.com\nbob@example.com",
        "alice@example.com\n",
        "\nalice@example.com",
        "alice@@example.com",
        "a" * 65 + "@example.com",
        "alice@" + "a" * 250 + ".com",
        None,
        42,
        b"alice@example.com",
    ],
)
def test_is_email_rejects_non_addresses(value: Any) -> None:
    assert privacy.is_email(value) is False


# count / scalar -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 12_500, 2**63 - 1])
def test_count_accepts_non_negative_whole_numbers(value: int) -> None:
    assert privacy.count(value) == value


@pytest.mark.parametrize("value", [-1, 2**63, True, False, 1.0, "3", None, [1]])
def test_count_rejects_the_rest(value: Any) -> None:
    assert privacy.count(value) is None


@pytest.mark.parametrize(
    "value", [True, False, 0, -5, 2**63 - 1, -(2**63) + 1, 0.5, -1e300, "mqtt", "a.b"]
)
def test_scalar_keeps_allowed_leaves(value: Any) -> None:
    assert privacy.scalar(value) == value
    assert type(privacy.scalar(value)) is type(value)


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63), float("nan"), float("inf"), float("-inf"), None, "a b", [1], {"a": 1}, b"x"],
)
def test_scalar_drops_the_rest(value: Any) -> None:
    assert privacy.scalar(value) is None


# pseudonym ------------------------------------------------------------------------------


def test_pseudonym_is_a_stable_keyed_hash() -> None:
    salt = bytes(range(32))
    first = privacy.pseudonym("alice@example.com", salt)
    assert first == privacy.pseudonym("alice@example.com", salt)
    assert first.startswith("hmac-sha256:")
    digest = first.removeprefix("hmac-sha256:")
    assert len(digest) == 32
    assert set(digest) <= set(string.hexdigits.lower())
    assert "alice" not in first


def test_pseudonym_depends_on_salt_and_value() -> None:
    salt = b"s" * 32
    assert privacy.pseudonym("a", salt) != privacy.pseudonym("b", salt)
    assert privacy.pseudonym("a", salt) != privacy.pseudonym("a", b"t" * 32)


# section --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [("a", 1)], "a=1", 3, {1, 2}])
def test_section_rejects_non_mappings(raw: Any) -> None:
    with pytest.raises(TypeError, match="not a mapping"):
        privacy.section(raw, DropCounter())


def test_section_keeps_one_level_of_nesting_and_counts_what_it_drops() -> None:
    drops = DropCounter()
    raw = {
        "series": 12,
        "ratio": 0.25,
        "healthy": True,
        "backend": "influx",
        "by_type": {"influx": 1, "timescale": 2, "deep": {"too": 1}, "bad key": 3},
        "note": "free text here",
        "password": 1,
        3: "int key",
        "items": [1, 2],
        "none": None,
    }
    assert privacy.section(raw, drops) == {
        "series": 12,
        "ratio": 0.25,
        "healthy": True,
        "backend": "influx",
        "by_type": {"influx": 1, "timescale": 2},
    }
    assert drops.take() == {"collector_key": 3, "collector_value": 4}


def test_section_keeps_at_most_keys_max_keys_per_level() -> None:
    drops = DropCounter()
    raw = {f"k{i}": i for i in range(privacy.KEYS_MAX + 50)}
    raw["nested"] = {f"n{i}": i for i in range(privacy.KEYS_MAX + 7)}  # type: ignore[assignment]
    out = privacy.section(raw, drops)
    assert len(out) == privacy.KEYS_MAX
    assert list(out) == [f"k{i}" for i in range(privacy.KEYS_MAX)]
    assert drops.take() == {"collector_key": 51}


def test_section_returns_new_dicts() -> None:
    inner = {"a": 1}
    raw = {"inner": inner}
    out = privacy.section(raw, DropCounter())
    assert out == raw
    assert out is not raw
    assert out["inner"] is not inner


# DropCounter ----------------------------------------------------------------------------


def test_drop_counter_take_returns_counts_and_resets() -> None:
    drops = DropCounter()
    assert drops.take() == {}
    drops.add("x")
    drops.add("x")
    drops.add("y")
    assert drops.take() == {"x": 2, "y": 1}
    assert drops.take() == {}


def test_drop_counter_loses_nothing_across_threads() -> None:
    drops = DropCounter()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(2_000):
            drops.add("r")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert drops.take() == {"r": 16_000}


# Bounded work on foreign values ---------------------------------------------------------


def test_a_huge_string_is_refused_by_its_length_and_never_cached() -> None:
    huge = "a" * 10_000_000  # would match no pattern anyway: only its cost is at stake
    cached = privacy._identifier.cache_info().currsize
    result, peak = traced(privacy.identifier, huge)
    assert result is None
    assert privacy.bucket(huge) == privacy.OTHER
    assert privacy._identifier.cache_info().currsize == cached, "the cache keeps no huge string"
    assert peak < PEAK_MAX


def test_a_huge_email_is_refused_by_its_length() -> None:
    huge = "a" * 10_000_000 + "@example.com"
    result, peak = traced(privacy.is_email, huge)
    assert result is False
    assert peak < PEAK_MAX


class CountingSection(Mapping[str, Any]):
    """A section of ``size`` entries that counts the entries read from it."""

    def __init__(self, size: int, value: Any = 1) -> None:
        self.size, self.value, self.read = size, value, 0

    def __iter__(self) -> Iterator[str]:
        for number in range(self.size):
            self.read += 1
            yield f"k{number}"

    def __getitem__(self, key: str) -> Any:
        return self.value

    def __len__(self) -> int:
        return self.size


def test_section_reads_at_most_keys_max_entries_per_level_and_counts_the_rest() -> None:
    size = 4 * privacy.KEYS_MAX  # reading all would be size * size; a million is no slower now
    inner = CountingSection(size)
    outer = CountingSection(size, value=inner)
    drops = DropCounter()
    out = privacy.section(outer, drops)
    assert outer.read == privacy.KEYS_MAX
    # The one inner mapping is entered once per outer key that holds it: each time
    # only its first KEYS_MAX entries are read.
    assert inner.read == privacy.KEYS_MAX * privacy.KEYS_MAX
    assert len(out) == privacy.KEYS_MAX
    assert all(len(nested) == privacy.KEYS_MAX for nested in out.values())
    unread = (size - privacy.KEYS_MAX) * (1 + privacy.KEYS_MAX)
    assert drops.take() == {"collector_key": unread}


def test_a_self_referencing_section_is_read_two_levels_deep_only() -> None:
    loop: dict[str, Any] = {"n": 1}
    loop["self"] = loop
    drops = DropCounter()
    assert privacy.section(loop, drops) == {"n": 1, "self": {"n": 1}}
    assert drops.take() == {"collector_value": 1}


def test_drop_counter_adds_a_count_at_once() -> None:
    drops = DropCounter()
    drops.add("x", 5)
    drops.add("x")
    assert drops.take() == {"x": 6}


def test_a_non_mapping_section_names_its_type_by_a_bounded_name() -> None:
    odd = type("Odd" * 1000, (), {})()
    with pytest.raises(TypeError) as caught:
        privacy.section(odd, DropCounter())
    assert str(caught.value) == f"collect() returned {('Odd' * 11)[:32]}..., not a mapping"


# Bounded memory, and nothing kept after shutdown -----------------------------------------


def test_the_identifier_cache_holds_at_most_cache_max_strings() -> None:
    privacy.forget()
    for n in range(privacy.CACHE_MAX * 3):
        assert privacy.identifier(f"kind.{n}") == f"kind.{n}"
    assert privacy.cached() == privacy.CACHE_MAX


class _Tagged(str):
    """A str subclass as a host might pass one: text, and an attribute riding along."""

    def __new__(cls, text: str, payload: Any) -> _Tagged:
        made = super().__new__(cls, text)
        made.payload = payload
        return made

    payload: Any

    def __len__(self) -> int:  # a lie: only str's own length may be trusted
        return 1


def test_a_str_subclass_is_read_as_plain_text_and_never_kept() -> None:
    privacy.forget()
    tagged = _Tagged("mqtt", payload={"password": "hunter2"})
    result = privacy.identifier(tagged)
    assert result == "mqtt" and type(result) is str
    assert privacy.bucket(tagged) == "mqtt" and type(privacy.bucket(tagged)) is str
    assert privacy.cached() == 1  # "mqtt", as a plain copy


def test_a_huge_str_subclass_is_refused_by_its_texts_length_not_its_own_len() -> None:
    huge = _Tagged("a" * 10_000_000, payload=None)  # its __len__ says 1
    result, peak = traced(privacy.identifier, huge)
    assert result is None
    assert peak < PEAK_MAX, "the huge text was copied (or hashed) before its length was read"


def test_forget_empties_the_cache() -> None:
    privacy.identifier("opcua")
    assert privacy.cached() >= 1
    privacy.forget()
    assert privacy.cached() == 0
    assert privacy.identifier("opcua") == "opcua"  # and it works on afterwards


def test_after_on_shutdown_the_guard_keeps_nothing_the_host_sent(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    host = make_host(phonehome_config(endpoint), tmp_path / "data")
    host.start()
    for n in range(50):
        host.save_connection(f"vendor_kind_{n}")
    host.tick()
    settle(host)
    assert privacy.cached() >= 50
    host.shutdown()
    assert privacy.cached() == 0
