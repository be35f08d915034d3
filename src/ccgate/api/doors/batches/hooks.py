"""What the batch engine calls back into the door for: the Messages format of each request.

- ``validate`` (at create, maybe in a worker thread: pure): ``params`` checked as a Messages
  request, as ``/v1/messages`` checks one, its model against the server's and the key's rules;
  ``stream`` and ``tools`` are refused (each request is one plain turn).
- ``to_job``: the params as the job's ``RunRequest``, on whichever backend runs jobs.
- ``admit`` (when fed): the key still active, its model rules, then the same limiter as every
  door. A rate limit (or a quota held by running requests) waits and is fed again; a spent
  token quota or budget ends the request ``errored`` with that error. The ticket is held by
  ``JobTickets`` until the job ends, so the key's usage counts every request.
- ``to_message`` / ``to_error``: a job's outcome in the SDK's result shape.

Audit: one row per batch request that was admitted (when its job ends) or refused for good,
besides the row of each HTTP call (``docs/batches.md``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import structlog

from ccgate import metrics
from ccgate.api.content import conversation_bytes
from ccgate.api.errors import error_body
from ccgate.api.lifecycle import result_of
from ccgate.api.messages_body import MessagesCall, message_object, parse_messages_call
from ccgate.clock import utcnow
from ccgate.doors import ANTHROPIC
from ccgate.errors import ERROR_KINDS, ApiError, error_type_of
from ccgate.ids import new_id
from ccgate.jobs import request_to_json
from ccgate.jobs.batches import BATCH_DOOR, Admitted, BatchHooks, Refused, Validate
from ccgate.limits import LimitExceeded, estimate_run
from ccgate.limits.rules import QUOTA_RULES
from ccgate.models import ModelForbidden, ModelNotAllowed
from ccgate.runners.base import RunRequest
from ccgate.services import Services
from ccgate.store import AuditEntry, JobRecord, JobStatus, KeyRecord
from ccgate.tickets import Ticket
from ccgate.turns import Usage

log = structlog.get_logger("ccgate.batches")

# The audit rows of batch requests name this route (no HTTP request of their own).
AUDIT_ROUTE = "/v1/messages/batches/{message_batch_id}/requests"
# A quota refusal whose Retry-After is longer than this is spent until the day or month
# renews (the request ends errored); a shorter one is held by running requests (wait).
_HELD_RETRY_SECS = 2.0
_QUOTA_TYPES = frozenset(rule.error_type for rule in QUOTA_RULES)


def params_validator(services: Services, key: KeyRecord) -> Validate:
    """The create-time check of one request's ``params`` for ``key``: ValueError (the
    engine names the request) when it is not a Messages request ccgate can run;
    ModelNotAllowed (400) or ModelForbidden (403) for its model."""
    limit = services.settings.max_prompt_bytes

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        if params.get("stream") is True:
            raise ValueError("stream: streaming is not supported for batch requests")
        if params.get("tools"):
            raise ValueError(
                "tools: tool use is not supported in a batch on ccgate (each request runs "
                "as one plain turn)"
            )
        call = _parse(params)
        services.models.resolve(call.model, key.policy.models)
        size = conversation_bytes(call.system, call.history, call.content)
        if size > limit:
            raise ValueError(
                f"the conversation is {size} bytes of text; the limit is {limit} "
                "(CCGATE_MAX_PROMPT_BYTES)"
            )
        return params

    return validate


def _parse(params: dict[str, Any]) -> MessagesCall:
    try:
        return parse_messages_call(params, tools_allowed=False)
    except ApiError as exc:
        raise ValueError(exc.message) from None


def batch_hooks(services: Services) -> BatchHooks:
    """The hooks ``open_services`` hands the batch engine; also audits each request."""
    door = _BatchDoor(services)
    services.jobs.on_finished.append(door.job_finished)
    return BatchHooks(
        validate=_parse_only,
        to_job=door.to_job,
        admit=door.admit,
        to_message=to_message,
        to_error=to_error,
    )


def _parse_only(params: dict[str, Any]) -> dict[str, Any]:
    _parse(params)
    return params


def to_message(job: JobRecord) -> dict[str, Any]:
    """A completed batch job as the Messages API's message object."""
    return message_object("msg_" + job.id.removeprefix("job_"), result_of(job), job.model)


def to_error(error_type: str, message: str) -> dict[str, Any]:
    """A request's error as the API's ``{"type", "message"}`` (its Anthropic error type)."""
    error = ApiError(error_type_of(error_type, "upstream_error"), message)
    body = error_body("anthropic", "", error)["error"]
    assert isinstance(body, dict)
    return body


async def jsonl(results: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Results as JSON lines, a page of lines per chunk."""
    lines: list[str] = []
    async for result in results:
        lines.append(json.dumps(result, ensure_ascii=False, separators=(",", ":")))
        if len(lines) >= 200:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


class _BatchDoor:
    """The hooks that need the services: jobs, admission and the audit rows."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Key names of batch jobs admitted here, for their audit rows.
        self._names: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def run_request(self, params: dict[str, Any], model: str) -> RunRequest:
        """The params (checked at create) as one turn's RunRequest."""
        return _parse(params).run_request(model, self.services.settings)

    def to_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """The job's request (the model by the server's rules; the key's were checked by
        ``admit`` just before)."""
        model = self.services.models.resolve(params.get("model"))
        return request_to_json(self.run_request(params, model))

    async def admit(self, key_id: str, params: dict[str, Any]) -> Admitted | Refused:
        """Admit one request under its key's limits, as every door's admission does."""
        services = self.services
        key = await services.store.keys.by_id(key_id)
        if key is None or not key.active or key.expired(utcnow()):
            return Refused("authentication_error", "the batch's API key is revoked or expired")
        try:
            model = services.models.resolve(params.get("model"), key.policy.models)
        except ModelNotAllowed as exc:
            return self._refused(key, None, "invalid_request", str(exc))
        except ModelForbidden as exc:
            return self._refused(key, None, "model_not_allowed", str(exc))
        estimate = estimate_run(self.run_request(params, model))
        if not services.backend.capabilities.honours_max_tokens:
            estimate = replace(estimate, max_output_tokens=None)
        try:
            admission = await services.limiter.admit(key.id, key.policy, estimate)
        except LimitExceeded as exc:
            metrics.limit_refused(exc.error_type)
            wait = exc.retry_after or 1.0
            if exc.error_type in _QUOTA_TYPES and wait > _HELD_RETRY_SECS:
                return self._refused(key, model, exc.error_type, exc.message)
            return Refused(exc.error_type, exc.message, retry_after=wait)
        except Exception as exc:  # e.g. Redis unreachable: wait rather than run unchecked
            log.warning("limits_unavailable", error=type(exc).__name__)
            return Refused("limits_unavailable", "the rate-limit store cannot be reached", 5.0)
        ticket = Ticket(key, admission, model=model)

        async def attach(job_id: str | None) -> None:
            if job_id is None:
                await ticket.finish()
                return
            self._names[job_id] = key.name
            services.job_tickets.hold(job_id, ticket)
            # The job may have ended before it was attached: settle the ticket now.
            job = await services.store.jobs.get(job_id)
            if job is not None and job.status.terminal:
                services.job_tickets.job_finished(job)
                self._names.pop(job_id, None)

        return Admitted(attach)

    def _refused(self, key: KeyRecord, model: str | None, error_type: str, message: str) -> Refused:
        """A refusal for good: the request ends errored, with an audit row of its own."""
        kind = error_type_of(error_type, "invalid_request")
        self._audit(
            AuditEntry(
                at=utcnow(),
                request_id=new_id("batchreq"),
                door=ANTHROPIC.name,
                route=AUDIT_ROUTE,
                http_status=ERROR_KINDS[kind].status,
                duration_ms=0,
                key_name=key.name,
                model=model,
                job_status=JobStatus.FAILED.value,
                error_type=kind,
            )
        )
        return Refused(error_type, message)

    def job_finished(self, job: JobRecord) -> None:
        """JobService.on_finished hook: one audit row per batch request that ran."""
        if job.door != BATCH_DOOR:
            return
        name = self._names.pop(job.id, None)
        if name is not None:
            self._audit(_job_entry(job, name))
            return
        # Ended after a restart (or admitted on another node): look the key's name up.
        task = asyncio.create_task(self._audit_later(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit_later(self, job: JobRecord) -> None:
        key = await self.services.store.keys.by_id(job.key_id) if job.key_id else None
        self._audit(_job_entry(job, key.name if key else None))

    def _audit(self, entry: AuditEntry) -> None:
        self.services.audit.record(entry)


def _job_entry(job: JobRecord, key_name: str | None) -> AuditEntry:
    usage = Usage.from_mapping(job.usage) if job.usage else None
    if job.status is JobStatus.COMPLETED:
        status = 200
    elif job.status is JobStatus.CANCELLED:
        status = ERROR_KINDS["cancelled"].status
    else:
        status = ERROR_KINDS[error_type_of(job.error_type, "upstream_error")].status
    return AuditEntry(
        at=utcnow(),
        request_id=job.id,
        door=ANTHROPIC.name,
        route=AUDIT_ROUTE,
        http_status=status,
        duration_ms=job.duration_ms or 0,
        key_name=key_name,
        job_id=job.id,
        model=job.model,
        job_status=job.status.value,
        response_bytes=len((job.result or "").encode("utf-8")),
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cost_usd=job.cost_usd,
        error_type=job.error_type,
    )
