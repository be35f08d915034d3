"""Reading a request body: every encoding JSON allows is read as ``json.loads`` reads it, and
what it cannot read is refused with its own words."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from ccgate.api.request_body import read_json_object
from ccgate.errors import ApiError

_OBJECT = {"prompt": "Name 3 colors é ✓ \U0001f600", "n": [1, 2.5, True, None]}


def _request(body: bytes) -> Request:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def _loads_error(body: bytes) -> str:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        json.loads(body, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"malformed JSON body: {exc}"
    raise AssertionError("json.loads read it")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(_OBJECT).encode(),
        json.dumps(_OBJECT, ensure_ascii=False).encode("utf-8"),
        json.dumps(_OBJECT, ensure_ascii=False).encode("utf-8-sig"),
        json.dumps(_OBJECT, ensure_ascii=False).encode("utf-16"),
        json.dumps(_OBJECT, ensure_ascii=False).encode("utf-16-be"),
        json.dumps(_OBJECT, ensure_ascii=False).encode("utf-32-le"),
    ],
    ids=["ascii", "utf-8", "utf-8-bom", "utf-16-bom", "utf-16-be", "utf-32-le"],
)
async def test_request_body_every_json_encoding_is_read(body: bytes) -> None:
    """A body in any of JSON's encodings, with or without a byte order mark, is read."""
    assert await read_json_object(_request(body)) == _OBJECT


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": NaN}',
        b'{"prompt": -Infinity}',
        b'{"prompt": "x",}',
        b'{"prompt": "\xff"}',
        b'{"prompt": "x"} trailing',
        '{"prompt": "x"}'.encode("utf-16-le")[:-1],
    ],
    ids=["nan", "infinity", "trailing-comma", "bad-utf-8", "extra-data", "cut-utf-16"],
)
async def test_request_body_unreadable_json_is_refused_in_its_words(body: bytes) -> None:
    """A body JSON cannot read is a 400 saying what ``json.loads`` says about it."""
    with pytest.raises(ApiError) as refused:
        await read_json_object(_request(body))
    assert refused.value.error_type == "invalid_request"
    assert refused.value.message == _loads_error(body)
