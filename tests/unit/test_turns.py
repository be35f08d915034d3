"""Turn vocabulary: the usage value type, typed audit facts and checked error types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import pytest
from starlette.requests import Request

from ccgate.api.lifecycle import Turn, api_error_of, job_error
from ccgate.api.middleware import AuditFacts, audit_facts
from ccgate.errors import ERROR_KINDS, ErrorType, error_type_of
from ccgate.runners.base import RunError
from ccgate.store import JobRecord, JobStatus, KeyRecord
from ccgate.tickets import Ticket
from ccgate.turns import Usage


def test_usage_reads_a_mapping_and_adds() -> None:
    """Missing, negative or non-integer counts read as 0; sums add field by field."""
    first = Usage.from_mapping({"input_tokens": 5, "output_tokens": -1, "x": 3})
    second = Usage.from_mapping({"output_tokens": 7, "cache_read_input_tokens": 2})
    total = first + second
    assert total == Usage(input_tokens=5, output_tokens=7, cache_read_input_tokens=2)
    assert (total.billed_tokens, total.prompt_tokens) == (12, 7)
    assert total.as_dict()["cache_creation_input_tokens"] == 0
    assert Usage.from_mapping(None) == Usage()


def test_error_type_literal_and_catalogue_hold_the_same_names() -> None:
    """Every catalogue entry is in the ErrorType Literal and the Literal names no other."""
    assert set(get_args(ErrorType)) == set(ERROR_KINDS)


def test_error_type_of_checks_a_dynamic_name() -> None:
    """A runner's documented type passes; an unknown one becomes the default."""
    assert error_type_of("timeout", "upstream_error") == "timeout"
    assert error_type_of("made_up", "upstream_error") == "upstream_error"
    assert error_type_of(None, "cli_error") == "cli_error"
    assert api_error_of(RunError("weird", "x")).error_type == "upstream_error"


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/messages", "headers": []})


def test_audit_facts_are_typed_and_refuse_a_misspelt_field() -> None:
    """The audit facts are one object per request; a misspelt fact fails, not vanishes."""
    request = _request()
    facts = audit_facts(request)
    facts.add_usage(Usage(input_tokens=3, output_tokens=4), 0.5)
    assert audit_facts(request) is facts
    assert (facts.input_tokens, facts.output_tokens, facts.cost_usd) == (3, 4, 0.5)
    with pytest.raises(AttributeError):
        facts.inptu_tokens = 1  # type: ignore[attr-defined]
    assert isinstance(facts, AuditFacts)


class _CountingTicket(Ticket):
    """A ticket that counts how often its work was settled."""

    settled = 0

    async def finish(self, usage: Usage | None = None, cost_usd: float | None = None) -> None:
        """Count the first finish only, as the real ticket frees its slot once."""
        if not self.finished:
            type(self).settled += 1
        await super().finish(usage, cost_usd)


async def test_turn_settles_once_when_it_fails_before_its_answer() -> None:
    """A turn that fails inside ``async with`` settles its ticket, and only once."""
    _CountingTicket.settled = 0
    key = KeyRecord("key_1", "app", "ccg_x", datetime.now(UTC), None, None)
    turn = Turn(_request(), key, "anthropic", _CountingTicket(key))
    with pytest.raises(RuntimeError):
        async with turn:
            raise RuntimeError("upstream broke")
    await turn.settle(Usage(input_tokens=1), 0.1)
    assert turn.ticket.finished and _CountingTicket.settled == 1


def test_job_error_names_a_documented_type() -> None:
    """A job row's unknown error type answers as cli_error (the one checked conversion)."""
    now = datetime.now(UTC)
    job = JobRecord(
        id="job_1",
        key_id="key_1",
        door="native",
        status=JobStatus.FAILED,
        model="sonnet",
        request={},
        metadata=None,
        result=None,
        error_type="not_a_type",
        error_message="it broke",
        usage=None,
        cost_usd=None,
        session_id=None,
        attempts=1,
        duration_ms=5,
        created_at=now,
        started_at=now,
        finished_at=now,
        lease_owner=None,
        lease_expires_at=None,
    )
    assert job_error(job).error_type == "cli_error"
