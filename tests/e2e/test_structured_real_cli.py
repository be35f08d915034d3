"""Structured outputs through the real `ccgate serve` and the real CLI: a native run with a
JSON Schema is repaired once inside its job, or fails 422 with the raw text."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import system_texts, user_texts
from tests.support.fake_anthropic import FakeAnthropic, Text

pytestmark = pytest.mark.real_cli

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
    "required": ["city", "people"],
}
INVALID = '{"city": "Oslo", "people": "many"}'
MISMATCH = "at $.people: 'many' is not of type 'integer'"


def test_native_json_schema_run_is_repaired_by_a_second_cli_run(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """The model is told the schema; a mismatch gets one repair run (the first answer in its
    history, the validator's message in its prompt) and the run answers the repaired value."""
    fake.reply(Text(INVALID))
    fake.reply(Text('```json\n{"city": "Oslo", "people": 709000}\n```'))
    response = client.post("/api/v1/run", json={"prompt": "Oslo?", "json_schema": SCHEMA})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"city": "Oslo", "people": 709000}
    first, repair = fake.message_requests()[-2:]
    assert any('"people":{"type":"integer"}' in text for text in system_texts(first.body))
    assert INVALID in str(repair.body["messages"])
    assert any(MISMATCH in text for text in user_texts(repair.body))


def test_native_json_schema_run_failing_twice_is_422_with_raw_text(
    fake: FakeAnthropic, client: httpx.Client
) -> None:
    """Two answers that do not match end the run 422 schema_validation_failed, raw text kept."""
    fake.reply(Text(INVALID))
    fake.reply(Text("still no number"))
    response = client.post("/api/v1/run", json={"prompt": "Oslo?", "json_schema": SCHEMA})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "schema_validation_failed"
    assert error["raw_text"] == "still no number"
