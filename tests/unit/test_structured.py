"""Structured outputs: a client's JSON Schema checked before anything runs, answers validated
against it within a bound, and the repair run built from the validator's message."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from ccgate import structured
from ccgate.jobs.requests import request_from_json, request_to_json
from ccgate.jobs.schema_repair import combined, repair_request
from ccgate.runners.base import RunRequest, RunResult
from ccgate.structured import SchemaInvalid, check_schema, validate_answer

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
DRAFT4 = "http://json-schema.org/draft-04/schema#"


@pytest.mark.parametrize("schema", [[], True, "object", None, 3])
def test_structured_check_schema_refuses_what_is_not_an_object(schema: object) -> None:
    """A schema that is not a JSON object is refused with a one-line message."""
    with pytest.raises(SchemaInvalid, match=r"^json_schema: must be a JSON object$"):
        check_schema(schema)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "strnig"}, r"at \$\.type: 'strnig' is not valid"),
        ({"properties": {"a": {"minimum": "1"}}}, r"at \$\.properties\.a\.minimum: '1' is not"),
        ({"required": "name"}, r"at \$\.required: 'name' is not of type 'array'"),
    ],
)
def test_structured_check_schema_refuses_what_fails_the_metaschema(
    schema: dict[str, Any], message: str
) -> None:
    """A schema that fails Draft 2020-12's metaschema is refused, naming where and why."""
    with pytest.raises(SchemaInvalid, match=message) as caught:
        check_schema(schema)
    assert "\n" not in str(caught.value)


async def test_structured_check_schema_async_refuses_like_check_schema() -> None:
    """The doors' async check passes a good schema back and refuses a bad one the same way."""
    assert await structured.check_schema_async(PERSON) == PERSON
    with pytest.raises(SchemaInvalid, match=r"at \$\.required"):
        await structured.check_schema_async({"required": "name"})


def test_structured_check_schema_honours_the_draft_named_by_dollar_schema() -> None:
    """A Draft 4 boolean exclusiveMinimum passes under Draft 4 and fails under 2020-12."""
    schema = {"minimum": 1, "exclusiveMinimum": True}
    assert check_schema({"$schema": DRAFT4, **schema})
    with pytest.raises(SchemaInvalid, match="exclusiveMinimum"):
        check_schema(schema)
    assert not validate_answer({"$schema": DRAFT4, **schema}, "1").ok


def test_structured_check_schema_refuses_an_unknown_draft() -> None:
    """A ``$schema`` naming no known draft is refused instead of guessed."""
    with pytest.raises(SchemaInvalid, match=r"\$schema 'https://example\.test/s' is not a known"):
        check_schema({"$schema": "https://example.test/s"})


@pytest.mark.parametrize(
    "ref", ["https://example.test/s.json", "other.json#/a", "//host/x", "urn:x:y"]
)
def test_structured_check_schema_refuses_references_to_other_documents(ref: str) -> None:
    """A ``$ref`` to another document is refused: ccgate never fetches a schema."""
    with pytest.raises(SchemaInvalid, match="only local references"):
        check_schema({"properties": {"a": {"$ref": ref}}})


def test_structured_local_references_are_checked_and_followed() -> None:
    """A ``#/$defs/...`` reference passes the check and validates through to its target."""
    schema = check_schema(
        {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}
    )
    assert validate_answer(schema, "[1, 2]").ok
    assert validate_answer(schema, '[1, "2"]').error == "at $[1]: '2' is not of type 'integer'"


@pytest.mark.parametrize("ref", ["#/$defs/missing", "#nowhere"])
def test_structured_check_schema_refuses_a_local_reference_that_does_not_resolve(
    ref: str,
) -> None:
    """A ``$ref`` to a place the schema does not have is refused before anything runs."""
    with pytest.raises(SchemaInvalid, match="does not resolve within the schema"):
        check_schema({"$defs": {"a": {}}, "$ref": ref})


def test_structured_unresolvable_reference_under_a_nested_id_fails_the_answer() -> None:
    """One the check cannot see (under a nested ``$id``) fails the answer instead of raising."""
    schema = check_schema(
        {"$defs": {"x": {"$id": "https://a.test/x", "$ref": "#/nope"}}, "$ref": "#/$defs/x"}
    )
    assert validate_answer(schema, "1").error == "the schema's reference '/nope' does not resolve"


def test_structured_check_schema_bounds_size_and_depth() -> None:
    """A schema over 64 KiB or nesting past 32 levels is refused before it is validated."""
    big = {"enum": ["x" * 1000] * 70}
    with pytest.raises(SchemaInvalid, match=r"bytes; the limit is 65536"):
        check_schema(big)
    deep: dict[str, Any] = {"type": "array"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaInvalid, match="nests deeper than 32 levels"):
        check_schema(deep)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"pattern": "(a"}, r"the regex '\(a' does not compile"),
        ({"patternProperties": {"[": {}}}, r"the regex '\[' does not compile"),
        (
            {"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties cannot be combined with patternProperties",
        ),
    ],
)
def test_structured_check_schema_refuses_regexes_it_cannot_run(
    schema: dict[str, Any], message: str
) -> None:
    """Regexes that do not compile, or that jsonschema would run unbounded, are refused."""
    with pytest.raises(SchemaInvalid, match=message):
        check_schema(schema)


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "Ada", "age": 36}',
        '```json\n{"name": "Ada", "age": 36}\n```',
        'Here it is: {"name": "Ada", "age": 36} as asked.',
    ],
)
def test_structured_valid_answer_passes_with_its_value(answer: str) -> None:
    """A matching answer, plain, fenced or in prose, passes with its value and canonical text."""
    verdict = validate_answer(check_schema(PERSON), answer)
    assert verdict.ok and verdict.error is None
    assert verdict.value == {"name": "Ada", "age": 36}
    assert verdict.text == '{"name":"Ada","age":36}'


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ('{"name": "Ada"}', "at $: 'age' is a required property"),
        ('{"name": "Ada", "age": -1}', "at $.age: -1 is less than the minimum of 0"),
        ('{"name": "Ada", "age": 1, "x": 2}', "at $: additional properties are not allowed"),
        ("no JSON here", "not valid JSON: "),
    ],
)
def test_structured_invalid_answer_names_where_and_why(answer: str, error: str) -> None:
    """A mismatch or non-JSON answer fails with the path and the validator's message."""
    verdict = validate_answer(PERSON, answer)
    assert not verdict.ok and verdict.value is None
    assert verdict.error is not None and verdict.error.startswith(error)


def test_structured_error_message_is_bounded() -> None:
    """A huge offending value is cut: the message stays under MAX_MESSAGE_CHARS."""
    verdict = validate_answer({"type": "integer"}, json.dumps("x" * 1_000_000))
    assert verdict.error is not None
    assert verdict.error.startswith("at $: 'xxx")
    assert len(verdict.error) <= structured.MAX_MESSAGE_CHARS


def test_structured_unique_items_is_linear_and_follows_json_equality() -> None:
    """uniqueItems over 100,000 objects answers fast; 1 equals 1.0 but true is not 1."""
    schema = check_schema({"uniqueItems": True})
    items = [{"n": n} for n in range(100_000)]
    started = time.monotonic()
    assert validate_answer(schema, json.dumps(items)).ok
    assert time.monotonic() - started < 5
    assert not validate_answer(schema, json.dumps([*items, {"n": 7.0}])).ok
    assert validate_answer(schema, "[1, true, 0, false]").ok


def test_structured_plain_pattern_on_a_long_string_is_not_quadratic() -> None:
    """``[a-z]+@`` over a 1 MiB string answers at once (Python's re would take hours)."""
    schema = check_schema({"type": "string", "pattern": "[a-z]+@"})
    started = time.monotonic()
    verdict = validate_answer(schema, json.dumps("a" * 1024 * 1024))
    assert verdict.error is not None and "does not match" in verdict.error
    assert time.monotonic() - started < 2


def test_structured_pattern_properties_decide_additional_properties() -> None:
    """Keys matching a patternProperties regex are not additional; others are refused."""
    schema = check_schema(
        {"patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False}
    )
    assert validate_answer(schema, '{"x-a": "1"}').ok
    assert validate_answer(schema, '{"x-a": 1}').error == "at $['x-a']: 1 is not of type 'string'"
    assert "'y' unexpected" in (validate_answer(schema, '{"y": "1"}').error or "")


async def test_structured_catastrophic_regex_is_bounded_and_frees_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exponential regex ends at the deadline as a failure; the loop runs meanwhile."""
    monkeypatch.setattr(structured, "VALIDATION_SECS", 0.5)
    schema = check_schema({"type": "string", "pattern": "^(a|a)*$"})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    verdict = await structured.validate_answer_async(schema, json.dumps("a" * 40 + "b"))
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert verdict.error == "the answer could not be checked within 0.5 s"
    assert 0.4 < elapsed < 2
    assert ticks > 15


def test_structured_reference_loop_fails_instead_of_crashing() -> None:
    """A schema that refers to itself without end fails the answer; nothing raises."""
    verdict = validate_answer(check_schema({"$ref": "#"}), "1")
    assert verdict.error == "the answer nests too deep to be checked against the schema"


def test_structured_stored_request_carries_the_schema_and_tells_the_model() -> None:
    """A job's stored request holds the schema beside ``response_format: json``, and its
    system prompt gains the schema after the lines already there."""
    run = RunRequest.from_text("x", "sonnet", append_system_prompt="JSON only.")
    stored = request_to_json(run, json_schema=PERSON)
    assert (stored["response_format"], stored["json_schema"]) == ("json", PERSON)
    assert stored["append_system_prompt"] == (
        "JSON only.\n\nThe JSON value must match this JSON Schema: "
        + json.dumps(PERSON, separators=(",", ":"))
    )
    assert request_from_json(stored).content == run.content
    assert "json_schema" not in request_to_json(run)


def test_structured_repair_request_continues_the_conversation() -> None:
    """The repair run keeps the request, moves its turn and the answer into history, and asks
    again quoting the validator's message."""
    earlier = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
    ]
    request = RunRequest.from_text("give JSON", "sonnet", history=earlier, timeout_secs=30)
    repair = repair_request(request, '{"age": "x"}', "at $.age: 'x' is not of type 'integer'")
    assert repair.history == [
        *earlier,
        {"role": "user", "content": [{"type": "text", "text": "give JSON"}]},
        {"role": "assistant", "content": [{"type": "text", "text": '{"age": "x"}'}]},
    ]
    [turn] = repair.content
    assert turn["type"] == "text"
    assert "at $.age: 'x' is not of type 'integer'" in turn["text"]
    assert "only the corrected JSON" in turn["text"]
    assert (repair.model, repair.timeout_secs) == ("sonnet", 30)


def test_structured_combined_result_sums_usage_and_cost() -> None:
    """Both runs' tokens and cost add up; the text is the repair run's."""
    first = RunResult("a", usage={"input_tokens": 5, "output_tokens": 7}, cost_usd=0.001)
    second = RunResult("b", usage={"input_tokens": 9, "cache_read_input_tokens": 2}, cost_usd=None)
    total = combined(first, second)
    assert total.text == "b"
    assert total.usage == {"input_tokens": 14, "output_tokens": 7, "cache_read_input_tokens": 2}
    assert total.cost_usd == 0.001
