"""The native door: ``POST /api/v1/run`` runs one prompt and answers with the finished job."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ccgate.api.admission import admit, resolve_model
from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.api.files import MAX_ATTACHMENTS, FileToken, resolve_attachments
from ccgate.api.json_body import check_json_value
from ccgate.api.json_body import read_json_object as read_json_object  # the doors import it here
from ccgate.api.middleware import audit_facts
from ccgate.api.views import render_job
from ccgate.errors import ERROR_KINDS, ApiError
from ccgate.jobs import (
    IdempotencyConflict,
    JobService,
    NotAccepting,
    QueueFull,
    Submission,
    request_to_json,
)
from ccgate.jobs.windows import WindowsClosed
from ccgate.limits.estimate import estimate_run
from ccgate.runners.base import RunRequest
from ccgate.sessions import SessionBook
from ccgate.store import JobRecord, JobStatus, KeyRecord
from ccgate.tickets import Ticket

router = APIRouter(prefix="/api/v1", tags=["native"])
BodyT = TypeVar("BodyT", bound=BaseModel)
CallerKey = Annotated[KeyRecord, Depends(require_key)]

JSON_ONLY_INSTRUCTION = (
    "Answer with one JSON value only: no prose before or after it and no code fences."
)
_MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 16
MIN_TIMEOUT_SECS = 1.0


class RunBody(BaseModel):
    """The body of ``POST /api/v1/run``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="The user's prompt.")
    model: str | None = Field(
        None, description="Model name or alias; default CCGATE_DEFAULT_MODEL."
    )
    system_prompt: str | None = Field(None, description="Replaces the CLI's system prompt.")
    append_system_prompt: str | None = Field(None, description="Appended to the system prompt.")
    response_format: Literal["text", "json"] = Field(
        "text", description="`json`: the answer is parsed and `result` holds the value."
    )
    timeout_secs: float | None = Field(
        None,
        ge=MIN_TIMEOUT_SECS,
        description="Wall-clock limit in seconds, at least 1, capped by CCGATE_JOB_TIMEOUT_SECS.",
    )
    metadata: dict[str, Any] | None = Field(
        None, description="Returned as-is with the job (at most 16 KiB as JSON, 16 levels deep)."
    )
    session_id: str | None = Field(
        None,
        max_length=100,
        description="Continue the conversation of an earlier job of this key (its `session_id`).",
    )
    files: list[FileToken] | None = Field(
        None,
        max_length=MAX_ATTACHMENTS,
        description=(
            "Tokens from `POST /api/v1/files`; each file becomes a content block after the "
            "prompt's text."
        ),
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            check_json_value(value, max_depth=MAX_METADATA_DEPTH)
        except ApiError as exc:
            raise ValueError(exc.message.removeprefix("body: ")) from None
        if len(json.dumps(value)) > _MAX_METADATA_BYTES:
            raise ValueError(f"must serialise to at most {_MAX_METADATA_BYTES} bytes")
        return value


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Read a JSON body whatever its Content-Type and validate it, naming the bad field."""
    data = await read_json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        raise ApiError("invalid_request", f"{field}: {message}", param=field) from None


def build_run_request(
    request: Request,
    body: RunBody,
    model: str,
    *,
    history: list[dict[str, Any]] | None = None,
    system_prompt: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
) -> RunRequest:
    """Check the body against the size limits and turn it into a RunRequest."""
    settings = services_of(request).settings
    system_prompt = body.system_prompt if body.system_prompt is not None else system_prompt
    size = sum(
        len(s.encode("utf-8"))
        for s in (body.prompt, system_prompt or "", body.append_system_prompt or "")
    )
    # Text files are inlined into the prompt, so they count against its limit.
    size += sum(len(b["text"].encode("utf-8")) for b in attachments or () if b["type"] == "text")
    if size > settings.max_prompt_bytes:
        raise ApiError(
            "request_too_large",
            f"prompt is {size} bytes; the limit is "
            f"{settings.max_prompt_bytes} (CCGATE_MAX_PROMPT_BYTES)",
        )
    append = body.append_system_prompt
    if body.response_format == "json":
        append = f"{append}\n\n{JSON_ONLY_INSTRUCTION}" if append else JSON_ONLY_INSTRUCTION
    timeout = min(body.timeout_secs or settings.job_timeout_secs, settings.job_timeout_secs)
    content: list[dict[str, Any]] = [{"type": "text", "text": body.prompt}, *(attachments or [])]
    return RunRequest(
        content=content,
        model=model,
        history=list(history or []),
        system_prompt=system_prompt,
        append_system_prompt=append,
        timeout_secs=timeout,
        idle_timeout_secs=settings.idle_timeout_secs,
    )


@dataclass
class NativeRun:
    """A validated native request: what to run, its session and its admission ticket."""

    run_request: RunRequest
    session_id: str
    ticket: Ticket


async def prepare_native_run(request: Request, key: KeyRecord, body: RunBody) -> NativeRun:
    """Validate everything (model, session, attachments, sizes), then admit under limits."""
    model = resolve_model(request, key, body.model)
    sessions: SessionBook = services_of(request).sessions
    history: list[dict[str, Any]] = []
    system_prompt: str | None = None
    session_id = body.session_id
    if session_id is not None:
        session = await sessions.find(session_id, key.id)
        if session is None:
            raise ApiError(
                "not_found",
                f"no session {session_id!r} (unknown, expired or another key's)",
                param="session_id",
            )
        history, system_prompt = session.messages, session.system_prompt
    else:
        session_id = sessions.new_id()
    attachments = await attachments_for(request, key, body)
    run_request = build_run_request(
        request, body, model, history=history, system_prompt=system_prompt, attachments=attachments
    )
    ticket = await admit(request, key, "native", estimate_run(run_request))
    return NativeRun(run_request, session_id, ticket)


async def attachments_for(request: Request, key: KeyRecord, body: RunBody) -> list[dict[str, Any]]:
    """Content blocks for the files the body attaches, after checking the key owns them."""
    return await resolve_attachments(request, key, body.files or [])


async def submit_job(request: Request, submission: Submission) -> JobRecord:
    """Queue a job for a caller that waits for it, mapping a full or stopping queue to 503,
    a reused key to 409 and a used-up plan window to 429 with Retry-After at its reset."""
    sync = replace(submission, waits_for_window=False)
    try:
        job, _ = await submit_job_once(request, sync)
    except WindowsClosed as exc:
        raise ApiError(
            "window_share_exceeded" if exc.share else "upstream_rate_limited",
            str(exc),
            retry_after=exc.retry_after,
        ) from None
    return job


async def submit_job_once(request: Request, submission: Submission) -> tuple[JobRecord, bool]:
    """``submit_job``, also saying whether the job is new (False: the key's earlier job under
    the same Idempotency-Key, whose admission ticket is held already)."""
    jobs: JobService = services_of(request).jobs
    if services_of(request).requires_cli:
        cli = await services_of(request).cli_status.refresh()
        if cli.problem:
            raise ApiError("cli_unavailable", cli.problem)
    try:
        job, new = await jobs.submit(submission)
    except QueueFull as exc:
        raise ApiError(
            "queue_full", "the job queue is full; retry later", retry_after=exc.retry_after
        ) from None
    except NotAccepting:
        raise ApiError(
            "shutting_down", "the server is shutting down; retry on another node", retry_after=5
        ) from None
    except IdempotencyConflict:
        raise ApiError(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        ) from None
    audit_facts(request).update(job_id=job.id, model=job.model)
    return job, new


async def wait_unless_disconnected(request: Request, job_id: str) -> JobRecord | None:
    """Wait for the job; if the client goes away first, cancel it and return None."""
    jobs: JobService = services_of(request).jobs
    waiter = asyncio.create_task(jobs.wait(job_id))
    watcher = asyncio.create_task(_client_gone(request))
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if waiter.done():
        return waiter.result()
    waiter.cancel()
    await jobs.cancel(job_id)
    return None


async def wait_for_caller(request: Request, job_id: str) -> JobRecord | None:
    """Wait for a synchronous caller's job; None when the caller went away (job cancelled).

    A node that stops before the run could finish cancels it (nobody would collect a later
    answer) and answers 503.
    """
    try:
        return await wait_unless_disconnected(request, job_id)
    except NotAccepting:
        await services_of(request).jobs.cancel(job_id)
        raise ApiError(
            "shutting_down", "the server is shutting down; retry on another node", retry_after=5
        ) from None


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def record_outcome(request: Request, job: JobRecord, prompt: str) -> None:
    """Add the finished job's facts to this request's audit row."""
    usage = job.usage or {}
    facts = audit_facts(request)
    facts.update(
        job_status=job.status.value,
        model=job.model,
        prompt_bytes=len(prompt.encode("utf-8")),
        response_bytes=len(job.result.encode("utf-8")) if job.result else 0,
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        cost_usd=job.cost_usd,
        error_type=job.error_type,
    )
    if services_of(request).settings.audit_prompts:
        facts["prompt_text"] = prompt


def job_error(job: JobRecord) -> ApiError:
    """The ApiError a failed or cancelled job answers a synchronous caller with."""
    error_type = job.error_type if job.error_type in ERROR_KINDS else None
    error_type = error_type or "cli_error"
    if job.status is JobStatus.CANCELLED:
        error_type = "cancelled"
    return ApiError(
        error_type,
        job.error_message or "the job failed",
        retry_after=job.retry_after,
        extra={"job_id": job.id},
    )


@router.post(
    "/run",
    summary="Run one prompt and wait for the answer",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RunBody.model_json_schema()}},
        }
    },
)
async def run(request: Request, key: CallerKey) -> Response:
    """Run a prompt synchronously; a client that disconnects cancels the run."""
    body = await parse_body(request, RunBody)
    prepared = await prepare_native_run(request, key, body)
    finished: JobRecord | None = None
    try:
        job = await submit_job(
            request,
            Submission(
                key_id=key.id,
                door="native",
                request={
                    **request_to_json(prepared.run_request),
                    "response_format": body.response_format,
                },
                metadata=body.metadata,
                session_id=prepared.session_id,
            ),
        )
        finished = await wait_for_caller(request, job.id)
    finally:
        await prepared.ticket.finish(
            finished.usage if finished else None, finished.cost_usd if finished else None
        )
    if finished is None:
        audit_facts(request)["job_status"] = "cancelled"
        return Response(status_code=499)
    record_outcome(request, finished, body.prompt)
    if finished.status is not JobStatus.COMPLETED:
        raise job_error(finished)
    return JSONResponse(render_job(finished))
