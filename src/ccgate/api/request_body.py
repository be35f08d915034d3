"""Request bodies: one JSON parse and one set of checks that every door shares.

Whatever a body holds ends up in the CLI's stdin or argv, in PostgreSQL ``TEXT`` and JSON
columns, in audit rows and in webhook payloads. None of them takes every value JSON (or
Python's parser) can express, so a body is refused with 400 before anything runs or is
queued when it holds:

- ``NaN``, ``Infinity`` or a number too large for a float (``1e999``): not JSON, and not
  storable as JSON;
- a NUL character (``\\u0000``) in any string or key: PostgreSQL refuses it in text and argv
  cannot carry it;
- a lone surrogate (``\\ud800``): not Unicode text, so it cannot be encoded as UTF-8;
- nesting deeper than ``MAX_BODY_DEPTH``.

The prompt size check against ``CCGATE_MAX_PROMPT_BYTES`` and body validation against a
pydantic model live here too, so no door is another door's toolbox.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ccgate.errors import ApiError

MAX_BODY_DEPTH = 64
BodyT = TypeVar("BodyT", bound=BaseModel)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Built once: ``json.loads`` with any option builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _loads(raw: bytes) -> Any:
    """``json.loads(raw, parse_constant=_no_constant)``: the same encodings, values and errors."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a checked JSON object, whatever its Content-Type; 400 for anything else."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError("invalid_request", "request body must be a JSON object")
    try:
        data = _loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_request", f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise ApiError("invalid_request", "malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "request body must be a JSON object")
    check_json_value(data)
    return data


# Where a value sits, as a linked trail (parent trail, key) built in O(1) per value; turned
# into a dotted field name only when a value is refused.
_Trail = tuple[Any, str] | None


def _field(trail: _Trail) -> str | None:
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        parts.append(key[:64])  # keys are checked before they join a trail; cut long ones
    return ".".join(reversed(parts)) or None


def _refuse(trail: _Trail, problem: str) -> ApiError:
    field = _field(trail)
    return ApiError("invalid_request", f"{field or 'body'}: {problem}", param=field)


def _check_text(text: str, trail: _Trail, what: str = "") -> None:
    if "\x00" in text:
        raise _refuse(trail, f"{what}must not contain a NUL character (\\u0000)")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse(
                trail, f"{what}must be valid Unicode text (it holds a lone surrogate)"
            ) from None


def check_json_value(value: Any, *, max_depth: int = MAX_BODY_DEPTH) -> None:
    """Raise a 400 naming the field when ``value`` holds a NUL, a lone surrogate, a
    non-finite number or nesting deeper than ``max_depth`` (an object or list is one level)."""
    pending: list[tuple[Any, _Trail, int]] = [(value, None, 0)]
    while pending:
        item, trail, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item, trail)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _refuse(trail, "number out of range")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise _refuse(trail, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, trail, "a key ")
                    pending.append((child, (trail, key), depth + 1))
            else:
                pending.extend((child, (trail, str(i)), depth + 1) for i, child in enumerate(item))


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Read a JSON body whatever its Content-Type and validate it, naming the bad field."""
    data = await read_json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        raise ApiError("invalid_request", f"{field}: {message}", param=field) from None


def check_unicode(value: Any, raw: bytes | None = None) -> None:
    """400 when ``value`` holds a lone surrogate (text that is not valid Unicode).

    With the ``raw`` body it came from, the whole value is encoded again only when parsing
    could have produced one: from a \\uD800-\\uDFFF escape, from UTF-8-coded surrogates
    (byte 0xED: json decodes with surrogatepass) or from a UTF-16/32 body (that costs ~1 ms
    per 200 KB).
    """
    if raw is not None and not (
        json.detect_encoding(raw) not in ("utf-8", "utf-8-sig")
        or b"\\ud" in raw
        or b"\\uD" in raw
        or b"\xed" in raw
    ):
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            "invalid_request", "the body holds a lone surrogate: text must be valid Unicode"
        ) from None


def check_prompt_size(
    size: int, limit: int, measured: str = "the conversation is {size} bytes of text"
) -> None:
    """413 when ``size`` bytes of prompt text pass ``limit`` (CCGATE_MAX_PROMPT_BYTES);
    ``measured`` says what was measured, in the door's words."""
    if size > limit:
        raise ApiError(
            "request_too_large",
            f"{measured.format(size=size)}; the limit is {limit} (CCGATE_MAX_PROMPT_BYTES)",
        )
