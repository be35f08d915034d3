"""Revoking a key, a device or an enrollment ends its work: queued and running jobs are
cancelled (subscribers see it), no webhook goes out for them, pending deliveries are dropped,
and a job whose key was revoked or expired elsewhere is never claimed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.ids import new_id
from ccgate.jobs import JobService, QueueLimits, Submission, request_to_json
from ccgate.jobs.revocation import KEY_REVOKED, KEY_UNUSABLE, end_work_of
from ccgate.policy import KeyPolicy
from ccgate.runners.base import RunRequest
from ccgate.store import JobStatus, Store
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner
from tests.support.webhook_receiver import WebhookReceiver

ADMIN = "admin-token-for-revocation-tests-0123"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
ENROLLMENT_SECRET = "revocation-enrollment-secret-0123456789"


async def _key(store: Store, name: str, **policy: Any) -> str:
    key_id = new_id("key")
    await store.keys.insert(
        key_id=key_id,
        name=name,
        prefix=name[:12],
        secret_hash=new_id("h"),
        now=utcnow(),
        policy=KeyPolicy(**policy),
    )
    return key_id


async def _queued(store: Store, key_id: str | None, callback_url: str | None = None) -> str:
    job_id = new_id("job")
    await store.jobs.insert(
        job_id=job_id,
        key_id=key_id,
        door="native",
        model="sonnet",
        request=request_to_json(RunRequest.from_text("hi", "sonnet")),
        metadata=None,
        now=utcnow(),
        callback_url=callback_url,
    )
    return job_id


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_revocation_claim_skips_jobs_of_revoked_and_expired_keys(store: Store) -> None:
    """Claiming passes over jobs whose key is revoked or expired (on SQLite and PostgreSQL)
    and lists them as work to sweep away; jobs of active keys and unowned jobs are claimed."""
    revoked = await _key(store, "revoked")
    expired = await _key(store, "expired", expires_at=utcnow() - timedelta(minutes=1))
    active = await _key(store, "active", expires_at=utcnow() + timedelta(days=1))
    unusable = [await _queued(store, revoked), await _queued(store, expired)]
    usable = [await _queued(store, active), await _queued(store, None)]
    assert await store.keys.revoke("revoked", utcnow())
    now = utcnow()
    claimed = [await store.jobs.claim_next(owner="n1", now=now, lease_until=now) for _ in range(3)]
    assert [j.id if j else None for j in claimed] == [*usable, None]
    assert await store.jobs.unusable_work(utcnow()) == unusable


async def test_revocation_by_another_process_is_honoured_at_claim_time(store: Store) -> None:
    """A key revoked straight in the store (another node, ``ccgate keys revoke``) never has
    its queued job run: the queue passes over it and cancels it, on both databases."""
    runner = FakeRunner(block=True)
    service = JobService(
        store, runner, QueueLimits(concurrency=1, lease_secs=0.3, shutdown_grace_secs=0.2)
    )
    await service.start()
    try:
        busy, _ = await service.submit(
            Submission(
                await _key(store, "busy"),
                "native",
                request_to_json(RunRequest.from_text("first", "sonnet")),
            )
        )
        waiting, _ = await service.submit(
            Submission(
                await _key(store, "gone"),
                "native",
                request_to_json(RunRequest.from_text("second", "sonnet")),
            )
        )
        assert waiting.status is JobStatus.QUEUED
        await store.keys.revoke("gone", utcnow())
        runner.released.set()
        ended = await asyncio.wait_for(service.wait(waiting.id), 5)
        assert (ended.status, ended.error_message) == (JobStatus.CANCELLED, KEY_UNUSABLE)
        assert (await asyncio.wait_for(service.wait(busy.id), 5)).status is JobStatus.COMPLETED
        assert [r.prompt_text for r in runner.started] == ["first"]
    finally:
        await service.stop()


async def _stream_of(service: JobService, job_id: str) -> list[str]:
    return [e.type for e in [e async for e in service.hub.subscribe(job_id, 0, 0.1)] if e]


async def test_revocation_in_the_store_stops_a_run_on_the_serving_node(store: Store) -> None:
    """Work ended by the store alone (the CLI's revoke) stops the run on the node that runs
    it at its next lease renewal, and that node's watchers get the closing result then."""
    runner = FakeRunner(block=True)
    service = JobService(
        store, runner, QueueLimits(concurrency=1, lease_secs=0.3, shutdown_grace_secs=0.2)
    )
    await service.start()
    try:
        key_id = await _key(store, "cli-revoked")
        job, _ = await service.submit(
            Submission(key_id, "native", request_to_json(RunRequest.from_text("long", "sonnet")))
        )
        await _until(lambda: runner.running == 1)
        watcher = asyncio.create_task(_stream_of(service, job.id))
        assert await end_work_of(store, [key_id]) == 1
        assert (await asyncio.wait_for(watcher, 5))[-1] == "result"
        assert runner.cancelled == 1
        final = await store.jobs.get(job.id)
        assert final is not None and final.status is JobStatus.CANCELLED
        assert final.error_message == KEY_REVOKED
    finally:
        await service.stop()


async def test_revocation_drops_pending_webhooks_and_never_sends_them(store: Store) -> None:
    """Ending a key's work drops its pending deliveries as failed with the reason, leaves
    other keys' alone, and a revoked key's delivery is never handed out to be sent."""
    gone, kept, late = [await _key(store, n) for n in ("gone", "kept", "late")]
    now = utcnow()
    deliveries: dict[str, str] = {}
    for key_id in (gone, kept, late):
        await _queued(store, key_id, callback_url="https://example.com/hook")
        claimed = await store.jobs.claim_next(owner="n1", now=now, lease_until=now)
        assert claimed is not None
        await store.jobs.finish(claimed.id, JobStatus.COMPLETED, now=now, result="done")
        deliveries[key_id] = claimed.id
    await end_work_of(store, [gone])
    await store.keys.revoke("late", utcnow())
    dropped = await store.webhooks.for_job(deliveries[gone])
    assert dropped is not None and dropped.status == "failed"
    assert dropped.last_error is not None and "revoked" in dropped.last_error
    due = await store.webhooks.claim_due("n1", utcnow(), utcnow(), 10)
    assert [d.job_id for d in due] == [deliveries[kept]]


async def _sse_events(gw: Gateway, job_id: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = await gw.client.get(f"/api/v1/jobs/{job_id}/sse", headers=auth)
    return [
        {"event": fields["event"], "data": json.loads(fields["data"])}
        for block in response.text.split("\n\n")
        if (
            fields := dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if not line.startswith(":") and ": " in line
            )
        )
    ]


async def test_revocation_by_admin_cancels_queued_and_running_jobs_without_webhooks(
    gateway_factory: Callable[..., Any],
) -> None:
    """DELETE /admin/keys/{name} cancels the key's running and queued jobs at once: the run
    stops, a stream watching the queued job ends with its cancelled result, and the queued
    job's callback is never called."""
    runner = FakeRunner(block=True)
    receiver = await WebhookReceiver((), 200).start()
    try:
        gw = await gateway_factory(
            runner,
            CCGATE_CONCURRENCY=1,
            CCGATE_ADMIN_TOKEN=ADMIN,
            CCGATE_OUTBOUND_ALLOW="127.0.0.1",
        )
        auth = gw.auth((await app_services(gw.app).keyring.create("svc")).secret)
        running = (await gw.client.post("/api/v1/jobs", json={"prompt": "a"}, headers=auth)).json()[
            "job_id"
        ]
        queued = (
            await gw.client.post(
                "/api/v1/jobs", headers=auth, json={"prompt": "b", "callback_url": receiver.url}
            )
        ).json()["job_id"]
        watcher = asyncio.create_task(_sse_events(gw, queued, auth))
        hub = app_services(gw.app).jobs.hub
        await _until(lambda: queued in hub._watch_counts)
        assert (await gw.client.delete("/admin/keys/svc", headers=ADMIN_AUTH)).status_code == 200
        events = await asyncio.wait_for(watcher, 5)
        assert events[-1]["event"] == "result"
        assert events[-1]["data"]["status"] == "cancelled"
        assert "revoked" in events[-1]["data"]["error"]["message"]
        store = app_services(gw.app).store
        for job_id in (running, queued):
            job = await store.jobs.get(job_id)
            assert job is not None
            assert (job.status, job.error_message) == (JobStatus.CANCELLED, KEY_REVOKED)
        await _until(lambda: runner.cancelled == 1)
        assert await store.webhooks.for_job(queued) is None
        assert len(runner.started) == 1 and receiver.received == []
    finally:
        await receiver.close()


async def test_revocation_of_a_device_cancels_its_jobs(gateway_factory: Callable[..., Any]) -> None:
    """Revoking an enrolled device through the admin API cancels the job it has queued."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(
        runner,
        CCGATE_CONCURRENCY=1,
        CCGATE_ADMIN_TOKEN=ADMIN,
        CCGATE_ENROLLMENT_SECRET=ENROLLMENT_SECRET,
    )
    await gw.client.post("/api/v1/jobs", json={"prompt": "other"}, headers=gw.auth())
    code = (
        await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH, json={"name": "desk"})
    ).json()["enrollment_code"]
    token = (
        await gw.client.post("/v1/bootstrap", json={"enrollment_code": code, "device_id": "laptop"})
    ).json()["token"]
    job_id = (
        await gw.client.post("/api/v1/jobs", json={"prompt": "mine"}, headers=gw.auth(token))
    ).json()["job_id"]
    [device] = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"]
    revoked = await gw.client.delete(f"/admin/devices/{device['id']}", headers=ADMIN_AUTH)
    assert revoked.status_code == 204
    job = await app_services(gw.app).store.jobs.get(job_id)
    runner.released.set()
    assert job is not None
    assert (job.status, job.error_message) == (JobStatus.CANCELLED, KEY_REVOKED)
