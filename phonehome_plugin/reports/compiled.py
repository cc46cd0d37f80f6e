"""The report schema compiled into predicates: the fast path of the check every report
passes before it is stored.

:func:`compile_rule` turns a schema (the subset :mod:`.schema` implements) into one
``Callable[[Any], bool]`` built of small closures, once; checking a document is then a
walk of plain calls with no paths, messages or generators. It answers exactly what
:func:`.schema.errors` would (True exactly when there is no error line), and so fails
closed the same way: a keyword it does not know makes the rule refuse every value.
:func:`.schema.errors` runs it first and walks a document again, for its lines, only
when it refuses.

The semantics live here, shared by both: what each JSON type name admits
(:data:`TYPES`), which keywords are annotations, when two values are the same
(:func:`same`), and the compiled patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

Predicate = Callable[[Any], bool]
"""A compiled rule: True when the value passes it."""

TYPES: dict[str, Predicate] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # As JSON Schema (and jsonschema) have it: a number with no fractional part, so 3.0 too.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
"""What each JSON type name admits."""

# The Python types whose every value a type name admits: one ``type(v) in`` decides the
# common case, and TYPES decides the rest (subclasses, an integral float).
_EXACT: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}

ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$defs"})
"""Keywords that say nothing about a value."""


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as ``enum`` and ``const`` compare them: of the
    same type and equal, or both numbers and equal (1 and 1.0, not 1 and True)."""
    if type(a) is type(b):
        return bool(a == b)
    return bool(TYPES["number"](a) and TYPES["number"](b) and a == b)


@cache
def pattern(source: str) -> re.Pattern[str]:
    """A schema ``pattern``, compiled once (searched, as JSON Schema has it)."""
    return re.compile(source)


def pointer(root: Mapping[str, Any], target: str) -> Any:
    """What the local reference ``target`` (``#/$defs/leaf``) names in ``root``."""
    found: Any = root
    for part in target[2:].split("/"):
        found = found[part]
    return found


def compile_rule(rule: Mapping[str, Any], root: Mapping[str, Any]) -> Predicate:
    """``rule`` (of the schema ``root``, which local ``$ref`` resolve in) as one predicate."""
    return _Compiler(root).rule(rule)


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Predicate] = {}

    def rule(self, rule: Mapping[str, Any]) -> Predicate:
        if rule.get("type") == "object" and rule.keys() - ANNOTATIONS <= _OBJECT_KEYWORDS:
            return _object(self, rule)
        parts: list[Predicate] = []
        for keyword, arg in rule.items():
            if keyword in ANNOTATIONS:
                continue
            make = _MAKERS.get(keyword)
            if make is None:
                return _never  # fail closed: what the check cannot read refuses everything
            parts.append(make(self, arg, rule))
        if rule.keys() - ANNOTATIONS == {"type", "pattern"}:
            return _leaf(rule["type"], rule["pattern"], _all(parts))
        return _all(parts)

    def resolved(self, rule: Mapping[str, Any]) -> Mapping[str, Any]:
        """``rule``, or what it refers to when it is a lone local ``$ref`` (followed
        through a chain of them, a cycle left as it is)."""
        seen: set[str] = set()
        while rule.keys() - ANNOTATIONS == {"$ref"}:
            target = rule["$ref"]
            if not isinstance(target, str) or not target.startswith("#/") or target in seen:
                break
            seen.add(target)
            found = pointer(self.root, target)
            if not isinstance(found, Mapping):
                break
            rule = found
        return rule

    def ref(self, target: str) -> Predicate:
        if not target.startswith("#/"):
            return _never
        known = self.refs.get(target)
        if known is not None:
            return known
        # A reference met again while its target compiles (a recursive schema) calls
        # through this cell, filled once the target is compiled.
        cell: list[Predicate] = []

        def deferred(value: Any) -> bool:
            return cell[0](value)

        self.refs[target] = deferred
        compiled = self.rule(pointer(self.root, target))
        cell.append(compiled)
        self.refs[target] = compiled
        return compiled


def _all(parts: Sequence[Predicate]) -> Predicate:
    if not parts:
        return _always
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda v: first(v) and second(v)

    def every(value: Any) -> bool:
        return all(part(value) for part in parts)

    return every


def _type(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    names = [arg] if isinstance(arg, str) else list(arg)
    checks = tuple(TYPES[name] for name in names)
    exact = _exact(names)
    refused = _refused(names)

    def typed(value: Any) -> bool:
        kind = type(value)
        if kind in exact:
            return True
        if kind in refused:
            return False
        return any(check(value) for check in checks)

    return typed


def _leaf(types: Any, source: str, general: Predicate, otherwise: Predicate = _never) -> Predicate:
    # A rule of just ``type`` and ``pattern`` (a report's leaves and keys, thousands of
    # them in a report of many collectors) decided in one call for the exact types: a
    # string by the pattern alone when strings are admitted, another admitted type
    # outright (the pattern is for strings only), a JSON type not admitted refused;
    # anything else (a subclass, an integral float) by both parts. ``otherwise`` is
    # the rest of an ``anyOf`` the leaf comes first in, tried when the leaf refuses.
    names = [types] if isinstance(types, str) else list(types)
    admitted = _admitted(names)
    refused = _refused(names)
    search = pattern(source).search
    strings = "string" in names

    def leaf(value: Any) -> bool:
        kind = type(value)
        if kind is str and strings:
            return search(value) is not None or otherwise(value)
        if kind in admitted:
            return True
        if kind in refused:
            return otherwise(value)
        return general(value) or otherwise(value)

    return leaf


_OBJECT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "propertyNames"}
)


def _object(compiler: _Compiler, rule: Mapping[str, Any]) -> Predicate:
    # A rule of ``type: object`` and the keywords of objects (every object of the
    # report) as one call: the parts' own calls and type tests folded in.
    named = tuple((name, compiler.rule(sub)) for name, sub in rule.get("properties", {}).items())
    known = frozenset(rule.get("properties", {}))
    required = frozenset(rule.get("required", ()))
    extra = rule.get("additionalProperties", True)
    closed = extra is False
    rest = compiler.rule(extra) if isinstance(extra, Mapping) else None
    names_rule = rule.get("propertyNames")
    names = None if names_rule is None else compiler.rule(names_rule)
    search = (
        pattern(names_rule["pattern"]).search
        if names_rule is not None and names_rule.keys() - ANNOTATIONS == {"pattern"}
        else None
    )

    def obj(value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        keys = value.keys()
        if (
            (required and not keys >= required)
            or (named and not all(check(value[name]) for name, check in named if name in value))
            or (closed and not keys <= known)
        ):
            return False
        if rest is not None and not (
            all(rest(value[name]) for name in keys - known)
            if known
            else all(map(rest, value.values()))
        ):
            return False
        if names is None:
            return True
        if search is not None:
            try:
                return all(map(search, keys))
            except TypeError:  # a name that is not a string: the pattern is not for it
                pass
        return all(map(names, keys))

    return obj


def _exact(names: Sequence[str]) -> frozenset[type]:
    """The exact Python types every value of which one of the type ``names`` admits."""
    return frozenset(kind for name in names for kind in _EXACT[name])


def _admitted(names: Sequence[str]) -> frozenset[type]:
    """:func:`_exact`, strings left out (a pattern may apply to them)."""
    return _exact(names) - {str}


def _refused(names: Sequence[str]) -> frozenset[type]:
    """The exact Python types no value of which the type ``names`` admit."""
    some = {float} if "integer" in names else set()  # 3.0 is an integer
    return _exact(list(_EXACT)) - _exact(names) - some


def _properties(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    named = tuple((name, compiler.rule(sub)) for name, sub in arg.items())

    def properties(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        return all(check(value[name]) for name, check in named if name in value)

    return properties


def _required(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    names = frozenset(arg)
    return lambda v: not isinstance(v, dict) or v.keys() >= names


def _additional(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    known = frozenset(rule.get("properties", {}))
    if arg is False:
        return lambda v: not isinstance(v, dict) or v.keys() <= known
    if not isinstance(arg, Mapping):
        return _always
    check = compiler.rule(arg)
    if not known:
        return lambda v: not isinstance(v, dict) or all(map(check, v.values()))
    return lambda v: not isinstance(v, dict) or all(check(v[name]) for name in v.keys() - known)


def _property_names(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    check = compiler.rule(arg)
    if arg.keys() - ANNOTATIONS != {"pattern"}:
        return lambda v: not isinstance(v, dict) or all(map(check, v))
    # Names held to a pattern alone: searched in one C loop. A name that is not a string
    # (the pattern does not apply to it) makes search raise; the rule decides those.
    search = pattern(arg["pattern"]).search

    def names(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        try:
            return all(map(search, value))
        except TypeError:
            return all(map(check, value))

    return names


def _items(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    check = compiler.rule(arg)
    return lambda v: not isinstance(v, list) or all(map(check, v))


def _max_items(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    return lambda v: not isinstance(v, list) or len(v) <= arg


def _enum(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    options = tuple(arg)
    return lambda v: any(same(v, option) for option in options)


def _const(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    return lambda v: same(v, arg)


def _minimum(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    number = TYPES["number"]
    return lambda v: not (number(v) and v < arg)


def _maximum(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    number = TYPES["number"]
    return lambda v: not (number(v) and v > arg)


def _max_length(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    return lambda v: not isinstance(v, str) or len(v) <= arg


def _pattern(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    search = pattern(arg).search
    return lambda v: not isinstance(v, str) or search(v) is not None


def _any_of(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    options = tuple(compiler.rule(option) for option in arg)
    leading = compiler.resolved(arg[0]) if len(options) > 1 else {}
    if leading.keys() - ANNOTATIONS == {"type", "pattern"}:
        # A leaf first (a section's values): the leaf's own call tries the rest.
        return _leaf(leading["type"], leading["pattern"], options[0], _either(options[1:]))
    return _either(options)


def _either(options: Sequence[Predicate]) -> Predicate:
    """True when one of the compiled ``options`` is (none: never)."""
    if not options:
        return _never
    if len(options) == 1:
        return options[0]
    if len(options) == 2:
        first, second = options
        return lambda v: first(v) or second(v)
    return lambda v: any(option(v) for option in options)


def _ref(compiler: _Compiler, arg: Any, rule: Mapping[str, Any]) -> Predicate:
    return compiler.ref(arg)


_MAKERS: dict[str, Callable[[_Compiler, Any, Mapping[str, Any]], Predicate]] = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "propertyNames": _property_names,
    "items": _items,
    "maxItems": _max_items,
    "enum": _enum,
    "const": _const,
    "minimum": _minimum,
    "maximum": _maximum,
    "maxLength": _max_length,
    "pattern": _pattern,
    "anyOf": _any_of,
    "$ref": _ref,
}
