"""Describing a foreign value for an error or log message, in bounded time and memory.

A value the plugin did not make (a config.yaml entry, a signal argument, a
collector's section or the collector itself) may be a 10 MB string, a YAML
alias bomb (a few hundred bytes of YAML that parse into a small graph of shared
lists whose ``repr`` is gigabytes), a list that contains itself, or an object
whose ``__repr__`` hangs or raises. Quoting such a value with ``repr`` or
``str`` costs whatever the value makes it cost. The functions here cost a
constant instead.

Contract of :func:`describe` (and :func:`label`, :func:`type_name`):

- it returns one line (no line break or other control character) of at most
  :data:`DESCRIBE_MAX` characters, and never raises;
- it takes a constant number of steps, each on at most :data:`TEXT_MAX`
  characters (bytes) of the value, whatever the value's size or depth;
- it never runs code of the value's type: no ``repr``, ``str``, ``len``,
  ``__eq__`` or ``__getitem__`` a subclass may override, and no ``__class__``
  an object may fake (types are tested with ``issubclass(type(value), ...)``,
  not ``isinstance``). Only the C implementations of built-in types are called.

What it shows:

- ``None``, a bool, an int of up to :data:`INT_BITS_MAX` bits, a float, a
  complex: its repr (``None``, ``True``, ``42``, ``0.5``); a longer int: its
  size (``an int of 20000 bits``), since turning it into digits is quadratic
  and refused past 4300 digits;
- a str or bytes: the repr of at most :data:`TEXT_MAX` characters (bytes) of
  it, so escaped and on one line, then ``...`` and the full length when cut:
  ``'aaaa'... (10485760 characters)``;
- a list, tuple, dict, set, frozenset or bytearray: its type and length only,
  never its items: ``a list of 3 items``;
- anything else: its type name only, ``a datetime object``.

A subclass of a built-in type is shown with its own type name: ``1 (a Color)``,
``a CommentedMap of 2 items``. Type names longer than :data:`NAME_MAX` are cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TEXT_MAX = 40
"""Characters (of a str) or bytes (of a bytes) of a value shown at most."""
QUOTED_MAX = 48
"""Length of the quoted, escaped prefix at most (escapes can make a character 10 long)."""
NAME_MAX = 32
"""Characters of a type name shown at most."""
INT_BITS_MAX = 128
"""Ints up to this many bits (39 digits) are shown as digits, longer ones by their size."""
DESCRIBE_MAX = 128
"""Characters :func:`describe` returns at most."""


def _int(number: int) -> str:
    bits = int.bit_length(number)
    if bits <= INT_BITS_MAX:
        return int.__repr__(number)
    return f"an int of {bits} bits"


# Each kind of value is read only through its built-in base type's own C slots,
# which a subclass cannot override: (base, how it is shown).
_NUMBERS: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (int, _int),
    (float, float.__repr__),
    (complex, complex.__repr__),
)
# (base, slicing, length, unit) of the types shown by a prefix.
_TEXTS: tuple[tuple[type, Callable[[Any, slice], Any], Callable[[Any], int], str], ...] = (
    (str, str.__getitem__, str.__len__, "characters"),
    (bytes, bytes.__getitem__, bytes.__len__, "bytes"),
)
# The built-in containers whose length is read through the base type's own C slot.
_SIZED: tuple[tuple[type, Callable[[Any], int]], ...] = (
    (list, list.__len__),
    (tuple, tuple.__len__),
    (dict, dict.__len__),
    (set, set.__len__),
    (frozenset, frozenset.__len__),
    (bytearray, bytearray.__len__),
)
# type.__name__ looked up on the metaclass of ``type`` itself: a metaclass of the
# value's type may define a ``__name__`` property, which this getter bypasses.
_TYPE_NAME: Any = type.__dict__["__name__"]


def describe(value: object) -> str:
    """``value`` for an error or log message: bounded, one line, never raises (see module)."""
    kind = type(value)
    if value is None or kind is bool:  # bool cannot be subclassed: its truth is its own
        return "None" if value is None else "True" if value else "False"
    for base, show in _NUMBERS:
        if issubclass(kind, base):
            return _own(kind, base, show(value))
    for base, getitem, length, unit in _TEXTS:
        if issubclass(kind, base):
            return _cut(kind, base, getitem, length(value), value, unit)
    for base, length in _SIZED:
        if issubclass(kind, base):
            count = length(value)
            return f"{_a(_name_of(kind))} of {count} item{'' if count == 1 else 's'}"
    return f"{_a(_name_of(kind))} object"


def label(value: object) -> str:
    """``value`` as a key reads in a dotted path or after ``NAME=``: a short, printable,
    non-empty str as itself, anything else as :func:`describe` has it. Same bounds."""
    if type(value) is str and 0 < len(value) <= TEXT_MAX and value.isprintable():
        return value
    return describe(value)


def type_name(value: object) -> str:
    """The name of ``value``'s type, cut to :data:`NAME_MAX` characters, on one line."""
    return _name_of(type(value))


def _own(kind: type, base: type, shown: str) -> str:
    """``shown``, followed by the type's name when it is a subclass of ``base``."""
    if kind is base:
        return shown
    return f"{shown} ({_a(_name_of(kind))})"


def _cut(
    kind: type,
    base: type,
    getitem: Callable[[Any, slice], Any],
    size: int,
    whole: object,
    unit: str,
) -> str:
    """The quoted prefix of a str or bytes ``whole``; ``...`` and its size when cut."""
    keep = min(size, TEXT_MAX)
    # getitem is the base type's own slicing, so ``prefix`` is a plain str or bytes
    # whose repr is the built-in one.
    prefix = getitem(whole, slice(0, keep))
    shown = repr(prefix)
    while len(shown) > QUOTED_MAX:  # many escapes: show fewer characters
        keep -= 1
        prefix = getitem(whole, slice(0, keep))
        shown = repr(prefix)
    if keep == size:
        return _own(kind, base, shown)
    whose = "" if kind is base else f"{_a(_name_of(kind))} of "
    return f"{shown}... ({whose}{size} {unit})"


def _name_of(kind: type) -> str:
    # type() accepts a str subclass as a name: read it through str's own slots.
    name = _TYPE_NAME.__get__(kind, type)
    size = str.__len__(name)
    shown = str.__getitem__(name, slice(0, NAME_MAX))
    if not shown.isprintable():
        # A type made with type("a\nb", ...): keep the log line one line.
        escaped = shown.encode("unicode_escape").decode("ascii")
        return escaped[:NAME_MAX] + "..."
    if size > NAME_MAX:
        return shown + "..."
    return shown or "?"


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in ('a', 'e', 'i', 'o', 'u') else 'a'} {name}"
