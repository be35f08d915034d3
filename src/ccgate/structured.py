"""Structured outputs: a client's JSON Schema checked once, and a model's answer checked
against it.

Both the schema and the answer are hostile input, so every step is bounded:

- ``check_schema`` refuses a schema over ``MAX_SCHEMA_BYTES`` or ``MAX_SCHEMA_DEPTH``, one that
  fails its metaschema (Draft 2020-12 unless ``$schema`` names another draft), references a
  document other than itself (nothing is ever fetched), or holds a regex that does not compile.
- ``validate_answer`` reads the answer with the linear reader of ``ccgate.jsonanswer`` and
  validates it with a validator built once per schema. Regexes (``pattern``,
  ``patternProperties`` and the ``additionalProperties`` that depend on them) run on the
  ``regex`` engine with a timeout and without the GIL, because Python's ``re`` is quadratic even
  on plain patterns such as ``[a-z]+@`` and cannot be interrupted; ``uniqueItems`` is checked in
  linear time; every keyword checks a deadline of ``VALIDATION_SECS`` for the whole answer.
  ``format`` is an annotation only. ``validate_answer_async`` runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import referencing
import referencing.exceptions
import referencing.jsonschema
import regex

from ccgate.jsonanswer import read_json_answer
from ccgate.runners.base import RunRequest

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
# The whole validation of one answer, regexes included, must end within this.
VALIDATION_SECS = 2.0
# The error a client sees names its path and is cut to this length.
MAX_MESSAGE_CHARS = 400
# Errors looked at to choose the best one (a huge invalid answer has millions).
_ERRORS_CONSIDERED = 50
DEFAULT_DRAFT = jsonschema.Draft202012Validator
_DRAFTS: tuple[type[Any], ...] = (
    jsonschema.Draft202012Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft4Validator,
    jsonschema.Draft3Validator,
)
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_PATTERN_KEYWORDS = ("pattern", "patternProperties")


class SchemaInvalid(ValueError):
    """A client's schema that ccgate will not use; the message says why, on one line."""


class _TooSlow(Exception):
    """The validation of one answer ran past its deadline."""


@dataclass(frozen=True)
class Verdict:
    """An answer checked against a schema: ``ok`` with the parsed ``value`` and its canonical
    ``text``, or ``error`` (where and why, bounded) when it is not JSON or does not match."""

    ok: bool
    value: Any = None
    text: str | None = None
    error: str | None = None


def schema_of(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checked schema a job's stored request carries (``json_schema``), if any."""
    schema = request.get("json_schema")
    return schema if isinstance(schema, dict) else None


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """The system-prompt line that tells the model the schema its JSON answer must match."""
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    return f"The JSON value must match this JSON Schema: {text}"


def asking_for_schema(request: RunRequest, schema: Mapping[str, Any]) -> RunRequest:
    """``request`` with the schema appended to its system prompt (after any JSON-only line)."""
    line = schema_instruction(schema)
    append = request.append_system_prompt
    return dataclasses.replace(
        request, append_system_prompt=f"{append}\n\n{line}" if append else line
    )


def repair_instruction(error: str) -> str:
    """The user turn of the one repair run: the validator's message and what to send back."""
    return (
        "Your previous answer does not match the required JSON Schema. The validator says: "
        f"{error}\nAnswer again with only the corrected JSON value: no prose and no code fences."
    )


def check_schema(schema: object) -> dict[str, Any]:
    """``schema`` if ccgate can use it as a client's JSON Schema; else ``SchemaInvalid``."""
    if not isinstance(schema, dict):
        raise SchemaInvalid("json_schema: must be a JSON object")
    _check_shape(schema)
    draft = _draft_of(schema)
    try:
        size = len(json.dumps(schema, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError):
        raise SchemaInvalid("json_schema: is not plain JSON") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaInvalid(f"json_schema: is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")
    error = jsonschema.exceptions.best_match(draft(draft.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise SchemaInvalid(f"json_schema: {_describe(error)}")
    _check_regexes(schema)
    _check_local_refs(schema, draft)
    return schema


async def check_schema_async(schema: object) -> dict[str, Any]:
    """``check_schema`` for a door: in a worker thread, since checking a 64 KiB schema against
    its metaschema costs jsonschema a few hundred milliseconds."""
    return await asyncio.to_thread(check_schema, schema)


def validate_answer(schema: Mapping[str, Any], text: str) -> Verdict:
    """Read ``text`` as JSON (one fence and surrounding prose dropped) and check it against
    ``schema`` (already checked by ``check_schema``), within ``VALIDATION_SECS``."""
    read = read_json_answer(text)
    if read.error is not None:
        return Verdict(False, error=read.error)
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    token = _deadline.set(time.monotonic() + VALIDATION_SECS)
    try:
        errors = itertools.islice(validator.iter_errors(read.value), _ERRORS_CONSIDERED)
        error = jsonschema.exceptions.best_match(errors)
    except _TooSlow:
        return Verdict(False, error=f"the answer could not be checked within {VALIDATION_SECS:g} s")
    except RecursionError:
        return Verdict(False, error="the answer nests too deep to be checked against the schema")
    except referencing.exceptions.Unresolvable as exc:
        return Verdict(
            False, error=f"the schema's reference {str(exc.ref)[:100]!r} does not resolve"
        )
    finally:
        _deadline.reset(token)
    if error is not None:
        return Verdict(False, error=_describe(error))
    return Verdict(True, value=read.value, text=read.text)


async def validate_answer_async(schema: Mapping[str, Any], text: str) -> Verdict:
    """``validate_answer`` in a worker thread: a hostile schema costs the loop nothing."""
    return await asyncio.to_thread(validate_answer, schema, text)


# -- checking the schema -----------------------------------------------------------------


def _walk(node: Any) -> Iterator[tuple[Any, int]]:
    """Every container in ``node`` with its depth (1 for ``node``), without recursion."""
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _check_shape(schema: dict[str, Any]) -> None:
    """Depth first (before anything recurses into it), then references to other documents."""
    for node, depth in _walk(schema):
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaInvalid(f"json_schema: nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if not isinstance(node, dict):
            continue
        for keyword in _REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str) and not ref.startswith("#"):
                raise SchemaInvalid(
                    f"json_schema: {keyword} {ref[:100]!r} points outside the schema; "
                    "only local references (#/...) are allowed"
                )


def _check_local_refs(schema: dict[str, Any], draft: type[Any]) -> None:
    """Every ``$ref`` resolves within the schema. Checked only when no subschema has an id of
    its own (then references resolve against the root); otherwise an unresolvable one fails
    the answer when it is reached."""
    nodes = [node for node, _ in _walk(schema) if isinstance(node, dict)]
    if any(isinstance(n.get("$id", n.get("id")), str) for n in nodes if n is not schema):
        return
    root = referencing.Resource.from_contents(
        schema,
        default_specification=referencing.jsonschema.specification_with(
            draft.META_SCHEMA.get("$schema") or draft.META_SCHEMA["id"]
        ),
    )
    resolver = referencing.Registry().with_resource(root.id() or "", root).resolver(root.id() or "")
    for node in nodes:
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise SchemaInvalid(
                    f"json_schema: $ref {ref[:100]!r} does not resolve within the schema"
                ) from None


def _draft_of(schema: dict[str, Any]) -> type[Any]:
    """The validator class of the draft ``$schema`` names (Draft 2020-12 when absent)."""
    named = schema.get("$schema")
    if named is None:
        return DEFAULT_DRAFT
    if isinstance(named, str):
        for draft in _DRAFTS:
            if _same_uri(named, draft.META_SCHEMA.get("$schema") or draft.META_SCHEMA["id"]):
                return draft
    return _unknown_draft(named)


def _unknown_draft(named: object) -> type[Any]:
    raise SchemaInvalid(
        f"json_schema: $schema {str(named)[:100]!r} is not a known draft "
        "(2020-12, 2019-09, 7, 6, 4 or 3)"
    )


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("#") == b.rstrip("#")


def _check_regexes(schema: dict[str, Any]) -> None:
    """Every ``pattern`` and ``patternProperties`` key compiles on the engine that runs it;
    ``unevaluatedProperties`` beside ``patternProperties`` is refused, since jsonschema would
    run those regexes on Python's ``re``, where nothing bounds them."""
    nodes = [node for node, _ in _walk(schema) if isinstance(node, dict)]
    if any("unevaluatedProperties" in n for n in nodes) and any(
        "patternProperties" in n for n in nodes
    ):
        raise SchemaInvalid(
            "json_schema: unevaluatedProperties cannot be combined with patternProperties"
        )
    for node in nodes:
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
        for pattern in patterns:
            try:
                _compiled(pattern)
            except regex.error as exc:
                raise SchemaInvalid(
                    f"json_schema: the regex {pattern[:100]!r} does not compile: {exc}"
                ) from None


def _describe(error: jsonschema.exceptions.ValidationError) -> str:
    """``at <path>: <message>``, cut in the middle (where a long value's repr sits) to
    ``MAX_MESSAGE_CHARS``, so the reason at the end survives."""
    raw = error.message
    if len(raw) > 2 * MAX_MESSAGE_CHARS:
        raw = raw[:MAX_MESSAGE_CHARS] + raw[-MAX_MESSAGE_CHARS:]
    described = f"at {error.json_path}: {' '.join(raw.split())}"
    if len(described) > MAX_MESSAGE_CHARS:
        keep = (MAX_MESSAGE_CHARS - 1) // 2
        described = described[:keep] + "…" + described[-keep:]
    return described


# -- validating an answer ------------------------------------------------------------------

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("ccgate_schema_deadline")
_Keyword = Callable[[Any, Any, Any, Any], Iterator[jsonschema.exceptions.ValidationError]]


def _check_time() -> float:
    """Seconds left before the deadline; ``_TooSlow`` once it has passed."""
    left = _deadline.get(float("inf")) - time.monotonic()
    if left <= 0:
        raise _TooSlow
    return left


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def _search(pattern: str, text: str) -> bool:
    """``pattern`` found in ``text``, on the regex engine: bounded by the deadline, GIL free."""
    try:
        found = _compiled(pattern).search(text, timeout=_check_time(), concurrent=True)
    except TimeoutError:
        raise _TooSlow from None
    return found is not None


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[jsonschema.exceptions.ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[jsonschema.exceptions.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[jsonschema.exceptions.ValidationError]:
    """jsonschema's ``additionalProperties``, with ``patternProperties`` on ``_search``."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(
        key
        for key in instance
        if key not in properties and not any(_search(p, key) for p in patterns)
    )
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        shown = ", ".join(repr(extra) for extra in extras[:10])
        yield jsonschema.exceptions.ValidationError(
            f"additional properties are not allowed ({shown} unexpected)"
        )


def _unique_items(
    validator: Any, unique: Any, instance: Any, schema: Any
) -> Iterator[jsonschema.exceptions.ValidationError]:
    """``uniqueItems`` in linear time (jsonschema falls back to comparing every pair)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _equality_key(item)
        if key in seen:
            yield jsonschema.exceptions.ValidationError(
                f"the array has non-unique elements ({json.dumps(item)[:100]} repeats)"
            )
            return
        seen.add(key)


def _equality_key(value: Any) -> Any:
    """A hashable key equal for JSON Schema's equal values (1 == 1.0, true != 1)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _equality_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("a", tuple(_equality_key(v) for v in value))
    return ("v", value)


def _timed(keyword: _Keyword) -> _Keyword:
    """``keyword`` checking the deadline each time it runs."""

    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _check_time()
        return keyword(validator, value, instance, schema)

    return run


def _bounded(draft: type[Any]) -> type[Any]:
    """``draft`` with every keyword under the deadline and the costly ones replaced."""
    replaced: dict[str, _Keyword] = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "uniqueItems": _unique_items,
    }
    if "additionalProperties" in draft.VALIDATORS:
        replaced["additionalProperties"] = _additional_properties
    keywords = {
        name: _timed(replaced.get(name, keyword)) for name, keyword in draft.VALIDATORS.items()
    }
    # jsonschema's stubs leave ``extend`` untyped.
    extended: type[Any] = jsonschema.validators.extend(draft, keywords)  # type: ignore[no-untyped-call]
    return extended


_BOUNDED = {draft: _bounded(draft) for draft in _DRAFTS}


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str) -> Any:
    """The validator of one checked schema, built once: an empty registry, so no ``$ref``
    can fetch anything."""
    schema = json.loads(schema_text)
    return _BOUNDED[_draft_of(schema)](schema, registry=referencing.Registry())
