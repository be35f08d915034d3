"""``POST /api/v1/run`` through the real app with a scripted runner."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message

from ccgate.api.deps import app_services
from ccgate.jobs import Submission
from ccgate.runners.base import RunError
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["request_id"] == response.headers["request-id"]
    return body["error"]  # type: ignore[no-any-return]


async def test_run_returns_the_finished_job(gateway: Gateway) -> None:
    """A sync run answers 200 with the job object: result, usage, cost, session, metadata."""
    response = await gateway.run({"prompt": "hello", "metadata": {"trace": "t-1"}})
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "completed"
    assert job["result"] == "reply: hello"
    assert job["job_id"].startswith("job_")
    assert job["usage"] == {"input_tokens": 5, "output_tokens": 7}
    assert (job["cost_usd"], job["model"]) == (0.001, "sonnet")
    assert job["session_id"].startswith("ses_")
    assert job["metadata"] == {"trace": "t-1"}
    assert job["created_at"].endswith("Z") and job["finished_at"]


async def test_run_accepts_curl_form_content_type(gateway: Gateway) -> None:
    """``curl -d '{...}'`` (form content type) is still read as JSON."""
    response = await gateway.client.post(
        "/api/v1/run",
        content=b'{"prompt":"Name 3 colors"}',
        headers={**gateway.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["result"] == "reply: Name 3 colors"


async def test_run_json_format_returns_parsed_value(gateway_factory: Any) -> None:
    """``response_format: json`` strips fences, parses, and asks the model for JSON only."""
    runner = FakeRunner(reply='```json\n{"colors": ["red", "green", "blue"]}\n```')
    gw = await gateway_factory(runner)
    response = await gw.run({"prompt": "Name 3 colors as JSON", "response_format": "json"})
    assert response.json()["result"] == {"colors": ["red", "green", "blue"]}
    assert "JSON" in (runner.started[0].append_system_prompt or "")


async def test_run_json_format_unparseable_keeps_text_with_note(gateway_factory: Any) -> None:
    """An answer that is not JSON comes back as text plus result_parse_error."""
    gw = await gateway_factory(FakeRunner(reply="red, green, blue"))
    job = (await gw.run({"prompt": "x", "response_format": "json"})).json()
    assert job["result"] == "red, green, blue"
    assert "not valid JSON" in job["result_parse_error"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer ccg_wrong"}, "invalid or revoked"),
        ({"Authorization": "Basic abc"}, "missing API key"),
    ],
)
async def test_run_without_valid_key_is_401(
    gateway: Gateway, headers: dict[str, str], message: str
) -> None:
    """No key, a wrong key or a non-bearer scheme get 401 in the native error shape."""
    response = await gateway.client.post("/api/v1/run", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    error = _error(response)
    assert error["type"] == "authentication_error" and message in error["message"]


async def test_run_accepts_x_api_key_header(gateway: Gateway) -> None:
    """The Anthropic SDK's ``x-api-key`` header authenticates too."""
    response = await gateway.client.post(
        "/api/v1/run", json={"prompt": "x"}, headers={"X-API-Key": gateway.key}
    )
    assert response.status_code == 200


async def test_run_revoked_key_fails_on_next_request(gateway: Gateway) -> None:
    """Revoking takes effect on the very next request."""
    assert (await gateway.run({"prompt": "x"})).status_code == 200
    await app_services(gateway.app).keyring.revoke("app")
    assert (await gateway.run({"prompt": "x"})).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "timeout_secs": "soon"}, "timeout_secs"),
        ({"prompt": "x", "timeout_secs": -1}, "timeout_secs"),
        ({"prompt": "x", "response_format": "xml"}, "response_format"),
        ({"prompt": "x", "promt": "typo"}, "promt"),
        ({"prompt": "x", "metadata": "not an object"}, "metadata"),
    ],
)
async def test_run_invalid_field_is_400_naming_it(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    """Each invalid or unknown field gets 400 invalid_request with the field named."""
    response = await gateway.run(body)
    assert response.status_code == 400
    error = _error(response)
    assert error["type"] == "invalid_request"
    assert error["param"] == field and field in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"prompt": "\\ud800 lone surrogate"}',
        b'{"prompt": "x", "timeout_secs": NaN}',
    ],
)
async def test_run_malformed_body_is_400(gateway: Gateway, raw: bytes) -> None:
    """Empty, malformed, deeply nested, non-UTF-8, non-object or invalid-Unicode bodies get 400,
    never 500."""
    response = await gateway.client.post("/api/v1/run", content=raw, headers=gateway.auth())
    assert response.status_code == 400
    assert _error(response)["type"] == "invalid_request"


async def test_run_disallowed_model_lists_allowed(gateway_factory: Any) -> None:
    """An unknown model is a 400 that lists the allowed ones."""
    gw = await gateway_factory(CCGATE_ALLOWED_MODELS="sonnet,haiku")
    response = await gw.run({"prompt": "x", "model": "opus"})
    assert response.status_code == 400
    assert "allowed: sonnet, haiku" in _error(response)["message"]


async def test_run_body_over_limit_is_413(gateway_factory: Any) -> None:
    """A body past CCGATE_MAX_BODY_BYTES is refused with 413 before it is read whole."""
    gw = await gateway_factory(CCGATE_MAX_BODY_BYTES=2048)
    response = await gw.run({"prompt": "x" * 5000})
    assert response.status_code == 413
    assert _error(response)["type"] == "request_too_large"


async def test_run_prompt_over_limit_is_413(gateway_factory: Any) -> None:
    """A prompt past CCGATE_MAX_PROMPT_BYTES is refused with 413 and the limit named."""
    gw = await gateway_factory(CCGATE_MAX_PROMPT_BYTES=100)
    response = await gw.run({"prompt": "é" * 60})
    assert response.status_code == 413
    assert "CCGATE_MAX_PROMPT_BYTES" in _error(response)["message"]


async def test_run_timeout_is_capped_by_config(gateway_factory: Any) -> None:
    """A request's timeout_secs never exceeds CCGATE_JOB_TIMEOUT_SECS."""
    runner = FakeRunner()
    gw = await gateway_factory(runner, CCGATE_JOB_TIMEOUT_SECS=30)
    await gw.run({"prompt": "x", "timeout_secs": 9999})
    await gw.run({"prompt": "x", "timeout_secs": 5})
    assert [r.timeout_secs for r in runner.started] == [30, 5]


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("upstream_rate_limited", 429),
        ("upstream_auth_error", 502),
        ("upstream_overloaded", 503),
        ("timeout", 504),
        ("cli_error", 502),
        ("upstream_bad_request", 400),
    ],
)
async def test_run_failure_maps_to_status(
    gateway_factory: Any, error_type: str, status: int
) -> None:
    """A failed run answers with its error type's documented status and the job id."""
    gw = await gateway_factory(FakeRunner(error=RunError(error_type, "it broke")))
    response = await gw.run({"prompt": "x"})
    assert response.status_code == status
    error = _error(response)
    assert (error["type"], error["message"]) == (error_type, "it broke")
    assert error["job_id"].startswith("job_")


async def test_run_full_queue_is_503_with_retry_after(gateway_factory: Any) -> None:
    """When the queue is full the submit is refused with 503 queue_full and Retry-After."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner, CCGATE_QUEUE_SIZE=1, CCGATE_CONCURRENCY=1)
    submission = Submission(
        None, "native", {"model": "sonnet", "content": [{"type": "text", "text": "a"}]}
    )
    await app_services(gw.app).jobs.submit(submission)
    while runner.running == 0:
        await asyncio.sleep(0.01)
    await app_services(gw.app).jobs.submit(submission)
    response = await gw.run({"prompt": "x"})
    assert response.status_code == 503
    assert _error(response)["type"] == "queue_full"
    assert int(response.headers["Retry-After"]) >= 1
    runner.released.set()


async def test_run_unknown_route_and_method_use_error_shape(gateway: Gateway) -> None:
    """404 and 405 come back in the native error shape too."""
    missing = await gateway.client.get("/api/v1/nothing", headers=gateway.auth())
    assert missing.status_code == 404 and _error(missing)["type"] == "not_found"
    wrong = await gateway.client.get("/api/v1/run", headers=gateway.auth())
    assert wrong.status_code == 405 and _error(wrong)["type"] == "method_not_allowed"


async def test_run_writes_audit_row_without_prompt_text(gateway: Gateway) -> None:
    """Each request leaves an audit row with sizes and tokens but no prompt text."""
    await gateway.run({"prompt": "top secret plan"})
    await app_services(gateway.app).audit.flush()
    [row] = await app_services(gateway.app).store.audit.recent()
    assert (row["key_name"], row["door"], row["http_status"]) == ("app", "native", 200)
    assert row["job_status"] == "completed" and row["model"] == "sonnet"
    assert row["prompt_bytes"] == len("top secret plan")
    assert (row["input_tokens"], row["output_tokens"]) == (5, 7)
    assert row["prompt_text"] is None


async def test_run_audit_keeps_prompt_only_when_enabled(gateway_factory: Any) -> None:
    """CCGATE_AUDIT_PROMPTS=true stores the prompt text in the audit row."""
    gw = await gateway_factory(CCGATE_AUDIT_PROMPTS="true")
    await gw.run({"prompt": "keep me"})
    await app_services(gw.app).audit.flush()
    [row] = await app_services(gw.app).store.audit.recent()
    assert row["prompt_text"] == "keep me"


async def test_run_rejected_request_is_audited(gateway: Gateway) -> None:
    """A 401 also leaves an audit row, with no key name."""
    await gateway.client.post("/api/v1/run", json={"prompt": "x"})
    await app_services(gateway.app).audit.flush()
    [row] = await app_services(gateway.app).store.audit.recent()
    assert (row["http_status"], row["key_name"]) == (401, None)


async def test_run_client_gone_mid_body_is_audited_as_499(gateway: Gateway) -> None:
    """A client that hangs up while its body is read is audited as 499, never as a 500."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"prompt": "cut sh', "more_body": True}
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/run",
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("ccgate.test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"authorization", gateway.auth()["Authorization"].encode()),
            (b"content-type", b"application/json"),
        ],
    }
    await gateway.app(scope, receive, send)
    await app_services(gateway.app).audit.flush()
    [row] = await app_services(gateway.app).store.audit.recent()
    assert (row["http_status"], row["key_name"]) == (499, "app")
