"""The report's JSON Schema (``report.schema.json``, shipped in the package) and the check
every report passes before it is stored.

The check implements the part of JSON Schema 2020-12 the schema uses (type,
properties, required, additionalProperties, propertyNames, enum, const,
minimum, maximum, maxLength, pattern, anyOf, local $ref), so the plugin needs no
validator library at run time; the tests hold it to agree with ``jsonschema``.
It fails closed: a keyword it does not know is an error, not a pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

_TYPES: dict[str, Any] = {
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
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$defs"})


@cache
def load() -> dict[str, Any]:
    """The report schema, parsed."""
    text = resources.files("phonehome_plugin").joinpath("report.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def text() -> str:
    """The schema file's exact text, for ``phonehome schema``."""
    return resources.files("phonehome_plugin").joinpath("report.schema.json").read_text("utf-8")


def errors(document: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every way ``document`` breaks the schema, as ``path: problem`` lines (empty if valid)."""
    root = load() if schema is None else schema
    return list(_check(document, root, root, "$"))


def _check(
    value: Any, rule: Mapping[str, Any], root: Mapping[str, Any], path: str
) -> Iterator[str]:
    for keyword, arg in rule.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            yield f"{path}: schema keyword {keyword!r} is not supported"
            continue
        yield from check(value, arg, rule, root, path)


def _type(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    names = [arg] if isinstance(arg, str) else arg
    if not any(_TYPES[name](value) for name in names):
        yield f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"


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
            yield f"{path}: unexpected field {name}"
        elif isinstance(arg, Mapping):
            yield from _check(value[name], arg, root, f"{path}.{name}")


def _property_names(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for name in value:
            yield from _check(name, arg, root, f"{path}[{name!r}]")


def _enum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not any(_same(value, option) for option in arg):
        yield f"{path}: {value!r} is not one of {arg}"


def _const(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not _same(value, arg):
        yield f"{path}: expected {arg!r}"


def _same(a: Any, b: Any) -> bool:
    if type(a) is type(b):
        return bool(a == b)
    return bool(_TYPES["number"](a) and _TYPES["number"](b) and a == b)


def _minimum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if _TYPES["number"](value) and value < arg:
        yield f"{path}: {value} is below {arg}"


def _maximum(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if _TYPES["number"](value) and value > arg:
        yield f"{path}: {value} is above {arg}"


def _max_length(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, str) and len(value) > arg:
        yield f"{path}: longer than {arg} characters"


def _pattern(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if isinstance(value, str) and not _compiled(arg).search(value):
        yield f"{path}: does not match {arg}"


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _any_of(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if all(list(_check(value, option, root, path)) for option in arg):
        yield f"{path}: matches none of the allowed shapes"


def _ref(value: Any, arg: Any, rule: Any, root: Any, path: str) -> Iterator[str]:
    if not arg.startswith("#/"):
        yield f"{path}: only local $ref is supported"
        return
    target: Any = root
    for part in arg[2:].split("/"):
        target = target[part]
    yield from _check(value, target, root, path)


_KEYWORDS: dict[str, Any] = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "propertyNames": _property_names,
    "enum": _enum,
    "const": _const,
    "minimum": _minimum,
    "maximum": _maximum,
    "maxLength": _max_length,
    "pattern": _pattern,
    "anyOf": _any_of,
    "$ref": _ref,
}
