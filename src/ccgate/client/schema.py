"""The shapes of what the gateway answers, as typed dictionaries, and one SSE event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "TERMINAL_STATUSES",
    "Event",
    "FileInfo",
    "Job",
    "JobError",
    "JobPage",
    "JobStatus",
    "RunOptions",
    "Session",
    "Usage",
    "WebhookState",
]

JobStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Usage(TypedDict):
    """Tokens a run used, as the CLI or the API reported them."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class JobError(TypedDict):
    """Why a job failed: an error type from the API's catalogue and a message."""

    type: str
    message: str


class WebhookState(TypedDict):
    """The delivery state of a job's webhook."""

    event_id: str
    url: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    delivered_at: str | None


class Job(TypedDict):
    """The job object of ``/api/v1/run``, ``/api/v1/jobs`` and the SSE ``result`` event."""

    job_id: str
    status: JobStatus
    model: str | None
    result: Any
    error: JobError | None
    usage: Usage | None
    cost_usd: float | None
    session_id: str | None
    duration_ms: int | None
    attempts: int
    metadata: dict[str, Any] | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    result_parse_error: NotRequired[str | None]
    retry_at: NotRequired[str | None]
    webhook: NotRequired[WebhookState | None]


class JobPage(TypedDict):
    """One page of ``GET /api/v1/jobs``, newest first."""

    jobs: list[Job]
    total: int
    limit: int
    offset: int


class FileInfo(TypedDict):
    """An uploaded file's token and facts (never its bytes)."""

    file_token: str
    filename: str | None
    media_type: str
    size: int
    ttl_secs: int
    created_at: str
    expires_at: str


class Session(TypedDict):
    """A conversation kept by the gateway, with its turns."""

    session_id: str
    model: str | None
    system_prompt: str | None
    turns: int
    messages: list[dict[str, Any]]
    created_at: str
    updated_at: str
    expires_at: str


class RunOptions(TypedDict, total=False):
    """Optional fields of a run or job, as in docs/api.md."""

    model: str
    system_prompt: str
    append_system_prompt: str
    response_format: Literal["text", "json"]
    timeout_secs: float
    metadata: dict[str, Any]
    session_id: str
    files: list[str]


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``status``, ``chunk`` or ``result``."""

    id: int | None
    event: str
    data: Any

    @property
    def text(self) -> str:
        """The text of a ``chunk`` event ("" for other events)."""
        if self.event == "chunk" and isinstance(self.data, dict):
            value = self.data.get("text")
            return value if isinstance(value, str) else ""
        return ""
