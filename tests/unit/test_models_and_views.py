"""The model allowlist and the native job view's JSON answer parsing."""

from __future__ import annotations

import pytest

from ccgate.api.views import parse_json_answer
from ccgate.models import ModelNotAllowed, ModelPolicy


def test_model_policy_default_and_wildcards() -> None:
    """No model means the default; ``claude-*`` admits full ids; others are refused."""
    policy = ModelPolicy(("sonnet", "claude-*"), "sonnet")
    assert policy.resolve(None) == "sonnet"
    assert policy.resolve("claude-sonnet-4-5") == "claude-sonnet-4-5"
    with pytest.raises(ModelNotAllowed, match="allowed: sonnet, claude-"):
        policy.resolve("gpt-4o")


@pytest.mark.parametrize("name", ["--dangerously-skip-permissions", "-x", "", "a b", "x" * 300])
def test_model_policy_refuses_names_that_could_read_as_flags(name: str) -> None:
    """A model name can never start with '-' or hold spaces, even under a ``*`` allowlist."""
    with pytest.raises(ModelNotAllowed):
        ModelPolicy(("*",), "sonnet").resolve(name)


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": 1}', {"a": 1}),
    ('```json\n["red", "green"]\n```', ["red", "green"]),
    ('```\n{"a": [1]}\n```', {"a": [1]}),
    ('Here you go: {"colors": ["red"]} Enjoy!', {"colors": ["red"]}),
    ("  42 ", 42),
])
def test_json_answer_parses_fenced_and_wrapped_values(text: str, value: object) -> None:
    """Fences and prose around a single JSON value do not stop it being parsed."""
    assert parse_json_answer(text) == (value, None)


def test_json_answer_keeps_text_and_explains_when_unparseable() -> None:
    """An answer that holds no JSON comes back as text with a parse error note."""
    value, error = parse_json_answer("red, green and blue")
    assert value == "red, green and blue"
    assert error is not None and "not valid JSON" in error
