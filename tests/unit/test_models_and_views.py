"""The model allowlist: defaults, wildcards and names that could read as flags."""

from __future__ import annotations

import pytest

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
