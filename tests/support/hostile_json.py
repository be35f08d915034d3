"""Hypothesis strategies for what a hostile client sends: JSON values no backend can store
as they are, raw bodies with values ``json.dumps`` cannot write, and odd query strings."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# NUL, lone surrogates (both halves), and everything else, surrogates included.
_NASTY_TEXT = ["\x00", "a\x00b", "\ud800", "x\udfffy", "\ud83d", "\U0001f600", "\u202e"]
hostile_text = (
    st.text()
    | st.text(st.characters(exclude_categories=()), max_size=8)
    | st.sampled_from(_NASTY_TEXT)
)
hostile_numbers = (
    st.integers()
    | st.integers(min_value=2**31)
    | st.integers(max_value=-(2**63))
    | st.floats()
    | st.sampled_from([5e-324, -0.0, 1e308])
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# Containers from 2 to 40 levels deep: around the metadata (16) and body (64) bounds.
deep_values = st.integers(2, 40).map(_nested)
hostile_json = (
    st.recursive(
        st.none() | st.booleans() | hostile_numbers | hostile_text,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4)
        ),
        max_leaves=12,
    )
    | deep_values
)

# Literals ``json.dumps`` never writes: overflowing floats, integers past the parser's digit
# limit, and nesting deeper than Python's recursion limit.
_RAW_VALUES = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1" * 5000,
        "99999999999999999999",
        '"\\u0000"',
        '"\\ud800"',
        '"\\udc00\\ud800"',
        "[" * 3000 + "]" * 3000,
        "[" * 70 + "]" * 70,
        '{"a":' * 20 + "1" + "}" * 20,
    ]
)


def raw_bodies(fields: list[str], base: dict[str, Any]) -> st.SearchStrategy[str]:
    """A JSON object text: ``base`` with one of ``fields`` set to a raw hostile literal."""
    prefix = json.dumps(base)[:-1]
    comma = ", " if base else ""
    return st.builds(
        lambda field, raw: f'{prefix}{comma}"{field}": {raw}}}',
        st.sampled_from(fields),
        _RAW_VALUES,
    )


# Query values: huge and negative numbers, calendar extremes with offsets, NUL, junk.
_EDGE_DATES = [
    "9999-12-31",
    "0001-01-01",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999+00:00",
    "2026-02-30",
    "1970-01-01T00:00:00Z",
]
_junk = st.sampled_from(["", "-1", "0", "1e3", "²³¹", "١٢٣", "NaN", "\x00", "a\x00"]) | st.text(
    max_size=20
)
query_numbers = (
    st.sampled_from(["99999999999999999999", str(2**63), str(-(2**63) - 1)])
    | st.integers().map(str)
    | st.integers(min_value=10**9).map(str)
    | _junk
)
query_dates = (
    st.sampled_from(_EDGE_DATES)
    | st.dates().map(str)
    | st.builds(
        lambda when, offset: when.isoformat() + offset,
        st.datetimes(),
        st.sampled_from(["", "Z", "+01:00", "-05:00", "+23:59", "-23:59"]),
    )
    | _junk
)
query_words = st.sampled_from(["queued", "failed", "429", "day", "model", "app"]) | _junk
