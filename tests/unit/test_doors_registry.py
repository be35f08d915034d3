"""The door registry: one table that audit rows, error shapes and rate-limit headers read."""

from __future__ import annotations

import pytest

from ccgate.api.errors import door_of_request
from ccgate.doors import DOOR_NAMES, door_named, door_of
from ccgate.limits import RateState, rate_headers

_STATE = RateState(requests_limit=10, requests_remaining=9, requests_reset_secs=5)


@pytest.mark.parametrize(
    ("path", "door", "shape"),
    [
        ("/api/v1/run", "native", "native"),
        ("/api/v1/jobs/job_1", "native", "native"),
        ("/v1/fetch", "native", "native"),
        ("/run", "compat", "native"),
        ("/v1/complete", "compat", "native"),
        ("/files", "compat", "native"),
        ("/v1/messages", "anthropic", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic", "anthropic"),
        ("/v1/chat/completions", "openai", "openai"),
        ("/v1/responses/resp_1", "openai", "openai"),
    ],
)
def test_doors_path_names_one_door_with_one_error_shape(path: str, door: str, shape: str) -> None:
    """A path's door (as audited) and its error shape come from the same registry row."""
    assert door_of(path).name == door
    assert door_of_request(path, {}) == shape == door_of(path).error_shape


def test_doors_models_path_belongs_to_the_callers_sdk() -> None:
    """``/v1/models`` is the Anthropic door for the Anthropic SDK, else the OpenAI door."""
    anthropic = {"anthropic-version": "2023-06-01"}
    assert door_of("/v1/models", anthropic).name == "anthropic"
    assert door_of_request("/v1/models", anthropic) == "anthropic"
    assert door_of("/v1/models", {}).name == "openai"
    assert door_of_request("/v1/models", {}) == "openai"


@pytest.mark.parametrize("name", DOOR_NAMES)
def test_doors_rate_headers_follow_the_registry_style(name: str) -> None:
    """Each door's rate-limit headers use the style its registry row declares."""
    headers = rate_headers(name, _STATE)
    prefix = "anthropic-ratelimit-" if door_named(name).rate_headers == "anthropic" else "x-"
    assert headers and all(h.startswith(prefix) for h in headers)


def test_doors_unknown_name_is_refused() -> None:
    """A door name that is not in the registry is a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="native"):
        door_named("smtp")
