"""A model's answer read as one JSON value, in time linear in its length.

Answers are hostile input: a model can be talked into writing anything. So the reading never
backtracks: a code fence around the whole answer is taken off by a plain scan, and the
"prose around one value" rule is one more parse of the span from the first ``{``/``[`` to
the last ``}``/``]``, so an answer costs at most two ``json.loads`` calls. The value must also
survive being sent back: NaN, Infinity, out-of-range numbers, lone surrogates and nesting
deeper than ``MAX_DEPTH`` are refused as not JSON. A job reads its answer once, when it ends
(``read_json_answer_async``), and keeps the result; readers never parse it again.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Longer answers are not read as JSON at all: the text comes back with a note.
MAX_ANSWER_CHARS = 4 * 1024 * 1024
# Longer answers are read in a worker thread, so the event loop keeps serving.
INLINE_ANSWER_CHARS = 64 * 1024
# A job stored before answers were read at its end is read when shown, on the event loop:
# only up to this length.
MAX_ANSWER_CHARS_ON_VIEW = 256 * 1024
# Deeper values are refused: rendering them would recurse past Python's limit.
MAX_DEPTH = 128

_LANGUAGE_TAG = re.compile(r"[A-Za-z0-9_-]*")
_FENCE = "```"


@dataclass(frozen=True)
class JsonAnswer:
    """An answer read as JSON: ``value`` and its canonical ``text`` when it parsed,
    otherwise ``error`` says why not (and ``value``/``text`` are None)."""

    value: Any
    text: str | None
    error: str | None


def answer_read_as_json(request: Mapping[str, Any]) -> bool:
    """Whether a job's stored request asks for its answer to be read as JSON when it ends:
    ``response_format: json``, or ``read_as_json`` (doors that parse any answer that is)."""
    return request.get("response_format") == "json" or request.get("read_as_json") is True


def read_json_answer(answer: str, max_chars: int = MAX_ANSWER_CHARS) -> JsonAnswer:
    """Read ``answer`` as one JSON value: one code fence (with or without a language tag)
    around it is dropped, and prose around a single object or array is tolerated. An answer
    longer than ``max_chars`` is not read at all."""
    if len(answer) > max_chars:
        return JsonAnswer(
            None, None, f"not read as JSON: the answer is longer than {max_chars} characters"
        )
    candidate = _unfence(answer.strip())
    try:
        return _load(candidate)
    except ValueError as exc:
        first_error = f"not valid JSON: {exc}"
    start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
    end = max(candidate.rfind("}"), candidate.rfind("]"))
    if 0 <= start < end and (start, end) != (0, len(candidate) - 1):
        try:
            return _load(candidate[start : end + 1])
        except ValueError:
            pass
    return JsonAnswer(None, None, first_error)


async def read_json_answer_async(answer: str) -> JsonAnswer:
    """``read_json_answer``, in a worker thread when the answer is long."""
    if len(answer) <= INLINE_ANSWER_CHARS:
        return read_json_answer(answer)
    return await asyncio.to_thread(read_json_answer, answer)


def parse_json_answer(answer: str, max_chars: int = MAX_ANSWER_CHARS) -> tuple[Any, str | None]:
    """``(value, None)`` when ``answer`` reads as JSON, else ``(answer, reason)``."""
    read = read_json_answer(answer, max_chars)
    return (answer, read.error) if read.error is not None else (read.value, None)


def _unfence(candidate: str) -> str:
    """The inside of a code fence that wraps all of ``candidate``; else ``candidate``.

    The opening fence may carry a language tag and must end its line.
    """
    if len(candidate) < 2 * len(_FENCE) or not (
        candidate.startswith(_FENCE) and candidate.endswith(_FENCE)
    ):
        return candidate
    tag = _LANGUAGE_TAG.match(candidate, len(_FENCE))
    assert tag is not None  # the pattern matches the empty string
    inside = candidate[tag.end() : -len(_FENCE)]
    body = inside.lstrip()
    if "\n" not in inside[: len(inside) - len(body)]:
        return candidate
    return body.rstrip()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _load(candidate: str) -> JsonAnswer:
    """Parse ``candidate`` strictly; ValueError says why it is not a JSON value we can keep."""
    try:
        value = json.loads(candidate, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _deeper_than(value, MAX_DEPTH, candidate):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate") from None
    except ValueError:
        raise ValueError("a number is out of range") from None
    return JsonAnswer(value, text, None)


def _deeper_than(value: Any, limit: int, source: str) -> bool:
    """Whether ``value`` nests more than ``limit`` containers deep (walked without recursion)."""
    if source.count("[") + source.count("{") <= limit:
        return False  # too few brackets to nest that deep
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
