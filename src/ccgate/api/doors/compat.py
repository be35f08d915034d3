"""Paths older gateways used, as thin aliases of the native door (docs/compat.md).

Every POST runs through the same validation, limits, queue, audit and cancel-on-disconnect as
``POST /api/v1/run``; only the request and answer shapes differ. Errors of the run paths come
as ``{"ok": false, "error": {...}}`` with the native error object and status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ccgate.api import health
from ccgate.api.attachments import MAX_ATTACHMENTS, UPLOAD_OPENAPI, FileToken, store_upload
from ccgate.api.auth import require_key
from ccgate.api.errors import error_body, error_headers, request_id_of
from ccgate.api.lifecycle import client_closed, job_error
from ccgate.api.request_body import parse_body
from ccgate.api.run_body import RunBody, prepare_native_run
from ccgate.errors import ApiError
from ccgate.jobs import Submission, request_to_json
from ccgate.jobs.views import job_answer
from ccgate.store import JobRecord, JobStatus, KeyRecord

router = APIRouter(tags=["compat"])

# Native field names back to the names these paths use, for validation messages.
_COMPAT_NAMES = {"system_prompt": "system", "response_format": "output_format"}


class CompatRunBody(BaseModel):
    """The body of ``POST /run``; unknown fields are ignored, as older clients send extras."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    model: str | None = None
    system: str | None = None
    files: list[FileToken] | None = Field(None, max_length=MAX_ATTACHMENTS)
    timeout_secs: float | None = None


class CompleteBody(BaseModel):
    """The body of ``POST /v1/complete``; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    system: str | None = None
    model: str | None = None
    output_format: Literal["text", "json"] = "text"


class _ClientGone(Exception):
    """The caller disconnected; its job was cancelled and nobody reads an answer."""


def _native_body(fields: dict[str, Any]) -> RunBody:
    try:
        return RunBody.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        field = _COMPAT_NAMES.get(field, field)
        raise ApiError("invalid_request", f"{field}: {first['msg']}", param=field) from None


async def _run_to_end(
    request: Request, key: KeyRecord, body: RunBody, *, read_as_json: bool = False
) -> JobRecord:
    """Run ``body`` like ``POST /api/v1/run`` does and return the completed job; with
    ``read_as_json`` its answer is read as JSON when it ends, whatever the format asked."""
    prepared = await prepare_native_run(request, key, body, door="compat")
    finished = await prepared.turn.run_job(
        Submission(
            key_id=key.id,
            door="compat",
            request={
                **request_to_json(prepared.run_request),
                "response_format": body.response_format,
                "read_as_json": read_as_json,
            },
            session_id=prepared.session_id,
        )
    )
    if finished is None:
        raise _ClientGone
    prepared.turn.record_job(finished, body.prompt)
    if finished.status is not JobStatus.COMPLETED:
        raise job_error(finished)
    return finished


async def _answer(
    request: Request, produce: Callable[[KeyRecord], Awaitable[dict[str, Any]]]
) -> Response:
    """``{"ok": true, ...}`` from ``produce``, or ``{"ok": false, "error": ...}``."""
    try:
        key = await require_key(request)
        return JSONResponse({"ok": True, **await produce(key)})
    except _ClientGone:
        return client_closed()
    except ApiError as exc:
        body = error_body("native", request_id_of(request), exc)
        return JSONResponse(
            {"ok": False, **body}, status_code=exc.status, headers=error_headers(exc)
        )


@router.post(
    "/run",
    summary="Compat: run one prompt (older gateways' shape)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CompatRunBody.model_json_schema()}},
        }
    },
)
async def compat_run(request: Request) -> Response:
    """``{prompt, model?, system?, files?, timeout_secs?}`` -> ``{ok, result, duration_ms,
    stop_reason}``; ``result`` is the parsed value when the answer is JSON."""

    async def produce(key: KeyRecord) -> dict[str, Any]:
        compat = await parse_body(request, CompatRunBody)
        body = _native_body(
            {
                "prompt": compat.prompt,
                "model": compat.model,
                "system_prompt": compat.system,
                "files": compat.files,
                "timeout_secs": compat.timeout_secs,
            }
        )
        job = await _run_to_end(request, key, body, read_as_json=True)
        value, _ = job_answer(job)  # the text itself when it holds no JSON
        return {"result": value, "duration_ms": job.duration_ms, "stop_reason": job.stop_reason}

    return await _answer(request, produce)


@router.post(
    "/v1/complete",
    summary="Compat: complete a prompt as text or JSON",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CompleteBody.model_json_schema()}},
        }
    },
)
async def compat_complete(request: Request) -> Response:
    """``output_format: text`` -> ``{ok, model, duration_ms, text}``; ``json`` -> ``{ok,
    result, usage}``."""

    async def produce(key: KeyRecord) -> dict[str, Any]:
        compat = await parse_body(request, CompleteBody)
        body = _native_body(
            {
                "prompt": compat.prompt,
                "model": compat.model,
                "system_prompt": compat.system,
                "response_format": compat.output_format,
            }
        )
        job = await _run_to_end(request, key, body)
        text = job.result or ""
        if compat.output_format == "text":
            return {"model": job.model, "duration_ms": job.duration_ms, "text": text}
        value, problem = job_answer(job)
        answer: dict[str, Any] = {"result": value, "usage": job.usage or {}}
        if problem is not None:
            answer["result_parse_error"] = problem
        return answer

    return await _answer(request, produce)


@router.post(
    "/files",
    summary="Compat: same as POST /api/v1/files, answered with 200",
    openapi_extra=UPLOAD_OPENAPI,
)
async def upload_file(request: Request) -> JSONResponse:
    """Older gateways answered uploads with 200 (not 201); the body is the native one."""
    key = await require_key(request)
    return JSONResponse(await store_upload(request, key))


for _path in ("/healthz", "/api/v1/health"):
    router.add_api_route(
        _path, health.health, methods=["GET"], summary="Compat: same as GET /health"
    )
