"""JSON answers through the real `ccgate serve` and the real CLI: a hostile answer is read once,
when its job ends, and every later look at the job is served from that reading."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.fake_anthropic import FakeAnthropic, Text

pytestmark = pytest.mark.real_cli

# An unclosed fence over 1,200 blank lines: seconds of event loop for a backtracking reader.
HOSTILE = "```\n" + " \n" * 1200 + "no closing fence"


def test_json_run_with_hostile_answer_renders_quickly_every_time(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """The fence bomb comes back as text with a parse error, and GET and list stay fast."""
    fake.reply(Text(HOSTILE))
    response = client.post("/api/v1/run", json={"prompt": "json please", "response_format": "json"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["result"].startswith("```") and job["result"].endswith("no closing fence")
    assert job["result_parse_error"].startswith("not valid JSON")
    started = time.monotonic()
    for _ in range(3):
        again = client.get(f"/api/v1/jobs/{job['job_id']}")
        assert again.json()["result_parse_error"] == job["result_parse_error"]
        listed = client.get("/api/v1/jobs")
        assert listed.json()["jobs"][0]["result"] == job["result"]
    assert time.monotonic() - started < 3.0


def test_json_run_answer_in_a_fence_is_the_parsed_value(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """A value in a tagged code fence, with prose around it, is returned parsed on every view."""
    fake.reply(Text('Here:\n```json\n{"colors": ["red", "green"]}\n```'))
    response = client.post("/api/v1/run", json={"prompt": "json please", "response_format": "json"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["result"] == {"colors": ["red", "green"]} and "result_parse_error" not in job
    assert client.get(f"/api/v1/jobs/{job['job_id']}").json()["result"] == job["result"]
