"""Reading a JSON request body: one parse and one set of checks that every door shares.

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
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from ccgate.errors import ApiError

MAX_BODY_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a checked JSON object, whatever its Content-Type; 400 for anything else."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError("invalid_request", "request body must be a JSON object")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
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
