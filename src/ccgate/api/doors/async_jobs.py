"""Async jobs on the native door: submit, poll, list, cancel, delete, and stream with SSE."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from ccgate import metrics
from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import parse_body
from ccgate.api.run_body import RunBody, prepare_native_run
from ccgate.api.streaming import SSE_HEADERS, ClosingStreamingResponse
from ccgate.errors import ApiError
from ccgate.jobs import IdempotencyConflict, JobService, Submission
from ccgate.jobs.views import render_job
from ccgate.store import JobRecord, JobStatus, KeyRecord
from ccgate.store.webhooks import Redelivery

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]

_MAX_PAGE = 100
MAX_OFFSET = 1_000_000_000
_MAX_IDEMPOTENCY_KEY = 200
_MAX_EVENT_ID = 2**31 - 1  # event numbers are 32-bit integers in the store


class JobBody(RunBody):
    """The body of ``POST /api/v1/jobs``: a run, plus where to send the webhook."""

    callback_url: str | None = Field(
        None, description="POSTed the job object, signed, when the job ends."
    )


def _request_hash(body: JobBody) -> str:
    # Without a schema the hash is what it was before ``json_schema`` existed, so a retry
    # across an upgrade still finds its job.
    dumped = body.model_dump(
        mode="json", exclude={"json_schema"} if body.json_schema is None else None
    )
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def job_view(request: Request, job: JobRecord) -> dict[str, Any]:
    """The job object with its webhook delivery state."""
    view = render_job(job)
    if job.callback_url is not None:
        view["webhook"] = await services_of(request).webhook_state(job.id)
    return view


async def owned_job(request: Request, key: KeyRecord, job_id: str) -> JobRecord:
    """The caller's job, or 404: another key's job is indistinguishable from none."""
    job = await services_of(request).store.jobs.get(job_id, key_id=key.id)
    if job is None:
        raise ApiError("not_found", f"no job {job_id!r}")
    facts = audit_facts(request)
    facts.job_id, facts.model = job.id, job.model
    return job


@router.post(
    "",
    status_code=202,
    summary="Submit a job and return at once",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobBody.model_json_schema()}},
        }
    },
)
async def submit(
    request: Request, key: CallerKey, idempotency_key: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """Queue a job; the same Idempotency-Key and body return the original job."""
    body = await parse_body(request, JobBody)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= _MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            "invalid_request",
            f"Idempotency-Key must be 1-{_MAX_IDEMPOTENCY_KEY} characters",
            param="Idempotency-Key",
        )
    if body.callback_url is not None:
        services_of(request).check_callback(body.callback_url)
    # Only an Idempotency-Key is ever compared with it: no hash of every body without one.
    request_hash = _request_hash(body) if idempotency_key is not None else None
    # A retry gets its job back before admission: it runs nothing, so it spends nothing and
    # never holds a concurrency slot (a slot is the original submission's until its job ends).
    replayed = await _replay(request, key, idempotency_key, request_hash)
    if replayed is not None:
        return _accepted(await job_view(request, replayed), replayed)
    prepared = await prepare_native_run(request, key, body)
    job = await prepared.turn.queue_async(
        Submission(
            key_id=key.id,
            door="native",
            request=prepared.stored_request(body.response_format),
            metadata=body.metadata,
            callback_url=body.callback_url,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            session_id=prepared.session_id,
        )
    )
    return _accepted(await job_view(request, job), job)


async def submit_lean(request: Request) -> Response:
    """``submit`` on the lean path (``api/lean.py``): the key and the Idempotency-Key header
    are read here instead of by FastAPI, in the same order (key, header, then body)."""
    key = await require_key(request)
    return await submit(request, key, request.headers.get("idempotency-key"))


async def _replay(
    request: Request, key: KeyRecord, idempotency_key: str | None, request_hash: str | None
) -> JobRecord | None:
    """The key's earlier job under ``idempotency_key``, or None; 409 for another body."""
    if idempotency_key is None:
        return None
    jobs: JobService = services_of(request).jobs
    try:
        earlier = await jobs.replay_of(key.id, idempotency_key, request_hash)
    except IdempotencyConflict:
        raise ApiError(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        ) from None
    if earlier is not None:
        facts = audit_facts(request)
        facts.job_id, facts.model = earlier.id, earlier.model
    return earlier


def _accepted(view: dict[str, Any], job: JobRecord) -> JSONResponse:
    return JSONResponse(view, status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


@router.get("", summary="List the caller's jobs, newest first")
async def list_jobs(
    request: Request,
    key: CallerKey,
    limit: Annotated[int, Query()] = 20,
    offset: Annotated[int, Query()] = 0,
    status: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """One page of jobs: ``{jobs, total, limit, offset}``."""
    if not 1 <= limit <= _MAX_PAGE:
        raise ApiError("invalid_request", f"limit must be between 1 and {_MAX_PAGE}", param="limit")
    if not 0 <= offset <= MAX_OFFSET:
        raise ApiError(
            "invalid_request", f"offset must be between 0 and {MAX_OFFSET}", param="offset"
        )
    wanted: JobStatus | None = None
    if status is not None:
        try:
            wanted = JobStatus(status)
        except ValueError:
            raise ApiError(
                "invalid_request",
                f"status must be one of {', '.join(s.value for s in JobStatus)}",
                param="status",
            ) from None
    jobs, total = await services_of(request).store.jobs.page(
        key.id, status=wanted, limit=limit, offset=offset
    )
    return {"jobs": [render_job(j) for j in jobs], "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", summary="Poll one job")
async def get_job(request: Request, key: CallerKey, job_id: str) -> dict[str, Any]:
    """The job object, with its webhook delivery state when it has a callback."""
    return await job_view(request, await owned_job(request, key, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued or running job")
async def cancel_job(request: Request, key: CallerKey, job_id: str) -> dict[str, Any]:
    """A queued job never starts; a running one is stopped. 409 once it has ended."""
    job = await owned_job(request, key, job_id)
    cancelled = await services_of(request).jobs.cancel(job.id)
    if cancelled is None:
        current = await owned_job(request, key, job_id)
        raise ApiError(
            "conflict",
            f"job {job_id} already ended as {current.status.value}",
            extra={"job_id": job_id, "status": current.status.value},
        )
    return await job_view(request, cancelled)


@router.post(
    "/{job_id}/webhook/redeliver", status_code=202, summary="Send a finished job's webhook again"
)
async def redeliver_webhook(request: Request, key: CallerKey, job_id: str) -> dict[str, Any]:
    """Queue the final webhook again with the same event id (``webhook-id``); 409 when the
    job has no callback, has not ended, a delivery is pending or the limit is spent."""
    job = await owned_job(request, key, job_id)
    if job.callback_url is None:
        raise ApiError("conflict", f"job {job_id} has no callback_url")
    if not job.status.terminal:
        raise ApiError(
            "conflict",
            f"job {job_id} has not ended yet ({job.status.value})",
            extra={"job_id": job_id, "status": job.status.value},
        )
    outcome: Redelivery = await services_of(request).webhooks.redeliver(job.id)
    if outcome is not Redelivery.QUEUED:
        raise ApiError("conflict", _REDELIVERY_REFUSED[outcome], extra={"job_id": job_id})
    view = await job_view(request, job)
    return view["webhook"]  # type: ignore[no-any-return]


_REDELIVERY_REFUSED = {
    Redelivery.NO_WEBHOOK: "the job has no webhook delivery",
    Redelivery.PENDING: "a delivery of this webhook is already pending",
    Redelivery.EXHAUSTED: "this webhook was redelivered as often as allowed "
    "(CCGATE_WEBHOOK_MAX_REDELIVERIES)",
}


@router.delete("/{job_id}", status_code=204, summary="Delete a job (cancelling it first)")
async def delete_job(request: Request, key: CallerKey, job_id: str) -> Response:
    """Remove the job and its events; a running job is cancelled first."""
    job = await owned_job(request, key, job_id)
    jobs: JobService = services_of(request).jobs
    if not job.status.terminal:
        await jobs.cancel(job.id)
    await services_of(request).store.jobs.delete(job.id)
    return Response(status_code=204)


@router.get("/{job_id}/sse", summary="Stream a job's events (Server-Sent Events)")
async def stream_job(
    request: Request,
    key: CallerKey,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
) -> ClosingStreamingResponse:
    """``status``, ``chunk`` and ``result`` events, each with an ``id:``; resumable."""
    job = await owned_job(request, key, job_id)
    after = 0
    if last_event_id is not None:
        try:
            after = max(0, int(last_event_id))
        except ValueError:
            after = -1
        if not 0 <= after <= _MAX_EVENT_ID:
            raise ApiError(
                "invalid_request",
                "Last-Event-ID must be an event id from this stream",
                param="Last-Event-ID",
            )
    return ClosingStreamingResponse(_sse(request, job, after), headers=SSE_HEADERS)


async def _sse(request: Request, job: JobRecord, after: int) -> AsyncIterator[str]:
    hub = services_of(request).jobs.hub
    heartbeat = services_of(request).settings.sse_heartbeat_secs
    yield ": ccgate job stream\n\n"
    if job.status.terminal:
        # A finished job's events are all stored: past the last one, none will ever come.
        stored = await services_of(request).store.events.last_seq([job.id])
        if after >= stored.get(job.id, 0):
            return
    metrics.sse_opened()
    try:
        events = aiter(hub.subscribe(job.id, after, heartbeat))
        while True:
            # The stream waits on the job (run by another request) between events.
            with metrics.waiting():
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
            if event is None:
                yield ": heartbeat\n\n"
                continue
            data = event.data
            if event.type == "result":
                final = await services_of(request).store.jobs.get(job.id)
                data = await job_view(request, final) if final is not None else event.data
            yield (
                f"id: {event.seq}\nevent: {event.type}\n"
                f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
            )
    finally:
        metrics.sse_closed()
