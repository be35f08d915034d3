"""The native run body, shared by the doors that take it (run, jobs, compat): its fields,
its checks, and turning it into an admitted turn."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccgate.api.admission import resolve_model
from ccgate.api.attachments import MAX_ATTACHMENTS, FileToken, resolve_attachments
from ccgate.api.deps import services_of
from ccgate.api.lifecycle import Turn
from ccgate.api.request_body import check_json_value, check_prompt_size
from ccgate.errors import ApiError
from ccgate.jobs import request_to_json
from ccgate.limits.estimate import estimate_run
from ccgate.runners.base import RunRequest
from ccgate.store import KeyRecord
from ccgate.structured import SchemaInvalid, asking_for_schema, check_schema_async
from ccgate.turns import ContentBlock

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
    json_schema: dict[str, Any] | None = Field(
        None,
        description=(
            "A JSON Schema the answer must match (implies `response_format: json`); checked "
            "before anything runs, the answer validated with one repair run."
        ),
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


def build_run_request(
    request: Request,
    body: RunBody,
    model: str,
    *,
    history: list[dict[str, Any]] | None = None,
    system_prompt: str | None = None,
    attachments: list[ContentBlock] | None = None,
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
    check_prompt_size(size, settings.max_prompt_bytes, "prompt is {size} bytes")
    append = body.append_system_prompt
    if body.response_format == "json" or body.json_schema is not None:
        append = f"{append}\n\n{JSON_ONLY_INSTRUCTION}" if append else JSON_ONLY_INSTRUCTION
    timeout = min(body.timeout_secs or settings.job_timeout_secs, settings.job_timeout_secs)
    content: list[ContentBlock] = [{"type": "text", "text": body.prompt}, *(attachments or [])]
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
    """A validated native request: its admitted turn (what to run, its ticket) and session."""

    turn: Turn
    session_id: str
    json_schema: dict[str, Any] | None = None

    @property
    def run_request(self) -> RunRequest:
        """What the turn runs."""
        assert self.turn.run_request is not None
        return self.turn.run_request

    def stored_request(self, response_format: str) -> dict[str, Any]:
        """The request the job stores: with a schema, ``request_to_json`` adds it (and the
        model's schema line) and the format is ``json`` whatever ``response_format`` says."""
        return {
            "response_format": response_format,
            **request_to_json(self.run_request, json_schema=self.json_schema),
        }


async def checked_schema(body: RunBody) -> dict[str, Any] | None:
    """The body's ``json_schema`` once checked (400 ``invalid_request`` naming why), or None.
    A schema with an explicit ``response_format: "text"`` is a 400 too."""
    if body.json_schema is None:
        return None
    if "response_format" in body.model_fields_set and body.response_format == "text":
        raise ApiError(
            "invalid_request",
            "json_schema: needs response_format json (or none): a text answer is not checked",
            param="json_schema",
        )
    try:
        return await check_schema_async(body.json_schema)
    except SchemaInvalid as exc:
        raise ApiError("invalid_request", str(exc), param="json_schema") from None


async def prepare_native_run(
    request: Request, key: KeyRecord, body: RunBody, door: str = "native"
) -> NativeRun:
    """Validate everything (schema, model, session, attachments, sizes), then admit under
    limits."""
    json_schema = await checked_schema(body)
    model = resolve_model(request, key, body.model)
    sessions = services_of(request).sessions
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
    attachments = await resolve_attachments(request, key, body.files or [])
    run_request = build_run_request(
        request, body, model, history=history, system_prompt=system_prompt, attachments=attachments
    )
    # The schema line the model is told counts towards the estimate.
    asked = asking_for_schema(run_request, json_schema) if json_schema else run_request
    turn = await Turn.admit(request, key, door, estimate_run(asked), run_request=run_request)
    return NativeRun(turn, session_id, json_schema)
