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


def _where(path: tuple[str, ...]) -> str | None:
    # Only keys already checked get here; long ones are cut so a message stays short.
    return ".".join(part[:64] for part in path) or None


def _check_text(text: str, path: tuple[str, ...], what: str = "") -> None:
    if "\x00" in text:
        where = _where(path)
        raise ApiError("invalid_request", f"{where or 'body'}: {what}must not contain a NUL "
                       "character (\\u0000)", param=where)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            where = _where(path)
            raise ApiError("invalid_request", f"{where or 'body'}: {what}must be valid "
                           "Unicode text (it holds a lone surrogate)", param=where) from None


def check_json_value(value: Any, *, max_depth: int = MAX_BODY_DEPTH,
                     path: tuple[str, ...] = ()) -> None:
    """Raise a 400 naming the field when ``value`` holds a NUL, a lone surrogate, a
    non-finite number or nesting deeper than ``max_depth`` (an object or list is one level)."""
    pending: list[tuple[Any, tuple[str, ...], int]] = [(value, path, 0)]
    while pending:
        item, where, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                name = _where(where)
                raise ApiError("invalid_request", f"{name or 'body'}: number out of range",
                               param=name)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                name = _where(where)
                raise ApiError("invalid_request", f"{name or 'body'}: nested deeper than "
                               f"{max_depth} levels", param=name)
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, where, "a key ")
                    pending.append((child, (*where, key), depth + 1))
            else:
                pending.extend((child, (*where, str(i)), depth + 1)
                               for i, child in enumerate(item))
