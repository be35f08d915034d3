"""The Python client of ccgate's native API: ``Client`` (blocking) and ``AsyncClient``.

Needs only httpx. ``base_url`` and ``api_key`` default to the CCGATE_URL and CCGATE_KEY
environment variables::

    from ccgate.client import Client

    with Client() as gate:
        job = gate.run("Say hi")
        print(job["result"])
"""

from __future__ import annotations

from ccgate.client.aio import AsyncClient
from ccgate.client.errors import (
    APIError,
    CcgateError,
    ConfigurationError,
    ConnectionFailed,
    RateLimitError,
    WaitTimeout,
    WebhookVerificationError,
)
from ccgate.client.schema import (
    TERMINAL_STATUSES,
    Event,
    FileInfo,
    Job,
    JobError,
    JobPage,
    JobStatus,
    RunOptions,
    Session,
    Usage,
    WebhookState,
)
from ccgate.client.sync import Client
from ccgate.client.webhooks import verify_webhook

__all__ = [
    "TERMINAL_STATUSES",
    "APIError",
    "AsyncClient",
    "CcgateError",
    "Client",
    "ConfigurationError",
    "ConnectionFailed",
    "Event",
    "FileInfo",
    "Job",
    "JobError",
    "JobPage",
    "JobStatus",
    "RateLimitError",
    "RunOptions",
    "Session",
    "Usage",
    "WaitTimeout",
    "WebhookState",
    "WebhookVerificationError",
    "verify_webhook",
]
