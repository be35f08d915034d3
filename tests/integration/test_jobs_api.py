"""Async jobs on the native door: submit, poll, list, ownership, idempotency, cancel, delete."""

from __future__ import annotations

import asyncio
from typing import Any

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner


async def _submit(gw: Gateway, body: dict[str, Any], key: str | None = None, **headers: str) -> Any:
    return await gw.client.post("/api/v1/jobs", json=body, headers={**gw.auth(key), **headers})


async def _poll_until_done(gw: Gateway, job_id: str, key: str | None = None) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            job = (await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth(key))).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return job  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def test_jobs_submit_returns_202_then_polls_to_completed(gateway: Gateway) -> None:
    """A submitted job answers 202 at once and polling shows it completed with its result."""
    response = await _submit(gateway, {"prompt": "hello", "metadata": {"n": 1}})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "processing")
    assert response.headers["Location"] == f"/api/v1/jobs/{job['job_id']}"
    done = await _poll_until_done(gateway, job["job_id"])
    assert (done["status"], done["result"], done["metadata"]) == (
        "completed",
        "reply: hello",
        {"n": 1},
    )


async def test_jobs_other_keys_job_is_404(gateway: Gateway) -> None:
    """Key B cannot see, cancel, stream or delete key A's job: 404 each time."""
    job_id = (await _submit(gateway, {"prompt": "mine"})).json()["job_id"]
    other = (await app_services(gateway.app).keyring.create("other")).secret
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/sse"), ("DELETE", "")]:
        response = await gateway.client.request(
            method, f"/api/v1/jobs/{job_id}{path}", headers=gateway.auth(other)
        )
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["type"] == "not_found"


async def test_jobs_list_is_newest_first_and_paginated(gateway: Gateway) -> None:
    """Listing pages through the caller's jobs newest first, with the total."""
    ids = [(await _submit(gateway, {"prompt": str(n)})).json()["job_id"] for n in range(5)]
    page = (
        await gateway.client.get("/api/v1/jobs?limit=2&offset=1", headers=gateway.auth())
    ).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert [j["job_id"] for j in page["jobs"]] == [ids[3], ids[2]]


async def test_jobs_list_filters_by_status_and_checks_params(gateway: Gateway) -> None:
    """status filters the list; limit above 100 and unknown statuses are 400."""
    job_id = (await _submit(gateway, {"prompt": "x"})).json()["job_id"]
    await _poll_until_done(gateway, job_id)
    done = (
        await gateway.client.get("/api/v1/jobs?status=completed", headers=gateway.auth())
    ).json()
    assert [j["job_id"] for j in done["jobs"]] == [job_id]
    for query in ("limit=101", "limit=0", "offset=-1", "status=done"):
        response = await gateway.client.get(f"/api/v1/jobs?{query}", headers=gateway.auth())
        assert response.status_code == 400, query


async def test_jobs_idempotency_key_returns_the_original(gateway: Gateway) -> None:
    """Same Idempotency-Key and body: same job; same key, other body: 409."""
    first = await _submit(gateway, {"prompt": "once"}, **{"Idempotency-Key": "k-1"})
    again = await _submit(gateway, {"prompt": "once"}, **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    clash = await _submit(gateway, {"prompt": "other"}, **{"Idempotency-Key": "k-1"})
    assert clash.status_code == 409
    assert clash.json()["error"]["type"] == "idempotency_conflict"


async def test_jobs_idempotent_replays_never_hold_a_concurrency_slot(gateway_factory: Any) -> None:
    """With concurrency 1, retries of a submission get its job back (202, even while it
    runs) and hold no slot: once the job ends, a new job is admitted."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner)
    key = (await app_services(gw.app).keyring.create("single", KeyPolicy(concurrency=1))).secret
    retry = {"Idempotency-Key": "retry-1"}
    job_id = (await _submit(gw, {"prompt": "once"}, key, **retry)).json()["job_id"]
    replays = [await _submit(gw, {"prompt": "once"}, key, **retry) for _ in range(2)]
    assert [(r.status_code, r.json()["job_id"]) for r in replays] == [(202, job_id)] * 2
    runner.released.set()
    await _poll_until_done(gw, job_id, key)
    late = await _submit(gw, {"prompt": "once"}, key, **retry)
    assert (late.status_code, late.json()["status"]) == (202, "completed")
    async with asyncio.timeout(5):
        while (fresh := await _submit(gw, {"prompt": "new"}, key)).status_code == 429:
            await asyncio.sleep(0.02)
    assert fresh.status_code == 202


async def test_jobs_idempotency_keys_are_per_api_key(gateway: Gateway) -> None:
    """Another API key using the same Idempotency-Key gets its own job."""
    other = (await app_services(gateway.app).keyring.create("other")).secret
    first = await _submit(gateway, {"prompt": "x"}, **{"Idempotency-Key": "shared"})
    second = await _submit(gateway, {"prompt": "x"}, other, **{"Idempotency-Key": "shared"})
    assert first.json()["job_id"] != second.json()["job_id"]


async def test_jobs_cancel_queued_job_and_conflict_after(gateway_factory: Any) -> None:
    """Cancelling a queued job answers cancelled; cancelling again is 409."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner, CCGATE_CONCURRENCY=1)
    await _submit(gw, {"prompt": "busy"})
    queued = (await _submit(gw, {"prompt": "waiting"})).json()
    assert queued["status"] == "queued"
    cancel = await gw.client.post(f"/api/v1/jobs/{queued['job_id']}/cancel", headers=gw.auth())
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    again = await gw.client.post(f"/api/v1/jobs/{queued['job_id']}/cancel", headers=gw.auth())
    assert again.status_code == 409
    runner.released.set()


async def test_jobs_cancel_running_job_stops_it(gateway_factory: Any) -> None:
    """Cancelling a processing job stops its run and it stays cancelled."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner)
    job_id = (await _submit(gw, {"prompt": "long"})).json()["job_id"]
    while runner.running == 0:
        await asyncio.sleep(0.01)
    cancel = await gw.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=gw.auth())
    assert cancel.json()["status"] == "cancelled"
    while runner.cancelled == 0:
        await asyncio.sleep(0.01)
    assert (await _poll_until_done(gw, job_id))["status"] == "cancelled"


async def test_jobs_delete_removes_the_job(gateway_factory: Any) -> None:
    """DELETE answers 204 (cancelling a running job first) and the job is gone."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner)
    job_id = (await _submit(gw, {"prompt": "x"})).json()["job_id"]
    deleted = await gw.client.delete(f"/api/v1/jobs/{job_id}", headers=gw.auth())
    assert deleted.status_code == 204
    gone = await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth())
    assert gone.status_code == 404


async def test_jobs_bad_callback_url_is_400(gateway: Gateway) -> None:
    """A callback URL that can never be allowed is refused at submit."""
    for url in ("ftp://example.com/x", "http://127.0.0.1/hook", "not a url"):
        response = await _submit(gateway, {"prompt": "x", "callback_url": url})
        assert response.status_code == 400, url
        assert response.json()["error"]["param"] == "callback_url"


async def test_jobs_fairness_between_keys(gateway_factory: Any) -> None:
    """With one key's flood queued, another key's single job starts within the next slots."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner, CCGATE_CONCURRENCY=1)
    other = (await app_services(gw.app).keyring.create("other")).secret
    for n in range(20):
        await _submit(gw, {"prompt": f"flood {n}"})
    lone = (await _submit(gw, {"prompt": "lone"}, other)).json()["job_id"]
    for _ in range(3):
        runner.released.set()
        await asyncio.sleep(0.05)
        runner.released.clear()
    started = [r.prompt_text for r in runner.started]
    assert "lone" in started[:3], started
    runner.released.set()
    assert (await _poll_until_done(gw, lone, other))["status"] == "completed"
