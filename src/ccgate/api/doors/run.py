"""The native door: ``POST /api/v1/run`` runs one prompt and answers with the finished job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.auth import require_key
from ccgate.api.lifecycle import client_closed, job_error
from ccgate.api.request_body import parse_body
from ccgate.api.run_body import RunBody, prepare_native_run
from ccgate.jobs import Submission
from ccgate.jobs.views import render_job
from ccgate.store import JobStatus, KeyRecord

router = APIRouter(prefix="/api/v1", tags=["native"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


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
    finished = await prepared.turn.run_job(
        Submission(
            key_id=key.id,
            door="native",
            request=prepared.stored_request(body.response_format),
            metadata=body.metadata,
            session_id=prepared.session_id,
        )
    )
    if finished is None:
        return client_closed()
    prepared.turn.record_job(finished, body.prompt)
    if finished.status is not JobStatus.COMPLETED:
        raise job_error(finished)
    return JSONResponse(render_job(finished))


async def run_lean(request: Request) -> Response:
    """``run`` on the lean path (``api/lean.py``): the key is read here instead of by
    FastAPI's dependency, in the same order (key, then body)."""
    return await run(request, await require_key(request))
