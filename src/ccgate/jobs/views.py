"""How a job looks on the native API, its JSON answer included."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ccgate.jsonanswer import MAX_ANSWER_CHARS_ON_VIEW, parse_json_answer
from ccgate.store import JobRecord, JobStatus


def job_answer(job: JobRecord) -> tuple[Any, str | None]:
    """A JSON job's answer as ``(value, None)``, or ``(text, reason)`` when it held no JSON.

    Read from what the job stored when it ended; only a job stored before answers were read
    there is parsed here, by the same linear reader, up to a shorter length.
    """
    text = job.result or ""
    if job.result_parse_error is not None:
        return text, job.result_parse_error
    if job.result_json is not None:
        return json.loads(job.result_json), None
    return parse_json_answer(text, MAX_ANSWER_CHARS_ON_VIEW)


def iso(value: datetime | None) -> str | None:
    """A UTC timestamp as ISO 8601 with a ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def render_job(job: JobRecord) -> dict[str, Any]:
    """The native job object, as every native route returns it."""
    result: Any = job.result
    parse_error: str | None = None
    if job.result is not None and job.request.get("response_format") == "json":
        result, parse_error = job_answer(job)
    view: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "model": job.model,
        "result": result,
        "error": (
            {"type": job.error_type, "message": job.error_message} if job.error_type else None
        ),
        "usage": job.usage or {},
        "cost_usd": job.cost_usd,
        "session_id": job.session_id,
        "duration_ms": job.duration_ms,
        "attempts": job.attempts,
        "metadata": job.metadata,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
    if parse_error is not None:
        view["result_parse_error"] = parse_error
    if job.retry_at is not None and job.status is JobStatus.QUEUED:
        # Held until a plan window resets: it starts on its own then.
        view["retry_at"] = iso(job.retry_at)
    return view
