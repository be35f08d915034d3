"""How a job looks on the native API, and the ``response_format: json`` parsing."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from ccgate.store import JobRecord

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json_answer(text: str) -> tuple[Any, str | None]:
    """Parse a model's JSON answer: code fences stripped, prose around one value tolerated.

    Returns ``(value, None)`` on success and ``(text, reason)`` when no JSON could be read.
    """
    candidate = text.strip()
    fenced = _FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        return json.loads(candidate), None
    except ValueError as exc:
        first_error = f"not valid JSON: {exc}"
    starts = [i for i in (candidate.find("{"), candidate.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        end = max(candidate.rfind("}"), candidate.rfind("]"))
        if end > start:
            try:
                return json.loads(candidate[start:end + 1]), None
            except ValueError:
                pass
    return text, first_error


def iso(value: datetime | None) -> str | None:
    """A UTC timestamp as ISO 8601 with a ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def render_job(job: JobRecord) -> dict[str, Any]:
    """The native job object, as every native route returns it."""
    result: Any = job.result
    parse_error: str | None = None
    if job.result is not None and job.request.get("response_format") == "json":
        result, parse_error = parse_json_answer(job.result)
    view: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "model": job.model,
        "result": result,
        "error": ({"type": job.error_type, "message": job.error_message}
                  if job.error_type else None),
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
    return view
