"""The report's JSON Schema (``report.schema.json``, shipped in the package) and the check
every report passes before it is stored.

The check implements the part of JSON Schema 2020-12 the schema uses (type,
properties, required, additionalProperties, propertyNames, items, maxItems, enum,
const, minimum, maximum, maxLength, pattern, anyOf, local $ref), so the plugin needs no
validator library at run time; the tests hold it to agree with ``jsonschema``.
It fails closed: a keyword it does not know is an error, not a pass.

Two parts that answer alike: :func:`valid`, the schema compiled once into predicates
(:mod:`.compiled`: about 1 us for each value of a report, so a report of 500
collectors is checked in about a millisecond), which every report passes through;
and :func:`walk`, which says where and why, run only on a report the first refused.

Bounded work on what it checks. A report holds values from signal arguments
and collectors (cleaned, but the check is the last guard), so the check never
formats a document's value or key with ``repr`` or ``str``: they are quoted as
:mod:`.bounded` has them (one line of at most ``DESCRIBE_MAX`` characters; a
huge int is not turned into digits). Each rule is visited once per value it
applies to, and the walk goes only as deep as the schema does (the shipped one
has no recursive ``$ref``), so the work is linear in the document;
:func:`errors` stops after :data:`ERRORS_MAX` lines, and ``anyOf`` after the
first error of each option.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

from phonehome_plugin.guard.bounded import describe, label, type_name
from phonehome_plugin.reports.compiled import (
    ANNOTATIONS,
    TYPES,
    Predicate,
    compile_rule,
    pattern,
    pointer,
    same,
)

SCHEMA_FILE = "report.schema.json"
"""The schema's file name, beside this module (package data of ``phonehome_plugin.reports``)."""
ERRORS_MAX = 100
"""Lines :func:`errors` returns at most; a report is refused on the first anyway."""


@cache
def load() -> dict[str, Any]:
    """The report schema, parsed."""
    loaded: dict[str, Any] = json.loads(text())
    return loaded


def text() -> str:
    """The schema file's exact text, for ``phonehome schema``."""
    return resources.files("phonehome_plugin.reports").joinpath(SCHEMA_FILE).read_text("utf-8")


def errors(document: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """The ways ``document`` breaks the schema, as ``path: problem`` lines (empty if valid).

    Every way, up to the first :data:`ERRORS_MAX`. A valid document costs one call of
    the compiled predicate (:func:`valid`); only a refused one is walked (:func:`walk`)
    for its lines. Should the two ever disagree, the document is refused all the same
    (fail closed), with a line that says so.
    """
    if valid(document, schema):
        return []
    return walk(document, schema) or ["$: refused by the compiled check"]


def walk(document: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """The descriptive walk alone: every ``path: problem`` line, up to :data:`ERRORS_MAX`,
    without the compiled fast path (the tests hold the two to agree)."""
    root = load() if schema is None else schema
    return list(itertools.islice(_check(document, root, root, "$"), ERRORS_MAX))


def valid(document: Any, schema: Mapping[str, Any] | None = None) -> bool:
    """Whether ``document`` passes the schema, without a line of why: True exactly when
    :func:`walk` finds nothing. The shipped schema is compiled once
    (:mod:`.compiled`); another one is compiled on each call."""
    if schema is None or schema is load():
        return _shipped()(document)
    return compile_rule(schema, schema)(document)


@cache
def _shipped() -> Predicate:
    root = load()
    return compile_rule(root, root)


def _check(
    value: Any, rule: Mapping[str, Any], root: Mapping[str, Any], path: str
) -> Iterator[str]:
    for keyword, arg in rule.items():
        if keyword in ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            yield f"{path}: schema keyword {describe(keyword)} is not supported"
            continue
        yield from check(value, arg, rule, root, path)


def _type(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    names = [arg] if isinstance(arg, str) else arg
    if not any(TYPES[name](value) for name in names):
        yield f"{path}: expected {' or '.join(names)}, got {type_name(value)}"


def _properties(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for name, sub in arg.items():
            if name in value:
                yield from _check(value[name], sub, root, f"{path}.{name}")


def _required(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for name in arg:
            if name not in value:
                yield f"{path}: missing {name}"


def _additional(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        return
    for name in value.keys() - rule.get("properties", {}).keys():
        if arg is False:
            yield f"{path}: unexpected field {label(name)}"
        elif isinstance(arg, Mapping):
            yield from _check(value[name], arg, root, f"{path}.{label(name)}")


def _property_names(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for name in value:
            yield from _check(name, arg, root, f"{path}[{describe(name)}]")


def _items(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _check(item, arg, root, f"{path}[{index}]")


def _max_items(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, list) and len(value) > arg:
        yield f"{path}: more than {arg} items"


def _enum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not any(same(value, option) for option in arg):
        yield f"{path}: {describe(value)} is not one of {arg}"


def _const(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not same(value, arg):
        yield f"{path}: expected {describe(arg)}"


def _minimum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if TYPES["number"](value) and value < arg:
        yield f"{path}: {describe(value)} is below {arg}"


def _maximum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if TYPES["number"](value) and value > arg:
        yield f"{path}: {describe(value)} is above {arg}"


def _max_length(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, str) and len(value) > arg:
        yield f"{path}: longer than {arg} characters"


def _pattern(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, str) and not pattern(arg).search(value):
        yield f"{path}: does not match {arg}"


def _any_of(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    # One error is enough to rule an option out: do not collect the rest.
    if all(next(_check(value, option, root, path), None) is not None for option in arg):
        yield f"{path}: matches none of the allowed shapes"


def _ref(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not arg.startswith("#/"):
        yield f"{path}: only local $ref is supported"
        return
    yield from _check(value, pointer(root, arg), root, path)


_KEYWORDS: dict[str, Any] = {
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
