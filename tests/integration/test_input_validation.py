"""Input no backend can store or run is a 400 before anything is queued, never a 500.

Each check runs on SQLite and on PostgreSQL, which refuses NUL in text and NaN in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ccgate.api.deps import app_services
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

ADMIN_TOKEN = "validation-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_NUL = "a\u0000b"


async def _started(factory: Callable[..., Any]) -> tuple[Gateway, FakeRunner]:
    runner = FakeRunner()
    return await factory(runner, CCGATE_ADMIN_TOKEN=ADMIN_TOKEN), runner


async def _nothing_queued(gw: Gateway, runner: FakeRunner) -> None:
    listed = (await gw.client.get("/api/v1/jobs", headers=gw.auth())).json()
    assert listed["total"] == 0 and runner.started == []


def _refused(response: httpx.Response) -> str:
    """The message of a native 400 ``invalid_request``."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    return str(error["message"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": _NUL}, "prompt"),
        ({"prompt": "x", "system_prompt": _NUL}, "system_prompt"),
        ({"prompt": "x", "append_system_prompt": _NUL}, "append_system_prompt"),
        ({"prompt": "x", "metadata": {"k": _NUL}}, "metadata.k"),
        ({"prompt": "x", "metadata": {_NUL: "v"}}, "metadata"),
    ],
)
async def test_validation_nul_in_native_text_is_400_before_queueing(
    db_gateway_factory: Callable[..., Any], body: dict[str, Any], field: str
) -> None:
    """A NUL in any text of a native run is a 400 naming the field; no job is stored."""
    gw, runner = await _started(db_gateway_factory)
    for path in ("/api/v1/run", "/api/v1/jobs"):
        response = await gw.client.post(path, json=body, headers=gw.auth())
        assert "NUL" in _refused(response)
        assert response.json()["error"]["param"] == field
    await _nothing_queued(gw, runner)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages",
            {"model": "sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": _NUL}]},
        ),
        (
            "/v1/messages",
            {
                "model": "sonnet",
                "max_tokens": 5,
                "system": _NUL,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        (
            "/v1/chat/completions",
            {"model": "sonnet", "messages": [{"role": "user", "content": _NUL}]},
        ),
        (
            "/v1/chat/completions",
            {
                "model": "sonnet",
                "messages": [
                    {"role": "system", "content": _NUL},
                    {"role": "user", "content": "hi"},
                ],
            },
        ),
    ],
)
async def test_validation_nul_in_compatible_doors_is_400(
    db_gateway_factory: Callable[..., Any], path: str, body: dict[str, Any]
) -> None:
    """A NUL in a message or system prompt at the compatible doors is a 400 in the door's
    own error shape, and nothing runs."""
    gw, runner = await _started(db_gateway_factory)
    response = await gw.client.post(path, json=body, headers=gw.auth())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "NUL" in error["message"]
    await _nothing_queued(gw, runner)


@pytest.mark.parametrize(
    "raw",
    [
        '{"prompt": "x", "metadata": {"a": NaN}}',
        '{"prompt": "x", "metadata": {"a": [Infinity]}}',
        '{"prompt": "x", "metadata": {"a": -Infinity}}',
        '{"prompt": "x", "metadata": {"a": 1e999}}',
        '{"prompt": "x", "metadata": {"a": "\\ud800"}}',
        '{"prompt": "x", "metadata": {"a": ' + "[" * 900 + "]" * 900 + "}}",
        '{"prompt": "x", "metadata": ' + '{"a": ' * 17 + "1" + "}" * 17 + "}",
    ],
)
async def test_validation_unstorable_metadata_is_400_before_the_run(
    db_gateway_factory: Callable[..., Any], raw: str
) -> None:
    """Metadata holding NaN, Infinity, an overflowing number, a lone surrogate or nesting
    past 16 levels is refused before the job runs (it used to run, bill, then fail)."""
    gw, runner = await _started(db_gateway_factory)
    _refused(await gw.client.post("/api/v1/run", content=raw, headers=gw.auth()))
    await _nothing_queued(gw, runner)


async def test_validation_metadata_sixteen_levels_deep_is_kept(
    db_gateway_factory: Callable[..., Any],
) -> None:
    """Metadata exactly 16 levels deep is accepted and comes back as sent."""
    gw, _ = await _started(db_gateway_factory)
    metadata = json.loads('{"a": ' * 15 + "1" + "}" * 15)
    response = await gw.run({"prompt": "x", "metadata": metadata})
    assert response.status_code == 200 and response.json()["metadata"] == metadata


@pytest.mark.parametrize("timeout", [5e-324, 0.5, 0.999])
async def test_validation_timeout_below_one_second_is_400(
    gateway_factory: Callable[..., Any], timeout: float
) -> None:
    """``timeout_secs`` under one second is a 400 naming it, not a run that times out."""
    gw, runner = await _started(gateway_factory)
    response = await gw.run({"prompt": "x", "timeout_secs": timeout})
    assert "timeout_secs" in _refused(response)
    await _nothing_queued(gw, runner)
    assert (await gw.run({"prompt": "x", "timeout_secs": 1})).status_code == 200


@pytest.mark.parametrize("offset", ["99999999999999999999", "1000000001"])
async def test_validation_huge_list_offset_is_400(
    db_gateway_factory: Callable[..., Any], offset: str
) -> None:
    """A job list ``offset`` past the documented maximum is a 400 naming it."""
    gw, _ = await _started(db_gateway_factory)
    response = await gw.client.get(f"/api/v1/jobs?offset={offset}", headers=gw.auth())
    assert response.json()["error"]["param"] == "offset" and "offset" in _refused(response)


async def test_validation_huge_last_event_id_is_400(db_gateway_factory: Callable[..., Any]) -> None:
    """A ``Last-Event-ID`` past any event number is a 400, not a stream that breaks."""
    gw, _ = await _started(db_gateway_factory)
    job = (await gw.client.post("/api/v1/jobs", json={"prompt": "x"}, headers=gw.auth())).json()
    response = await gw.client.get(
        f"/api/v1/jobs/{job['job_id']}/sse",
        headers={**gw.auth(), "Last-Event-ID": "99999999999999999999"},
    )
    assert "Last-Event-ID" in _refused(response)


@pytest.mark.parametrize(
    "query",
    [
        "until=9999-12-31",
        "since=0001-01-01T00:00:00%2B01:00",
        "until=9999-12-31T23:30:00-05:00",
        "since=0001-01-01&until=9999-12-31",
        "since=9999-12-31T23:30:00-05:00",
    ],
)
async def test_validation_extreme_usage_dates_answer(
    db_gateway_factory: Callable[..., Any], query: str
) -> None:
    """Dates at the ends of the calendar are clamped, so every usage report answers."""
    gw, _ = await _started(db_gateway_factory)
    await gw.run({"prompt": "x"})
    await app_services(gw.app).audit.flush()
    admin = await gw.client.get(f"/admin/usage?{query}", headers=ADMIN)  # not audited
    own = await gw.client.get(f"/api/v1/usage?{query}", headers=gw.auth())
    assert (own.status_code, admin.status_code) == (200, 200), own.text + admin.text
    expected = [] if "since=9999" in query else [1]
    assert [row["requests"] for row in own.json()["data"]] == expected
    assert [row["requests"] for row in admin.json()["data"]] == expected


async def test_validation_superscript_audit_status_is_400(
    gateway_factory: Callable[..., Any],
) -> None:
    """Three superscript digits are not an HTTP status: ``/admin/audit`` answers 400."""
    gw, _ = await _started(gateway_factory)
    response = await gw.client.get("/admin/audit?status=%C2%B2%C2%B3%C2%B9", headers=ADMIN)
    assert "status" in _refused(response)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/job_%00",
        "/api/v1/files/ff_%00",
        "/api/v1/sessions/ses_%00",
        "/api/v1/jobs?status=%00",
    ],
)
async def test_validation_nul_in_url_is_400(
    db_gateway_factory: Callable[..., Any], path: str
) -> None:
    """A NUL in a path id or query filter is a 400 before any lookup in the database."""
    gw, _ = await _started(db_gateway_factory)
    assert "NUL" in _refused(await gw.client.get(path, headers=gw.auth()))


async def test_validation_overlong_declared_file_type_is_400(
    db_gateway_factory: Callable[..., Any],
) -> None:
    """A text upload declared with a content type longer than the column is refused; a
    plain declared type is still kept."""
    gw, _ = await _started(db_gateway_factory)
    for declared in ("text/" + "x" * 300, 'text/x"><y'):
        response = await gw.client.post(
            "/api/v1/files", headers=gw.auth(), files={"file": ("notes", b"hello", declared)}
        )
        assert "unsupported type" in _refused(response)
    response = await gw.client.post(
        "/api/v1/files", headers=gw.auth(), files={"file": ("notes", b"hello", "text/x-notes")}
    )
    assert response.status_code == 201 and response.json()["media_type"] == "text/x-notes"
