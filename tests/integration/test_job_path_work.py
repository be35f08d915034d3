"""Work each job does around its store rows, kept off the store where it can be: the plan
gate reads the admitted policy, and an outcome already in its audit row is not filled again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ccgate.audit import AuditLog
from ccgate.clock import utcnow
from ccgate.jobs.windows import PlanGate, WindowsClosed
from ccgate.policy import KeyPolicy
from ccgate.runners.plan_windows import PlanWindow
from ccgate.store import AuditEntry, JobRecord, JobStatus, Store


async def test_plan_gate_checks_the_admitted_policy_without_reading_the_key(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the key's policy as admitted, the share check uses it and reads no key."""
    now = utcnow()
    resets = now + timedelta(hours=5)
    gate = PlanGate(store, utcnow)
    await store.plan_windows.record([PlanWindow("five_hour", "allowed", 0.1, resets, now)])
    await gate.observe(
        [PlanWindow("five_hour", "allowed", 0.6, resets, now + timedelta(seconds=1))], "key_1"
    )

    async def no_read(key_id: str) -> None:
        raise AssertionError("the key was read again")

    monkeypatch.setattr(store.keys, "by_id", no_read)
    with pytest.raises(WindowsClosed) as caught:
        await gate.check("key_1", KeyPolicy(window_share=0.25))
    assert caught.value.share and caught.value.until == resets
    await gate.check("key_1", KeyPolicy())  # no share: nothing to check


async def _finished_job(store: Store) -> JobRecord:
    now = utcnow()
    await store.jobs.insert(
        job_id="job_1", key_id=None, door="native", model="sonnet", request={}, metadata=None,
        now=now, claim_for="node-1", lease_until=now + timedelta(seconds=30),
    )  # fmt: skip
    ended = await store.jobs.finish("job_1", JobStatus.COMPLETED, now=now, result="ok")
    assert ended is not None
    return ended[0]


def _row(job: JobRecord, job_status: str | None) -> AuditEntry:
    return AuditEntry(
        at=utcnow(), request_id="req_1", door="native", route="/api/v1/run", http_status=200,
        duration_ms=3, job_id=job.id, job_status=job_status,
    )  # fmt: skip


async def test_audit_outcome_in_the_same_batch_row_is_not_filled(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting caller's row written with its job's outcome needs no fill update."""
    job = await _finished_job(store)
    fills: list[Any] = []

    async def fill(outcomes: list[dict[str, Any]]) -> list[str]:
        fills.append(outcomes)
        return []

    monkeypatch.setattr(store.audit, "fill_job_outcomes", fill)
    audit = AuditLog(store)
    audit.record(_row(job, "completed"))
    audit.record_job_outcome(job, waited=True)
    await audit.flush()
    assert fills == []


async def test_audit_outcome_of_a_waited_job_is_tried_once(store: Store) -> None:
    """A waited job's outcome whose row is not found is not looked for again (its row,
    written with the request, already holds it)."""
    job = await _finished_job(store)
    audit = AuditLog(store)
    audit.record_job_outcome(job, waited=True)
    await audit.flush()
    assert audit._outcomes == []
    audit.record_job_outcome(job)
    await audit.flush()
    assert [o["job_id"] for o in audit._outcomes] == ["job_1"]  # an async job's: retried


async def test_audit_outcome_fills_a_row_written_without_one(store: Store) -> None:
    """A row that lacks its job's outcome (a 202) gets it from the fill as before."""
    job = await _finished_job(store)
    audit = AuditLog(store)
    audit.record(_row(job, None))
    audit.record_job_outcome(job)
    await audit.flush()
    rows = await store.audit.recent(10)
    assert [r["job_status"] for r in rows] == ["completed"]
