"""Compatibility paths for older gateways: ``/run``, ``/files``, ``/v1/complete``, health."""

from __future__ import annotations

from typing import Any

import pytest

from ccgate.api.run_body import JSON_ONLY_INSTRUCTION
from ccgate.runners.base import RunError
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


async def test_compat_run_maps_fields_and_parses_json_result(gateway_factory: Any) -> None:
    """``POST /run`` maps ``system`` to the system prompt and answers the parsed JSON value."""
    runner = FakeRunner(reply='Here you go: {"answer": 42}')
    gw = await gateway_factory(runner)
    response = await gw.client.post(
        "/run",
        headers=gw.auth(),
        json={"prompt": "six times seven?", "system": "be brief", "timeout_secs": 30},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ok", "result", "duration_ms", "stop_reason"}
    assert (body["ok"], body["result"]) == (True, {"answer": 42})
    assert isinstance(body["duration_ms"], int)
    [request] = runner.started
    assert (request.system_prompt, request.timeout_secs) == ("be brief", 30)
    assert request.content == [{"type": "text", "text": "six times seven?"}]


async def test_compat_run_returns_text_when_not_json(gateway: Gateway) -> None:
    """An answer that is not JSON comes back as the plain text."""
    response = await gateway.client.post(
        "/run", headers=gateway.auth(), json={"prompt": "hi", "client": "old-sdk"}
    )
    assert response.json()["result"] == "reply: hi"


async def test_compat_files_and_run_attach_an_image(gateway_factory: Any) -> None:
    """``POST /files`` answers like ``/api/v1/files`` (with 200, as older gateways did);
    ``/run`` attaches its token."""
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    upload = await gw.client.post("/files", files={"file": ("a.png", PNG)}, headers=gw.auth())
    assert upload.status_code == 200
    assert upload.json()["media_type"] == "image/png"
    token = upload.json()["file_token"]
    response = await gw.client.post(
        "/run", headers=gw.auth(), json={"prompt": "what?", "files": [token]}
    )
    assert response.json()["ok"] is True
    assert runner.started[0].content[1]["type"] == "image"


@pytest.mark.parametrize(
    ("error_type", "status"), [("upstream_rate_limited", 429), ("timeout", 504), ("cli_error", 502)]
)
async def test_compat_run_failure_is_wrapped_with_status(
    gateway_factory: Any, error_type: str, status: int
) -> None:
    """A failed run answers ``{ok: false, error}`` with the native error and its status."""
    gw = await gateway_factory(FakeRunner(error=RunError(error_type, "it broke")))
    response = await gw.client.post("/run", headers=gw.auth(), json={"prompt": "x"})
    assert response.status_code == status
    body = response.json()
    assert body["ok"] is False
    assert (body["error"]["type"], body["error"]["message"]) == (error_type, "it broke")
    assert body["error"]["request_id"] == response.headers["request-id"]


async def test_compat_run_auth_and_validation_errors_are_wrapped(gateway: Gateway) -> None:
    """No key is 401, a blank prompt 400, an unknown file 404: all ``{ok: false}``."""
    no_key = await gateway.client.post("/run", json={"prompt": "x"})
    blank = await gateway.client.post("/run", headers=gateway.auth(), json={"prompt": " "})
    bad_system = await gateway.client.post(
        "/run", headers=gateway.auth(), json={"prompt": "x", "system": 5}
    )
    unknown = await gateway.client.post(
        "/run", headers=gateway.auth(), json={"prompt": "x", "files": ["ff_nope"]}
    )
    answers = [
        (r.status_code, r.json()["ok"], r.json()["error"]["type"])
        for r in (no_key, blank, bad_system, unknown)
    ]
    assert answers == [
        (401, False, "authentication_error"),
        (400, False, "invalid_request"),
        (400, False, "invalid_request"),
        (404, False, "not_found"),
    ]
    assert bad_system.json()["error"]["param"] == "system"


async def test_compat_complete_text_shape(gateway: Gateway) -> None:
    """``output_format: text`` answers ``{ok, model, duration_ms, text}``."""
    response = await gateway.client.post(
        "/v1/complete", headers=gateway.auth(), json={"prompt": "hello"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ok", "model", "duration_ms", "text"}
    assert (body["ok"], body["model"], body["text"]) == (True, "sonnet", "reply: hello")


async def test_compat_complete_json_shape(gateway_factory: Any) -> None:
    """``output_format: json`` asks for JSON and answers ``{ok, result, usage}``."""
    runner = FakeRunner(reply='```json\n{"x": 2}\n```')
    gw = await gateway_factory(runner)
    response = await gw.client.post(
        "/v1/complete",
        headers=gw.auth(),
        json={"prompt": "give x", "system": "terse", "output_format": "json"},
    )
    assert response.json() == {
        "ok": True,
        "result": {"x": 2},
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }
    [request] = runner.started
    assert request.system_prompt == "terse"
    assert request.append_system_prompt == JSON_ONLY_INSTRUCTION


async def test_compat_complete_bad_format_is_wrapped_400(gateway: Gateway) -> None:
    """An unknown ``output_format`` is 400 naming the field, in the ``{ok: false}`` shape."""
    response = await gateway.client.post(
        "/v1/complete", headers=gateway.auth(), json={"prompt": "x", "output_format": "xml"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["ok"] is False and body["error"]["param"] == "output_format"


async def test_compat_run_goes_through_the_job_queue(gateway: Gateway) -> None:
    """A compat run is a job like any other: it is listed with the caller's jobs."""
    await gateway.client.post("/run", headers=gateway.auth(), json={"prompt": "queued"})
    listed = await gateway.client.get("/api/v1/jobs", headers=gateway.auth())
    [job] = listed.json()["jobs"]
    assert (job["status"], job["result"]) == ("completed", "reply: queued")


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/health"])
async def test_compat_health_aliases(gateway: Gateway, path: str) -> None:
    """The older health paths answer exactly like ``GET /health``."""
    response = await gateway.client.get(path)
    assert response.status_code == 200
    assert response.json() == (await gateway.client.get("/health")).json()
