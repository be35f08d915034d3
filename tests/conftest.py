"""Fixtures shared by every tier: settings, stores on each backend, service availability."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ccgate.config import Settings, load_settings
from ccgate.store import Store

POSTGRES_URL = os.environ.get(
    "CCGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CCGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("CCGATE_TEST_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Skip with ``reason``, or fail when CCGATE_TEST_REQUIRE_SERVICES=1 demands every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CCGATE_TEST_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


async def redis_problem(url: str = REDIS_URL) -> str | None:
    """Why Redis at ``url`` cannot be used, as a skip reason; None when it answers a ping."""
    try:
        from redis.asyncio import Redis
    except ImportError:
        return "redis is not installed (pip install '.[redis]')"
    client = Redis.from_url(url)
    try:
        await asyncio.wait_for(client.ping(), 3)
    except Exception as exc:
        return f"Redis not reachable at {url}: {type(exc).__name__}"
    finally:
        await client.aclose()
    return None


async def _postgres_reachable(url: str) -> str | None:
    try:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
    except ImportError:
        return "asyncpg is not installed (pip install '.[postgres]')"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 3)
    except Exception as exc:
        return f"PostgreSQL not reachable at {url}: {type(exc).__name__}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def fresh_postgres_database(base_url: str) -> AsyncIterator[str]:
    """Create an empty database next to ``base_url``'s, yield its URL, drop it afterwards;
    tests running at the same time never share tables."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"ccgate_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(base_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings from CCGATE_* overrides, with the database in this test's tmp dir."""

    def build(**env: Any) -> Settings:
        base = {
            "CCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ccgate.db'}",
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(tmp_path)),
        }
        base.update({k: str(v) for k, v in env.items()})
        return load_settings(base)

    return build


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A freshly migrated, empty store on each backend (the contract suite runs on both)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'store.db'}"
        else:
            problem = await _postgres_reachable(POSTGRES_URL)
            if problem:
                service_missing(problem)
            url = await stack.enter_async_context(fresh_postgres_database(POSTGRES_URL))
        opened = await Store.open(url)
        try:
            yield opened
        finally:
            await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated SQLite store in this test's tmp dir."""
    opened = await Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    problem = asyncio.run(_postgres_reachable(POSTGRES_URL))
    if problem:
        service_missing(problem)
    # One loop for the whole test: the database lives as long as the context is open.
    loop = asyncio.new_event_loop()
    manager = fresh_postgres_database(POSTGRES_URL)
    try:
        yield loop.run_until_complete(manager.__aenter__())
        loop.run_until_complete(manager.__aexit__(None, None, None))
    finally:
        loop.close()
