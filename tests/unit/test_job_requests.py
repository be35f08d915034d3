"""A RunRequest as a job stores it: the same dict ``dataclasses.asdict`` gives, a copy that
shares nothing mutable with the request it came from."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ccgate.jobs.requests import request_from_json, request_to_json
from ccgate.runners.base import RunRequest

_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVB"}}


def _requests() -> list[RunRequest]:
    return [
        RunRequest.from_text("Name 3 colors", "sonnet"),
        RunRequest(
            content=[{"type": "text", "text": "and this? é"}, _IMAGE],  # type: ignore[list-item]
            model="opus",
            history=[
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            ],
            system_prompt="be brief",
            append_system_prompt="json only",
            timeout_secs=30.5,
            idle_timeout_secs=3.0,
            stream=False,
            owner="key_1",
            max_tokens=100,
            stop_sequences=["END", "STOP"],
            temperature=0.0,
            top_p=1.0,
        ),
    ]


@pytest.mark.parametrize("request_", _requests())
def test_job_request_stored_as_asdict_gives_it(request_: RunRequest) -> None:
    """The stored request is exactly what ``dataclasses.asdict`` makes of it, and reads back."""
    stored = request_to_json(request_)
    assert stored == dataclasses.asdict(request_)
    assert list(stored) == list(dataclasses.asdict(request_))
    assert request_from_json(stored) == request_


def test_job_request_stored_shares_nothing_mutable() -> None:
    """Changing the request after it was stored leaves the stored form as it was."""
    request_ = _requests()[1]
    stored = request_to_json(request_)
    before = dataclasses.asdict(request_)
    request_.content[1]["source"]["data"] = "changed"  # type: ignore[typeddict-item]
    request_.history[0]["content"].append({"type": "text", "text": "more"})
    assert request_.stop_sequences is not None
    request_.stop_sequences.append("MORE")
    assert stored == before


def test_job_request_stored_with_unusual_values_as_asdict_gives_it() -> None:
    """A value that is not plain JSON (a tuple here) is copied the way asdict copies it."""
    odd: Any = ("a", ["b"])
    request_ = RunRequest.from_text("x", "sonnet", history=[{"role": "user", "content": odd}])
    stored = request_to_json(request_)
    assert stored == dataclasses.asdict(request_)
    assert stored["history"][0]["content"] == ("a", ["b"])
    assert stored["history"][0]["content"][1] is not odd[1]
