"""Reading a model's answer as JSON: fences, prose, refusals, and linear cost on hostile text."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ccgate import jsonanswer
from ccgate.jsonanswer import (
    INLINE_ANSWER_CHARS,
    MAX_ANSWER_CHARS,
    MAX_DEPTH,
    parse_json_answer,
    read_json_answer,
    read_json_answer_async,
)

# Answers built to make a backtracking reader slow: (name, answer of n units).
HOSTILE: list[tuple[str, Callable[[int], str]]] = [
    ("unclosed fence over blank lines", lambda n: "```\n" + " \n" * n + "x"),
    ("tagged fence over tab lines", lambda n: "```json" + "\n \t" * n + "!"),
    ("fence opened on every line", lambda n: "```\n" * n + "{"),
    ("nested fences", lambda n: "```json\n" + "```\n" * n + "```"),
    ("brackets and braces", lambda n: "{[" * n + "prose"),
    ("prose between many candidates", lambda n: "say {" * n + " and ]" * n),
]


def _cpu_secs(text: str) -> float:
    """The least CPU time of three reads of ``text`` (the least is the least noisy)."""
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        read_json_answer(text)
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n["red", "green"]\n```', ["red", "green"]),
        ('```\n{"a": [1]}\n```', {"a": [1]}),
        ('Here you go: {"colors": ["red"]} Enjoy!', {"colors": ["red"]}),
        ("  42 ", 42),
        ("null", None),
    ],
)
def test_jsonanswer_parses_fenced_and_wrapped_values(text: str, value: object) -> None:
    """Fences and prose around a single JSON value do not stop it being parsed."""
    assert parse_json_answer(text) == (value, None)


def test_jsonanswer_keeps_text_and_explains_when_unparseable() -> None:
    """An answer that holds no JSON comes back as text with a parse error note."""
    value, error = parse_json_answer("red, green and blue")
    assert value == "red, green and blue"
    assert error is not None and "not valid JSON" in error


@pytest.mark.parametrize(("name", "build"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_jsonanswer_hostile_answers_cost_time_linear_in_their_length(
    name: str, build: Callable[[int], str]
) -> None:
    """Eight times the hostile text costs about eight times the CPU, never 64 or 512 times."""
    small, large = build(150), build(1200)
    assert read_json_answer(large).error is not None
    assert _cpu_secs(large) <= 24 * _cpu_secs(small) + 0.01


@pytest.mark.parametrize(("name", "build"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_jsonanswer_reads_an_answer_with_at_most_two_parses(
    name: str, build: Callable[[int], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many fences or brackets an answer holds, it is handed to json.loads twice at most."""
    calls: list[int] = []
    real_loads = json.loads

    def counting_loads(text: str, **kwargs: Any) -> Any:
        calls.append(len(text))
        return real_loads(text, **kwargs)

    monkeypatch.setattr("ccgate.jsonanswer.json.loads", counting_loads)
    read_json_answer(build(1200))
    assert 1 <= len(calls) <= 2


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "[1, Infinity]",
        "-Infinity",
        "1e999",
        '{"a": "\\ud800"}',
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        "[" * 100_000,
        "1" * 5000,
    ],
)
def test_jsonanswer_refuses_values_that_cannot_be_sent_back(text: str) -> None:
    """NaN, infinities, lone surrogates, huge integers and deep nesting are text, not values."""
    answer = read_json_answer(text)
    assert (answer.value, answer.text) == (None, None)
    assert answer.error is not None and answer.error.startswith("not valid JSON")
    assert parse_json_answer(text) == (text, answer.error)


def test_jsonanswer_keeps_nesting_up_to_the_limit() -> None:
    """A value nested exactly MAX_DEPTH deep still parses, and its canonical text round-trips."""
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    answer = read_json_answer(text)
    assert answer.error is None and answer.text == text
    assert json.loads(answer.text) == answer.value


def test_jsonanswer_does_not_read_answers_over_the_size_limit() -> None:
    """An answer longer than MAX_ANSWER_CHARS is not parsed at all; the note says why."""
    answer = read_json_answer("[" + "1," * (MAX_ANSWER_CHARS // 2) + "1]")
    assert answer.value is None and answer.error is not None
    assert str(MAX_ANSWER_CHARS) in answer.error


async def test_jsonanswer_reads_long_answers_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short answer is read on the loop's thread; a long one in a worker thread."""
    threads: list[int] = []
    real_read = jsonanswer.read_json_answer

    def recording_read(
        text: str, max_chars: int = jsonanswer.MAX_ANSWER_CHARS
    ) -> jsonanswer.JsonAnswer:
        threads.append(threading.get_ident())
        return real_read(text, max_chars)

    monkeypatch.setattr(jsonanswer, "read_json_answer", recording_read)
    short = await read_json_answer_async('{"a": 1}')
    long = await read_json_answer_async(json.dumps(["x" * INLINE_ANSWER_CHARS]))
    assert short.value == {"a": 1} and long.value == ["x" * INLINE_ANSWER_CHARS]
    assert threads[0] == threading.get_ident() != threads[1]
