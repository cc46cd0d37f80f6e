"""The report schema compiled into predicates (:mod:`phonehome_plugin.reports.compiled`):
it answers what the descriptive walk (:func:`schema.walk`) answers, on the shipped
schema (``tests/test_schema.py`` holds both to ``jsonschema`` on every built and mutated
report) and on any schema of the keywords the check knows, drawn by hypothesis."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonehome_plugin.reports import compiled, schema

LEAF = {"type": ["boolean", "integer", "number", "string"], "pattern": "^[a-z]{1,3}$"}


def agree(document: Any, rule: dict[str, Any]) -> bool:
    lines = schema.walk(document, rule)
    assert compiled.compile_rule(rule, rule)(document) is not bool(lines), lines
    return not lines


def test_an_unknown_keyword_refuses_every_value() -> None:
    value: Any
    for value in (None, 1, "x", {}, []):
        assert not agree(value, {"type": "string", "format": "email"})
        assert not agree(value, {"oneOf": [{"type": "integer"}]})


def test_a_remote_ref_refuses_every_value() -> None:
    assert not agree(1, {"$ref": "https://example.invalid/schema.json"})


def test_a_leaf_takes_strings_by_the_pattern_and_other_admitted_types_outright() -> None:
    for value, ok in [
        ("ab", True),
        ("ab\n", True),  # ``$`` matches before a final newline, as ``re.search`` has it
        ("abcd", False),
        ("", False),
        (7, True),
        (2.5, True),
        (True, True),
        (None, False),
        ({}, False),
        ([], False),
    ]:
        assert agree(value, LEAF) is ok, value


def test_subclasses_and_integral_floats_take_the_general_path() -> None:
    class Text(str):
        pass

    class Table(dict[str, Any]):
        pass

    assert agree(Text("ab"), LEAF)
    assert not agree(Text("abcd"), LEAF)
    assert agree(3.0, {"type": "integer"})
    assert not agree(3.5, {"type": "integer"})
    assert not agree(True, {"type": "integer"})
    assert agree(Table(a=1), {"type": "object", "additionalProperties": {"type": "integer"}})
    assert agree(OrderedDict(a=1), {"type": "object", "required": ["a"]})


def test_names_that_are_not_strings_escape_a_pattern_only() -> None:
    rule = {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}
    assert agree({1: "x", "ab": 2}, rule)
    assert not agree({1: "x", "AB": 2}, rule)
    assert not agree({1: "x"}, {"type": "object", "propertyNames": {"type": "string"}})


def test_a_leaf_first_in_any_of_tries_the_other_options_when_it_refuses() -> None:
    rule = {
        "$defs": {"leaf": LEAF},
        "anyOf": [{"$ref": "#/$defs/leaf"}, {"type": "object"}, {"const": "LONG-ONE"}],
    }
    assert agree("ab", rule)
    assert agree({"x": 1}, rule)
    assert agree("LONG-ONE", rule)
    assert not agree("LONG-TWO", rule)
    assert not agree([], rule)


def test_a_recursive_reference_is_compiled_once_and_checks_every_depth() -> None:
    tree: dict[str, Any] = {
        "$defs": {"node": {"type": "object", "additionalProperties": {"$ref": "#/$defs/node"}}},
        "$ref": "#/$defs/node",
    }
    deep: dict[str, Any] = {}
    for _ in range(30):
        deep = {"child": deep}
    assert agree(deep, tree)
    deep["child"]["child"] = 1
    assert not agree(deep, tree)


def test_a_chain_of_references_with_a_cycle_compiles() -> None:
    rule = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    compiled.compile_rule(rule, rule)  # no recursion without end


def test_same_compares_numbers_across_int_and_float_but_not_bool() -> None:
    assert compiled.same(1, 1.0)
    assert not compiled.same(1, True)
    assert not compiled.same("1", 1)


# Any schema of the keywords the check knows -----------------------------------------------

NAMES = ["a", "b", "ab", "Z", "a.b"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.sampled_from([0.5, 3.0, -1.0, 1e300])
    | st.sampled_from(["", "a", "ab", "ab\n", "ABC", "a.b", "x" * 70, "é"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(NAMES), inner, max_size=4)
        | st.dictionaries(st.integers(0, 2), inner, max_size=2)
    ),
    max_leaves=8,
)
TYPE_NAMES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null"])


def _rules(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    keyword = st.one_of(
        st.tuples(st.just("type"), TYPE_NAMES | st.lists(TYPE_NAMES, min_size=1, max_size=3)),
        st.tuples(
            st.just("properties"), st.dictionaries(st.sampled_from(NAMES), inner, max_size=2)
        ),
        st.tuples(st.just("required"), st.lists(st.sampled_from(NAMES), max_size=2)),
        st.tuples(st.just("additionalProperties"), st.booleans() | inner),
        st.tuples(st.just("propertyNames"), inner),
        st.tuples(st.just("items"), inner),
        st.tuples(st.just("maxItems"), st.integers(0, 3)),
        st.tuples(st.just("enum"), st.lists(SCALARS, min_size=1, max_size=3)),
        st.tuples(st.just("const"), SCALARS),
        st.tuples(st.just("minimum"), st.integers(-1, 5)),
        st.tuples(st.just("maximum"), st.integers(-1, 5)),
        st.tuples(st.just("maxLength"), st.integers(0, 3)),
        st.tuples(st.just("pattern"), st.sampled_from(["^[a-z]{1,2}$", "b", "^$"])),
        st.tuples(st.just("anyOf"), st.lists(inner, max_size=3)),
        st.tuples(st.just("$ref"), st.sampled_from(["#/$defs/leaf", "#/$defs/any"])),
        st.tuples(st.just("description"), st.just("an annotation")),
    )
    return st.lists(keyword, max_size=4).map(dict)


RULES = st.recursive(st.just({}) | st.just(LEAF), _rules, max_leaves=6)


@settings(max_examples=600, deadline=None)
@given(rule=RULES, document=VALUES)
def test_the_compiled_check_answers_what_the_walk_answers(
    rule: dict[str, Any], document: Any
) -> None:
    root = {**rule, "$defs": {"leaf": LEAF, "any": {}}}
    agree(document, root)


@pytest.mark.parametrize("document", [{"a": {"b": [1, "ab", None]}}, [{"a": 1}], "ab", 3])
def test_the_shipped_schema_compiled_refuses_what_the_walk_refuses(document: Any) -> None:
    assert schema.valid(document) is not bool(schema.walk(document))


def test_the_shipped_schema_is_compiled_once_for_every_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema.valid({})  # compiled here, if no test did before
    calls: list[object] = []

    def counting(rule: Any, root: Any) -> compiled.Predicate:
        calls.append(rule)
        return compiled.compile_rule(rule, root)

    monkeypatch.setattr(schema, "compile_rule", counting)
    for _ in range(3):
        schema.errors({"schema_version": 1})
        schema.valid({"schema_version": 1})
        schema.errors({"schema_version": 1}, schema.load())
    assert calls == []
    assert schema.errors(1, {"type": "string"}) and calls  # another schema: compiled


def test_the_walk_and_the_compiled_check_know_the_same_keywords() -> None:
    # Two tables side by side (a walk that says why, predicates that only answer):
    # a keyword one of them lacks would make that one refuse what the other passes.
    assert schema._KEYWORDS.keys() == compiled._MAKERS.keys()
