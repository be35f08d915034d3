"""What the sync and async clients share: request bodies, paths, answers and the retry pace."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import quote

import httpx

from ccgate.client.errors import error_from_response
from ccgate.client.schema import RunOptions

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# A run or a stream may take as long as the server lets a job run: the server bounds it.
LONG_TIMEOUT = httpx.Timeout(None, connect=10.0)
USER_AGENT = "ccgate-client-python"
RECONNECT_DELAY_SECS = 0.5
MAX_RECONNECT_DELAY_SECS = 10.0

FileInput = bytes | str | Path | IO[bytes]


def headers(api_key: str) -> dict[str, str]:
    """The headers every request carries."""
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def job_path(job_id: str, suffix: str = "") -> str:
    """The path of one job (``suffix`` such as ``/sse``), its id escaped."""
    return f"/api/v1/jobs/{quote(job_id, safe='')}{suffix}"


def item_path(kind: str, item_id: str) -> str:
    """The path of one file or session, its id escaped."""
    return f"/api/v1/{kind}/{quote(item_id, safe='')}"


def run_body(prompt: str, options: RunOptions, **extra: Any) -> dict[str, Any]:
    """The JSON body of a run or job: the prompt, the options given, and ``extra`` if set."""
    body: dict[str, Any] = {"prompt": prompt, **options}
    body.update({name: value for name, value in extra.items() if value is not None})
    return body


def list_params(limit: int, offset: int, status: str | None) -> dict[str, str | int]:
    """The query of one page of jobs."""
    params: dict[str, str | int] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status
    return params


def upload_parts(
    file: FileInput, filename: str | None, media_type: str | None
) -> dict[str, tuple[str, bytes, str | None]]:
    """The multipart ``file`` part of an upload, from bytes, a path or a binary file."""
    if isinstance(file, str | Path):
        path = Path(file)
        return {"file": (filename or path.name, path.read_bytes(), media_type)}
    if isinstance(file, bytes):
        return {"file": (filename or "upload", file, media_type)}
    name = filename or Path(str(getattr(file, "name", "") or "")).name or "upload"
    return {"file": (name, file.read(), media_type)}


def json_of(response: httpx.Response) -> Any:
    """The decoded body of a successful answer; the API's error as an exception otherwise."""
    check(response)
    return response.json() if response.content else None


def check(response: httpx.Response) -> None:
    """Raise the API's error when ``response`` is not a success."""
    if response.is_success:
        return
    raise error_from_response(response.status_code, response.headers, response.content)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` as a JSON object, for the typed results (the server's shape is trusted)."""
    return cast("dict[str, Any]", value)


def reconnect_delay(failures: int) -> float:
    """How long to wait before reconnect number ``failures`` of a stream."""
    return float(min(MAX_RECONNECT_DELAY_SECS, RECONNECT_DELAY_SECS * 2 ** max(0, failures - 1)))
