"""``AsyncClient``: the asyncio client of the native API, on ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Unpack, cast

import httpx

from ccgate.client import _shared
from ccgate.client._config import resolve
from ccgate.client.errors import ConnectionFailed, WaitTimeout, error_from_response
from ccgate.client.schema import (
    TERMINAL_STATUSES,
    Event,
    FileInfo,
    Job,
    JobPage,
    RunOptions,
    Session,
)
from ccgate.client.sse import SSEDecoder

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio ccgate client; the same operations as ``Client``, awaited.

    Use it as an async context manager, or await ``aclose()``, to free its connections.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = _shared.DEFAULT_TIMEOUT,
        max_reconnects: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``max_reconnects``: how often in a row ``stream`` reconnects after a drop."""
        self.base_url, api_key = resolve(base_url, api_key)
        self.max_reconnects = max_reconnects
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_shared.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        """Use the client in an ``async with`` block."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the client at the end of the ``async with`` block."""
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return _shared.json_of(response)

    # -- jobs --------------------------------------------------------------------------

    async def run(self, prompt: str, **options: Unpack[RunOptions]) -> Job:
        """Run one prompt and wait for the finished job; a failed run raises ``APIError``."""
        body = _shared.run_body(prompt, options)
        return cast(
            "Job",
            await self._request("POST", "/api/v1/run", json=body, timeout=_shared.LONG_TIMEOUT),
        )

    async def submit(
        self,
        prompt: str,
        *,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RunOptions],
    ) -> Job:
        """Queue a job and return it at once (status ``queued`` or ``processing``)."""
        body = _shared.run_body(prompt, options, callback_url=callback_url)
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return cast("Job", await self._request("POST", "/api/v1/jobs", json=body, headers=extra))

    async def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return cast("Job", await self._request("GET", _shared.job_path(job_id)))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; ``APIError`` ``conflict`` once it has ended."""
        return cast("Job", await self._request("POST", _shared.job_path(job_id, "/cancel")))

    async def delete(self, job_id: str) -> None:
        """Delete a job with its events (cancelling it first if it still runs)."""
        await self._request("DELETE", _shared.job_path(job_id))

    async def list(self, *, limit: int = 20, offset: int = 0, status: str | None = None) -> JobPage:
        """One page of the key's jobs, newest first (``limit`` 1-100)."""
        params = _shared.list_params(limit, offset, status)
        return cast("JobPage", await self._request("GET", "/api/v1/jobs", params=params))

    async def iter_jobs(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Job]:
        """Every job of the key, newest first, fetched page by page."""
        offset = 0
        while True:
            page = await self.list(limit=page_size, offset=offset, status=status)
            for job in page["jobs"]:
                yield job
            offset += len(page["jobs"])
            if not page["jobs"] or offset >= page["total"]:
                return

    async def wait(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> Job:
        """Wait until the job ends and return it, whatever its end (failed jobs too).

        Follows the job's event stream, or polls every ``poll_interval`` seconds when given.
        ``WaitTimeout`` after ``timeout`` seconds; the job itself goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if poll_interval is not None:
            while True:
                job = await self.get(job_id)
                if job["status"] in TERMINAL_STATUSES:
                    return job
                if deadline is not None and time.monotonic() + poll_interval > deadline:
                    raise WaitTimeout(f"job {job_id} still {job['status']} after {timeout} s")
                await asyncio.sleep(poll_interval)
        async for event in self._stream(job_id, None, deadline):
            if event.event == "result":
                return cast("Job", event.data)
        return await self.get(job_id)

    def stream(self, job_id: str, *, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events until its ``result``; a dropped connection is resumed from the
        last event received (``Last-Event-ID``), so no event is lost or repeated."""
        return self._stream(job_id, last_event_id, None)

    async def _stream(
        self, job_id: str, last: int | None, deadline: float | None
    ) -> AsyncIterator[Event]:
        path = _shared.job_path(job_id, "/sse")
        failures = 0
        while True:
            extra = {"Last-Event-ID": str(last)} if last is not None else {}
            timeout = _shared.LONG_TIMEOUT
            if deadline is not None:
                timeout = httpx.Timeout(max(0.05, deadline - time.monotonic()), connect=10.0)
            try:
                async with self._http.stream(
                    "GET", path, headers=extra, timeout=timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise error_from_response(
                            response.status_code, response.headers, response.content
                        )
                    decoder = SSEDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.feed(line)
                        if event is None:
                            continue
                        failures = 0
                        last = event.id if event.id is not None else last
                        yield event
                        if event.event == "result":
                            return
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {job_id} did not end in time") from exc
                failures += 1
                if failures > self.max_reconnects:
                    raise ConnectionFailed(
                        f"the event stream of job {job_id} dropped "
                        f"{failures} times: {type(exc).__name__}"
                    ) from exc
            else:
                # The stream ended without a result: the server stopped, or nothing is left.
                if (await self.get(job_id))["status"] in TERMINAL_STATUSES:
                    return
                failures += 1
                if failures > self.max_reconnects:
                    raise ConnectionFailed(
                        f"the event stream of job {job_id} kept ending without its result"
                    )
            await asyncio.sleep(_shared.reconnect_delay(failures))

    # -- files and sessions ------------------------------------------------------------

    async def upload_file(
        self,
        file: _shared.FileInput,
        *,
        filename: str | None = None,
        media_type: str | None = None,
        ttl_secs: int | None = None,
    ) -> FileInfo:
        """Upload a file (bytes, a path or a binary file object); its ``ff_…`` token."""
        data = {"ttl_secs": str(ttl_secs)} if ttl_secs is not None else None
        return cast(
            "FileInfo",
            await self._request(
                "POST",
                "/api/v1/files",
                files=_shared.upload_parts(file, filename, media_type),
                data=data,
            ),
        )

    async def get_file(self, file_token: str) -> FileInfo:
        """An uploaded file's facts."""
        return cast("FileInfo", await self._request("GET", _shared.item_path("files", file_token)))

    async def delete_file(self, file_token: str) -> None:
        """Delete an uploaded file before it expires."""
        await self._request("DELETE", _shared.item_path("files", file_token))

    async def get_session(self, session_id: str) -> Session:
        """A session with its turns."""
        return cast(
            "Session", await self._request("GET", _shared.item_path("sessions", session_id))
        )

    async def delete_session(self, session_id: str) -> None:
        """Forget a session; later jobs naming it get 404."""
        await self._request("DELETE", _shared.item_path("sessions", session_id))
