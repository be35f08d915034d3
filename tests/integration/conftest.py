"""An in-process ccgate app (lifespan running) with an httpx client and a key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ccgate.api.app import create_app
from ccgate.api.deps import app_services
from ccgate.config import Settings
from ccgate.runners.base import Runner
from tests.conftest import (
    POSTGRES_URL,
    _postgres_reachable,
    fresh_postgres_database,
    service_missing,
)
from tests.support.fake_anthropic import FAKE_API_KEY, FakeAnthropic
from tests.support.fake_runner import FakeRunner


@dataclass
class Gateway:
    """A running app, a client for it and one valid key."""

    app: FastAPI
    client: httpx.AsyncClient
    key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        """Authorization header for ``key`` (default: the gateway's own key)."""
        return {"Authorization": f"Bearer {key or self.key}"}

    async def run(self, body: Any, **kwargs: Any) -> httpx.Response:
        """POST ``body`` as JSON to /api/v1/run with the key."""
        return await self.client.post("/api/v1/run", json=body, headers=self.auth(), **kwargs)


@pytest.fixture
async def gateway_factory(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """Start gateways on demand (runner and settings overridable); all stop at the end."""
    stack: list[tuple[FastAPI, httpx.AsyncClient, Any]] = []

    async def start(runner: Runner | None = None, **env: Any) -> Gateway:
        app = create_app(
            make_settings(**env), runner=runner if runner is not None else FakeRunner()
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ccgate.test"
        )
        stack.append((app, client, lifespan))
        secret = (await app_services(app).keyring.create("app")).secret
        return Gateway(app, client, secret)

    yield start
    for _, client, lifespan in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with a FakeRunner and default settings."""
    return await gateway_factory()  # type: ignore[no-any-return]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    """A running fake Anthropic API."""
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def api_gateway(
    make_settings: Callable[..., Settings], fake: FakeAnthropic
) -> AsyncIterator[Gateway]:
    """ccgate with CCGATE_BACKEND=api pointed at the fake, and one key."""
    app = create_app(
        make_settings(
            CCGATE_BACKEND="api", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=FAKE_API_KEY
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ccgate.test"
        ) as client,
    ):
        secret = (await app_services(app).keyring.create("app")).secret
        yield Gateway(app, client, secret)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on each backend: SQLite in tmp_path, or a fresh PostgreSQL database
    dropped afterwards (request it before ``gateway_factory`` so the app stops first)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    problem = await _postgres_reachable(POSTGRES_URL)
    if problem:
        service_missing(problem)
    async with fresh_postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
async def db_gateway_factory(
    database_url: str, gateway_factory: Callable[..., Any]
) -> Callable[..., Any]:
    """Like ``gateway_factory``, on the ``database_url`` backend (SQLite, then PostgreSQL)."""

    async def start(runner: Runner | None = None, **env: Any) -> Gateway:
        return await gateway_factory(  # type: ignore[no-any-return]
            runner, CCGATE_DATABASE_URL=database_url, **env
        )

    return start
