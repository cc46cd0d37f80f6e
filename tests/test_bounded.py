"""Tests for :mod:`phonehome_plugin.guard.bounded`: describing a foreign value in bounded work.

No test here measures time: boundedness is asserted structurally (the length of
what is returned, ``tracemalloc``'s peak, the dunder methods never called), on
values whose ``repr`` would take exponential time, megabytes, or never return.
Structures grow level by level and each level is checked before the next is
built, so an unbounded implementation fails on a small one instead of hanging.

:func:`alias_bomb` is shared with the config, switch and CLI tests.
"""

from __future__ import annotations

import enum
import itertools
import string
import tracemalloc
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any, NoReturn, TypeVar

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from phonehome_plugin.guard import bounded
from phonehome_plugin.guard.bounded import DESCRIBE_MAX, describe, label, type_name

T = TypeVar("T")
PEAK_MAX = 64 * 1024
"""Bytes traced at most while describing: a constant, far below any value's own size."""


def alias_bomb(
    levels: int, width: int = 9, *, at: str = "enabled: {bomb}", kind: str = "list"
) -> str:
    """A config.yaml whose ``modules.phonehome`` holds a YAML alias bomb.

    Level 1 is ``width`` scalars; each next level is ``width`` aliases of the one
    before, so the value ``{bomb}`` stands for holds ``width ** levels`` leaves
    (9 ** 10 is 3.5 billion) while the text stays a few hundred bytes and
    ``yaml.safe_load`` builds only ``levels * width`` references. ``kind`` is
    ``list`` (``[*a, *a, ...]``) or ``dict`` (``{k0: *a, k1: *a, ...}``).
    """
    names = [f"l{n}" for n in range(levels)]

    def level(item: str) -> str:
        if kind == "list":
            return "[" + ",".join([item] * width) + "]"
        return "{" + ",".join(f"k{i}: {item}" for i in range(width)) + "}"

    lines = [f"{names[0]}: &{names[0]} {level('x')}"]
    lines += [f"{name}: &{name} {level('*' + below)}" for below, name in itertools.pairwise(names)]
    lines.append("modules:")
    lines.append("  phonehome: {" + at.format(bomb="*" + names[-1]) + "}")
    return "\n".join(lines) + "\n"


def growing_bombs(
    top: int = 10, width: int = 9, *, at: str = "enabled: {bomb}", kind: str = "list"
) -> Iterator[tuple[int, Any]]:
    """``(levels, parsed config)`` for 1, 2, ... ``top`` levels, parsed by ``yaml.safe_load``."""
    for levels in range(1, top + 1):
        yield levels, yaml.safe_load(alias_bomb(levels, width, at=at, kind=kind))


def traced(function: Callable[..., T], *args: Any) -> tuple[T, int]:
    """``function(*args)``, and the bytes ``tracemalloc`` saw allocated at most meanwhile."""
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_bounded(text: str) -> None:
    assert len(text) <= DESCRIBE_MAX, text
    assert text.isprintable(), text  # one line: no newline or other control character


class Hostile:
    """An object every dunder of which fails: describing it may call none."""

    def _fail(self, *args: object) -> NoReturn:
        raise AssertionError("describe() called a method of the value")

    __repr__ = __str__ = __format__ = __len__ = __iter__ = __eq__ = __hash__ = _fail
    __getitem__ = __bool__ = __lt__ = __sizeof__ = _fail


class HostileList(list[Any]):
    __repr__ = __str__ = __len__ = __iter__ = __getitem__ = __eq__ = Hostile._fail


class HostileDict(dict[Any, Any]):
    __repr__ = __str__ = __len__ = __iter__ = __getitem__ = __eq__ = Hostile._fail


class HostileStr(str):
    __repr__ = __str__ = __len__ = __iter__ = __getitem__ = __eq__ = Hostile._fail
    __format__ = __hash__ = Hostile._fail


class HostileInt(int):
    __repr__ = __str__ = __format__ = __index__ = __eq__ = __hash__ = Hostile._fail


class NamedBadly(type):
    """A metaclass whose ``__name__`` runs code."""

    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise AssertionError("describe() read a __name__ the metaclass defines")


class Impostor:
    """Claims to be a str: ``isinstance(Impostor(), str)`` is true."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


class Color(enum.IntEnum):
    RED = 1


# What describe() shows ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "None"),
        (True, "True"),
        (False, "False"),
        (0, "0"),
        (-42, "-42"),
        (2**128 - 1, str(2**128 - 1)),
        (2**128, "an int of 129 bits"),
        (0.5, "0.5"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        (1 + 2j, "(1+2j)"),
        ("no", "'no'"),
        ("", "''"),
        ("it's", '"it\'s"'),
        ("a\nb\tc", "'a\\nb\\tc'"),
        (b"\x00ab", "b'\\x00ab'"),
        ([], "a list of 0 items"),
        (["x"], "a list of 1 item"),
        (["x", "x", "x"], "a list of 3 items"),
        ((1, 2), "a tuple of 2 items"),
        ({"a": 1, "b": 2}, "a dict of 2 items"),
        ({1, 2, 3}, "a set of 3 items"),
        (frozenset(), "a frozenset of 0 items"),
        (bytearray(b"abc"), "a bytearray of 3 items"),
        (OrderedDict(a=1), "an OrderedDict of 1 item"),
        (defaultdict(list), "a defaultdict of 0 items"),
        (deque([1, 2]), "a deque object"),
        (date(2024, 1, 1), "a date object"),
        (datetime(2024, 1, 1, tzinfo=UTC), "a datetime object"),
        (object(), "an object object"),
        (Color.RED, "1 (a Color)"),
    ],
)
def test_describe_shows_scalars_by_repr_and_containers_by_type_and_length(
    value: Any, expected: str
) -> None:
    assert describe(value) == expected


def test_a_long_string_is_cut_to_an_escaped_prefix_with_its_length() -> None:
    text = "x" * 10_000_000
    shown = describe(text)
    assert shown == "'" + "x" * bounded.TEXT_MAX + "'... (10000000 characters)"
    assert_bounded(shown)


def test_long_bytes_are_cut_to_an_escaped_prefix_with_their_length() -> None:
    assert describe(b"\xff" * 1000).endswith("... (1000 bytes)")
    assert_bounded(describe(b"\xff" * 1000))


def test_escapes_never_make_the_prefix_longer_than_quoted_max() -> None:
    for char in ("\x00", "\u2028", "\U000e0001", "'", "\\"):
        shown = describe(char * 1000)
        assert len(shown.split("...")[0]) <= bounded.QUOTED_MAX, shown
        assert_bounded(shown)


def test_a_subclass_of_a_builtin_is_shown_with_its_own_type_name() -> None:
    class Label(str):
        pass

    class Rows(list[int]):
        pass

    assert describe(Label("hi")) == "'hi' (a Label)"
    assert describe(Label("y" * 100)) == "'" + "y" * 40 + "'... (a Label of 100 characters)"
    assert describe(Rows([1, 2])) == "a Rows of 2 items"


def test_type_names_are_cut_and_kept_on_one_line() -> None:
    long_name = type("Z" * 10_000, (), {})()
    assert type_name(long_name) == "Z" * bounded.NAME_MAX + "..."
    assert describe(long_name) == "a " + "Z" * bounded.NAME_MAX + "... object"
    broken_line = type("Evil\nWARNING: forged log line", (), {})()
    assert_bounded(describe(broken_line))
    assert describe(type("", (), {})()) == "a ? object"


# What describe() never does -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        Hostile(),
        HostileList([1, 2, 3]),
        HostileDict(a=1),
        HostileStr("a string whose every method fails, long enough to be cut off"),
        HostileInt(7),
        NamedBadly("Thing", (), {})(),
        Impostor(),
    ],
    ids=["object", "list", "dict", "str", "int", "metaclass name", "fake __class__"],
)
def test_describe_runs_no_code_of_the_value(value: Any) -> None:
    shown = describe(value)  # Hostile's methods raise AssertionError if called
    assert_bounded(shown)
    assert_bounded(label(value))
    assert_bounded(type_name(value))


def test_hostile_values_are_described_by_their_builtin_parts() -> None:
    assert describe(HostileList([1, 2, 3])) == "a HostileList of 3 items"
    assert describe(HostileInt(7)) == "7 (a HostileInt)"
    assert describe(HostileStr("ab")) == "'ab' (a HostileStr)"
    assert describe(Impostor()) == "an Impostor object"  # not taken for the str it claims


def test_a_self_referencing_container_is_described_without_walking_it() -> None:
    loop: list[Any] = []
    loop.append(loop)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    assert describe(loop) == "a list of 1 item"
    assert describe(cycle) == "a dict of 1 item"


def test_a_shared_reference_bomb_is_described_in_constant_memory() -> None:
    # repr() of level n is 9 ** n leaves long; each level is checked before the next.
    value: Any = ["x"] * 9
    for _level in range(40):
        _, peak = traced(describe, value)
        assert describe(value) == "a list of 9 items"
        assert peak < PEAK_MAX, peak
        value = [value] * 9


def test_describing_a_huge_string_copies_none_of_it() -> None:
    text = "é" * 5_000_000  # 10 MB of UTF-8
    assert traced(describe, text)[1] < PEAK_MAX
    assert traced(label, text)[1] < PEAK_MAX


def test_a_huge_int_is_not_turned_into_digits() -> None:
    # str() refuses ints past 4300 digits, and is quadratic below that.
    huge = 7**200_000
    assert describe(huge) == f"an int of {huge.bit_length()} bits"
    assert describe(-(10**5000)) == "an int of 16610 bits"
    assert traced(describe, huge)[1] < PEAK_MAX


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**100, max_value=2**20_000)
    | st.floats()
    | st.complex_numbers()
    | st.text()
    | st.text(alphabet=string.printable + "\x00\x1b\u2028\U000e0001'\"\\", min_size=30)
    | st.binary()
    | st.dates()
    | st.datetimes()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.dictionaries(st.text(), children)
        | st.frozensets(st.integers())
    ),
    max_leaves=20,
)


@given(_VALUES)
def test_describe_and_label_of_anything_are_one_bounded_line(value: Any) -> None:
    assert_bounded(describe(value))
    assert_bounded(label(value))
    assert_bounded(type_name(value))


# label() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("enabeld", "enabeld"),
        ("my key", "my key"),
        ("1", "1"),
        (1, "1"),
        (None, "None"),
        (True, "True"),
        ("", "''"),
        ("two\nlines", "'two\\nlines'"),
        ("k" * 41, "'" + "k" * 40 + "'... (41 characters)"),
        (["enabled"], "a list of 1 item"),
    ],
)
def test_label_is_a_short_printable_string_itself_and_anything_else_described(
    value: Any, expected: str
) -> None:
    assert label(value) == expected


# The alias bomb the other tests use ------------------------------------------------------


def test_alias_bomb_is_small_text_for_a_value_of_exponential_size() -> None:
    text = alias_bomb(10)
    assert len(text.encode()) < 500
    parsed = yaml.safe_load(text)
    value = parsed["modules"]["phonehome"]["enabled"]
    leaves, node = 1, value
    while isinstance(node, list):  # walk one branch only: every item is the same object
        assert len(node) == 9 and all(item is node[0] for item in node)
        leaves, node = leaves * 9, node[0]
    assert leaves == 9**10
    mapping = yaml.safe_load(alias_bomb(3, kind="dict", at="outbox: {bomb}"))
    assert mapping["modules"]["phonehome"]["outbox"]["k8"]["k0"] == {
        f"k{i}": "x" for i in range(9)
    }
