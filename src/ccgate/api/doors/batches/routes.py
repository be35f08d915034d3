"""The Message Batches endpoints: ``/v1/messages/batches`` of the Anthropic API.

``client.messages.batches.create/retrieve/list/cancel/delete/results`` of the official SDKs
work unchanged. The engine (``jobs/batches.py``) stores, feeds, records and expires batches;
these routes parse and render (the engine's hooks are in ``hooks``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ccgate.api.auth import require_key
from ccgate.api.content import bad
from ccgate.api.deps import services_of
from ccgate.api.doors.batches.hooks import jsonl, params_validator
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import check_unicode, read_json_object
from ccgate.errors import ApiError
from ccgate.jobs.batches import BatchInvalid, BatchNotEnded, BatchNotFound
from ccgate.models import ModelForbidden
from ccgate.store import KeyRecord
from ccgate.store.batches import BatchRecord, BatchStatus

router = APIRouter(prefix="/v1/messages/batches", tags=["anthropic"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Batches per page (1 to 1000).")]


def _when(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, as the API writes times."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def results_url(request: Request, batch_id: str) -> str:
    """Where the SDK fetches an ended batch's results: this server as the client reached it
    (its scheme and ``Host`` header), so the same base URL and key work."""
    return f"{str(request.base_url).rstrip('/')}/v1/messages/batches/{batch_id}/results"


def batch_object(request: Request, batch: BatchRecord) -> dict[str, Any]:
    """A batch as the SDK's ``MessageBatch``."""
    counts = batch.counts
    ended = batch.status is BatchStatus.ENDED
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.status.value,
        "request_counts": {
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        },
        "ended_at": _when(batch.ended_at),
        "created_at": _when(batch.created_at),
        "expires_at": _when(batch.expires_at),
        "cancel_initiated_at": _when(batch.cancel_initiated_at),
        "archived_at": None,
        "results_url": results_url(request, batch.id) if ended else None,
    }


def _not_found(batch_id: str) -> ApiError:
    return ApiError("not_found", f"no message batch {batch_id!r} for this key")


def _not_ended(exc: BatchNotEnded) -> ApiError:
    return ApiError("invalid_request", str(exc))


@router.post("", summary="Create a Message Batch")
async def create_batch(request: Request, key: CallerKey) -> JSONResponse:
    """Check every request's ``params`` as a Messages request and store the batch (before
    the answer); its requests then run as jobs under the key's limits."""
    body = await read_json_object(request)
    check_unicode(body, await request.body())
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise bad("requests: must be a list of {custom_id, params} objects", "requests")
    services = services_of(request)
    validate = params_validator(services, key)
    try:
        batch = await services.batches.create(key.id, requests, validate=validate)
    except BatchInvalid as exc:
        if isinstance(exc.__cause__, ModelForbidden):
            raise ApiError("model_not_allowed", str(exc), param="requests") from None
        raise ApiError("invalid_request", str(exc), param="requests") from None
    audit_facts(request).job_status = batch.status.value
    return JSONResponse(batch_object(request, batch))


@router.get("", summary="List Message Batches")
async def list_batches(
    request: Request,
    key: CallerKey,
    before_id: str | None = None,
    after_id: str | None = None,
    limit: Limit = 20,
) -> JSONResponse:
    """The key's batches, newest first; ``after_id`` pages towards older ones, ``before_id``
    towards newer ones."""
    page = await services_of(request).batches.page(
        key.id, before_id=before_id, after_id=after_id, limit=limit
    )
    return JSONResponse(
        {
            "data": [batch_object(request, b) for b in page.data],
            "has_more": page.has_more,
            "first_id": page.first_id,
            "last_id": page.last_id,
        }
    )


@router.get("/{message_batch_id}", summary="Retrieve a Message Batch")
async def retrieve_batch(request: Request, key: CallerKey, message_batch_id: str) -> JSONResponse:
    """The batch with its request counts (404 for another key's batch)."""
    try:
        batch = await services_of(request).batches.get(message_batch_id, key.id)
    except BatchNotFound:
        raise _not_found(message_batch_id) from None
    return JSONResponse(batch_object(request, batch))


@router.post("/{message_batch_id}/cancel", summary="Cancel a Message Batch")
async def cancel_batch(request: Request, key: CallerKey, message_batch_id: str) -> JSONResponse:
    """Cancel an in-progress batch: ``canceling`` until its running requests stop."""
    try:
        batch = await services_of(request).batches.cancel(message_batch_id, key.id)
    except BatchNotFound:
        raise _not_found(message_batch_id) from None
    return JSONResponse(batch_object(request, batch))


@router.delete("/{message_batch_id}", summary="Delete a Message Batch")
async def delete_batch(request: Request, key: CallerKey, message_batch_id: str) -> JSONResponse:
    """Delete an ended batch and its results (400 while it still runs)."""
    try:
        await services_of(request).batches.delete(message_batch_id, key.id)
    except BatchNotFound:
        raise _not_found(message_batch_id) from None
    except BatchNotEnded as exc:
        raise _not_ended(exc) from None
    return JSONResponse({"id": message_batch_id, "type": "message_batch_deleted"})


@router.get("/{message_batch_id}/results", summary="The results of a Message Batch (JSONL)")
async def batch_results(request: Request, key: CallerKey, message_batch_id: str) -> Response:
    """One JSON line per request, streamed page by page, once the batch has ended."""
    try:
        results = await services_of(request).batches.results(message_batch_id, key.id)
    except BatchNotFound:
        raise _not_found(message_batch_id) from None
    except BatchNotEnded as exc:
        raise _not_ended(exc) from None
    return StreamingResponse(jsonl(results), media_type="application/binary")
