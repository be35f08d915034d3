"""The network edge of a real `ccgate serve`: who the client is, and what it may try from there.

These run through the real server process because uvicorn's own handling of proxy headers
sits in front of the app, where in-process tests never see it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import StartServer
from tests.support.server import ServerProcess

ADMIN_TOKEN = "e2e-edge-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENROLLMENT_SECRET = "e2e-edge-enrollment-secret-0123456789abcdef"
OFFICE = "203.0.113.0/24"
FORGED = {"X-Forwarded-For": "203.0.113.7"}


@pytest.fixture
def edge_env(home: Path, work_dir: Path) -> dict[str, str]:
    """A server environment with uvicorn's FORWARDED_ALLOW_IPS opened to everyone, the admin
    API and enrollment on; no CLI is needed for anything these tests call."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CCGATE_WORK_DIR": str(work_dir),
        "FORWARDED_ALLOW_IPS": "*",
        "CCGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "CCGATE_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
    }


def _office_key(server: ServerProcess) -> str:
    done = server.cli("keys", "create", "office", "--ip-cidr", OFFICE)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _audit_rows(server: ServerProcess, key: str) -> list[dict[str, Any]]:
    """The key's audit rows, waiting for the batch that writes them."""
    deadline = time.monotonic() + 10
    while True:
        rows: list[dict[str, Any]] = httpx.get(
            f"{server.url}/admin/audit?key={key}", headers=ADMIN, timeout=10
        ).json()["data"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_serve_ignores_forwarded_for_from_loopback_even_with_forwarded_allow_ips(
    start_server: StartServer, edge_env: dict[str, str]
) -> None:
    """With FORWARDED_ALLOW_IPS=* and no CCGATE_TRUSTED_PROXIES, a loopback client forging
    X-Forwarded-For into a key's ip_cidrs gets 403, and the audit row shows 127.0.0.1."""
    server = start_server(edge_env)
    key = _office_key(server)
    response = httpx.get(
        f"{server.url}/api/v1/jobs",
        timeout=10,
        headers={"Authorization": f"Bearer {key}", **FORGED},
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"
    [row] = _audit_rows(server, "office")
    assert (row["client_ip"], row["http_status"]) == ("127.0.0.1", 403)


def test_serve_believes_forwarded_for_only_through_trusted_proxies(
    start_server: StartServer, edge_env: dict[str, str]
) -> None:
    """With 127.0.0.1 listed in CCGATE_TRUSTED_PROXIES, ccgate's own rules read the header:
    the same request is let in and audited under the forwarded address."""
    server = start_server(edge_env, CCGATE_TRUSTED_PROXIES="127.0.0.1")
    key = _office_key(server)
    response = httpx.get(
        f"{server.url}/api/v1/jobs",
        timeout=10,
        headers={"Authorization": f"Bearer {key}", **FORGED},
    )
    assert response.status_code == 200, response.text
    [row] = _audit_rows(server, "office")
    assert row["client_ip"] == "203.0.113.7"


def test_serve_bootstrap_cannot_forge_its_way_into_an_enrollment_network(
    start_server: StartServer, edge_env: dict[str, str]
) -> None:
    """A bootstrap from loopback claiming an address inside the enrollment's ip_cidrs is
    refused with 403 forbidden."""
    server = start_server(edge_env)
    created = httpx.post(
        f"{server.url}/admin/enrollments",
        headers=ADMIN,
        timeout=10,
        json={"name": "office", "ip_cidrs": [OFFICE]},
    )
    assert created.status_code == 201, created.text
    response = httpx.post(
        f"{server.url}/v1/bootstrap",
        headers=FORGED,
        timeout=10,
        json={"device_id": "laptop-1", "enrollment_code": created.json()["enrollment_code"]},
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"


def test_serve_admin_lockout_is_not_escaped_by_a_forged_forwarded_for(
    start_server: StartServer, edge_env: dict[str, str]
) -> None:
    """Wrong admin tokens lock out the real client address: changing X-Forwarded-For on
    every try does not reset the count, and the lock-out answers 429 with Retry-After."""
    server = start_server(edge_env)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for n in range(5):
            wrong = {"Authorization": f"Bearer wrong-{n}", "X-Forwarded-For": f"192.0.2.{n}"}
            assert http.get("/admin/keys", headers=wrong).status_code == 401
        locked = http.get("/admin/keys", headers={**ADMIN, "X-Forwarded-For": "192.0.2.99"})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["type"] == "signin_throttled"
    assert int(locked.headers["Retry-After"]) >= 1
