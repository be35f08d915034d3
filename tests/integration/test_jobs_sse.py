"""The SSE stream of a job: ids, replay, resume, and the live hub behind it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ccgate.api.deps import app_services
from ccgate.events import JobEventHub
from ccgate.store import Store
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner


def _parse(stream: str) -> list[dict[str, Any]]:
    events = []
    for block in stream.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if not line.startswith(":") and ": " in line
        )
        if fields:
            events.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return events


async def _finished_job(gw: Gateway, prompt: str = "stream me please") -> str:
    job_id: str = (
        await gw.client.post("/api/v1/jobs", json={"prompt": prompt}, headers=gw.auth())
    ).json()["job_id"]
    await app_services(gw.app).jobs.wait(job_id)
    return job_id


async def test_sse_replays_status_chunks_and_result(gateway: Gateway) -> None:
    """A finished job's stream replays status, chunks that add up to the result, then result."""
    job_id = await _finished_job(gateway)
    response = await gateway.client.get(f"/api/v1/jobs/{job_id}/sse", headers=gateway.auth())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = _parse(response.text)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "processing"
    assert events[-1]["event"] == "result"
    assert events[-1]["data"]["status"] == "completed"
    text = "".join(e["data"]["text"] for e in events if e["event"] == "chunk")
    assert text == events[-1]["data"]["result"] == "reply: stream me please"


async def test_sse_last_event_id_resumes_after_it(gateway: Gateway) -> None:
    """Reconnecting with Last-Event-ID gets exactly the events after that id."""
    job_id = await _finished_job(gateway)
    url = f"/api/v1/jobs/{job_id}/sse"
    everything = _parse((await gateway.client.get(url, headers=gateway.auth())).text)
    resumed = _parse(
        (await gateway.client.get(url, headers={**gateway.auth(), "Last-Event-ID": "3"})).text
    )
    assert resumed == everything[3:]


async def test_sse_bad_last_event_id_is_400(gateway: Gateway) -> None:
    """A Last-Event-ID that is not a number is refused, not ignored."""
    job_id = await _finished_job(gateway)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job_id}/sse", headers={**gateway.auth(), "Last-Event-ID": "abc"}
    )
    assert response.status_code == 400


async def test_sse_finished_job_resumed_past_its_last_event_ends_at_once(gateway: Gateway) -> None:
    """A finished job's stream resumed after its last event id ends at once, empty, instead
    of sending heartbeats forever."""
    job_id = await _finished_job(gateway)
    url = f"/api/v1/jobs/{job_id}/sse"
    last = _parse((await gateway.client.get(url, headers=gateway.auth())).text)[-1]["id"]
    for after in (last, last + 1, 99):
        async with asyncio.timeout(5):
            response = await gateway.client.get(
                url, headers={**gateway.auth(), "Last-Event-ID": str(after)}
            )
        assert response.status_code == 200
        assert _parse(response.text) == []


async def test_sse_cancelled_queued_job_ends_with_result(gateway_factory: Any) -> None:
    """A job cancelled before it started still ends its stream with a result event."""
    runner = FakeRunner(block=True)
    gw = await gateway_factory(runner, CCGATE_CONCURRENCY=1)
    await gw.client.post("/api/v1/jobs", json={"prompt": "busy"}, headers=gw.auth())
    job_id = (
        await gw.client.post("/api/v1/jobs", json={"prompt": "later"}, headers=gw.auth())
    ).json()["job_id"]
    await gw.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=gw.auth())
    events = _parse((await gw.client.get(f"/api/v1/jobs/{job_id}/sse", headers=gw.auth())).text)
    assert [e["event"] for e in events] == ["result"]
    assert events[0]["data"]["status"] == "cancelled"
    runner.released.set()


async def _collect(hub: JobEventHub, job_id: str, after: int = 0) -> list[tuple[int, str]]:
    return [(e.seq, e.type) async for e in hub.subscribe(job_id, after, 5) if e is not None]


async def test_hub_many_live_subscribers_get_the_same_events(sqlite_store: Store) -> None:
    """Several subscribers of a live job, early and late, all receive the same sequence."""
    from ccgate.clock import utcnow
    from ccgate.store import JobStatus

    hub = JobEventHub(sqlite_store)
    await hub.start()
    await sqlite_store.jobs.insert(
        job_id="job_1",
        key_id=None,
        door="native",
        model="m",
        request={},
        metadata=None,
        now=utcnow(),
        claim_for="n",
        lease_until=utcnow(),
    )
    hub.begin("job_1", next_seq=1)
    early = [asyncio.create_task(_collect(hub, "job_1")) for _ in range(3)]
    hub.publish("job_1", "status", {"status": "processing"})
    await asyncio.sleep(0.05)
    hub.publish("job_1", "chunk", {"text": "a"})
    pending, closing_seq = hub.seal("job_1")
    ended = await sqlite_store.jobs.finish(
        "job_1", JobStatus.COMPLETED, now=utcnow(), pending=pending, closing_seq=closing_seq
    )
    assert ended is not None
    hub.end("job_1", ended[1])
    late = await _collect(hub, "job_1")
    expected = [(1, "status"), (2, "chunk"), (3, "result")]
    assert [await t for t in early] == [expected] * 3
    assert late == expected
    await hub.stop()


async def test_hub_heartbeat_when_nothing_happens(sqlite_store: Store) -> None:
    """A subscriber of a silent job receives heartbeats (None) at the interval."""
    hub = JobEventHub(sqlite_store)
    stream = hub.subscribe("job_silent", 0, heartbeat_secs=0.05)
    async with asyncio.timeout(2):
        assert await anext(stream) is None
        assert await anext(stream) is None
    await stream.aclose()  # type: ignore[attr-defined]
