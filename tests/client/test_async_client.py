"""``ccgate.client.AsyncClient`` against a real ``ccgate serve``."""

from __future__ import annotations

import pytest

from ccgate.client import APIError, AsyncClient, RateLimitError
from tests.client.conftest import Gateway
from tests.client.dropping_proxy import DroppingProxy


async def test_async_client_run_returns_the_finished_job(gateway: Gateway, api_key: str) -> None:
    """``run`` answers the completed job with the model's answer."""
    async with AsyncClient(gateway.url, api_key) as gate:
        job = await gate.run("hello async")
    assert (job["status"], job["result"]) == ("completed", "hello async")


async def test_async_client_submit_then_wait_returns_the_ended_job(
    gateway: Gateway, api_key: str
) -> None:
    """``submit`` answers at once and ``wait`` (by stream, then by polling) gets its end."""
    async with AsyncClient(gateway.url, api_key) as gate:
        first = await gate.submit("first async job")
        second = await gate.submit("second async job")
        by_stream = await gate.wait(first["job_id"], timeout=30)
        by_polling = await gate.wait(second["job_id"], timeout=30, poll_interval=0.1)
    assert (by_stream["status"], by_stream["result"]) == ("completed", "first async job")
    assert (by_polling["status"], by_polling["result"]) == ("completed", "second async job")


async def test_async_client_stream_resumes_after_a_dropped_connection(
    gateway: Gateway, api_key: str, dropping_proxy: DroppingProxy
) -> None:
    """A stream cut in the middle of an event resumes with Last-Event-ID: no event is lost
    or repeated."""
    async with AsyncClient(dropping_proxy.url, api_key) as gate:
        job = await gate.submit("an async stream that gets cut")
        events = [event async for event in gate.stream(job["job_id"])]
    assert dropping_proxy.dropped == 1
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.text for e in events) == "an async stream that gets cut"
    assert events[-1].data["result"] == "an async stream that gets cut"


async def test_async_client_cancel_stops_a_running_job(gateway: Gateway, api_key: str) -> None:
    """``cancel`` ends a hanging job as cancelled."""
    async with AsyncClient(gateway.url, api_key) as gate:
        job = await gate.submit("#fake: hang")
        assert (await gate.cancel(job["job_id"]))["status"] == "cancelled"
        assert (await gate.get(job["job_id"]))["status"] == "cancelled"


async def test_async_client_list_pages_through_every_job(gateway: Gateway, api_key: str) -> None:
    """``iter_jobs`` walks every page of the key's jobs, newest first, once each."""
    async with AsyncClient(gateway.url, api_key) as gate:
        submitted = [(await gate.submit(f"async job {n}"))["job_id"] for n in range(3)]
        walked = [job["job_id"] async for job in gate.iter_jobs(page_size=2)]
        page = await gate.list(limit=1, offset=1)
    assert walked == list(reversed(submitted))
    assert [job["job_id"] for job in page["jobs"]] == [submitted[1]]


async def test_async_client_files_and_sessions(gateway: Gateway, api_key: str) -> None:
    """Files upload, show and delete; a session shows its turn and is forgotten."""
    async with AsyncClient(gateway.url, api_key) as gate:
        info = await gate.upload_file(b"a,b\n1,2\n", filename="table.csv")
        assert (await gate.get_file(info["file_token"]))["media_type"] == "text/csv"
        await gate.delete_file(info["file_token"])
        job = await gate.run("a session")
        assert job["session_id"] is not None
        assert (await gate.get_session(job["session_id"]))["turns"] == 1
        await gate.delete_session(job["session_id"])
        with pytest.raises(APIError) as gone:
            await gate.get_file(info["file_token"])
    assert gone.value.type == "not_found"


async def test_async_client_rate_limit_error_carries_retry_after(gateway: Gateway) -> None:
    """Past a key's rpm the client raises ``RateLimitError`` with Retry-After and request id."""
    async with AsyncClient(gateway.url, gateway.key(rpm=1)) as gate:
        await gate.submit("one")
        with pytest.raises(RateLimitError) as refused:
            await gate.submit("two")
    assert refused.value.type == "rpm_exceeded"
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert refused.value.request_id is not None and refused.value.request_id.startswith("req_")
