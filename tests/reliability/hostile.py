"""Values that have broken web services before, by where in a request they can travel.

The fuzzer draws values from the schema and rarely lands on the extremes; these are sent
on purpose, one at a time, into every parameter and every top-level body field.
"""

from __future__ import annotations

import math
from typing import Any

_DEEP = 200


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"a": [value]}
    return value


INTEGERS: tuple[int, ...] = (-1, 0, 2**31, 2**63, -(2**63) - 1, 10**30)
FINITE_NUMBERS: tuple[float, ...] = (-0.0, 5e-324, 1e-300, 1e308, -1e308)
NON_FINITE: tuple[float, ...] = (math.nan, math.inf, -math.inf)
# Text any URL, header or JSON can carry.
PLAIN_TEXT: tuple[str, ...] = (
    "",
    "-1",
    "1e999",
    "NaN",
    "null",
    "99999999999999999999999",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "0000-00-00",
    "2026-13-45T25:61:61Z",
    "x" * 8000,
)
# Text a URL or JSON can carry but a header cannot (not even padding spaces).
UNICODE_TEXT: tuple[str, ...] = (
    " ",
    "\x00",
    "a\x00b",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "\U0001f4a5" * 500,
    "../../../etc/passwd",
    "%00",
)
# Only a body carries these: a lone surrogate is not UTF-8, 100 kB is past any URL limit,
# and the rest are not text at all.
JSON_ONLY: tuple[Any, ...] = (
    "\ud800",
    "x" * 100_000,
    [],
    {},
    True,
    None,
    [0] * 10_000,
    {"k" * 1000: "v"},
    {"\x00": 1},
    {"a": "\x00"},
    {"a": math.nan},
    {"a": 10**400},
    _nested(_DEEP),
    [[[[[]]]]],
)


def for_header() -> tuple[str, ...]:
    """Values for a header parameter."""
    return PLAIN_TEXT + tuple(str(n) for n in INTEGERS)


def for_url() -> tuple[str, ...]:
    """Values for a path or query parameter."""
    return for_header() + tuple(repr(f) for f in FINITE_NUMBERS) + UNICODE_TEXT


def for_json() -> tuple[Any, ...]:
    """Values for a field of a JSON body, whatever type the schema asks for."""
    return INTEGERS + FINITE_NUMBERS + NON_FINITE + PLAIN_TEXT + UNICODE_TEXT + JSON_ONLY


# Parts of a multipart upload: (filename, content type).
UPLOAD_PARTS: tuple[tuple[str, str], ...] = (
    ("", "text/plain"),
    ("a\x00b.txt", "text/plain"),
    ("../../../etc/passwd", "text/plain"),
    ("x" * 10_000 + ".txt", "text/plain"),
    ("a.txt", ""),
    ("a.txt", "text/" + "x" * 10_000),
    ("a.txt", "*/*"),
    ("a.txt", "application/json; charset=\u00ff"),
    ("a.pdf", "application/pdf"),
    ("a.png", "image/png"),
)
