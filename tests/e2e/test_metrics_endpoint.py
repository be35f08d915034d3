"""GET /metrics through a real `ccgate serve`: who may read it, and the real CLI's timings.

The socket address decides access, so these run through the real server process: an
in-process client never shows what uvicorn hands the app.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import StartServer, keyed_client
from tests.support.server import ServerProcess

METRICS_TOKEN = "e2e-metrics-token-0123456789abcdef0123"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _own_address() -> str:
    """A non-loopback address of this machine (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this machine has no non-loopback IPv4 address to test from")
    return address


def _metrics(
    server: ServerProcess,
    host: str = "127.0.0.1",
    token: str | None = None,
    forged: str | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if forged:
        headers["X-Forwarded-For"] = forged
    return httpx.get(f"http://{host}:{server.port}/metrics", headers=headers, timeout=10)


def test_serve_metrics_from_loopback_count_a_real_cli_run(
    start_server: StartServer, server_env: dict[str, str]
) -> None:
    """From loopback /metrics answers the text format; a run of the real CLI moves the
    request, spawn, first-token and token families."""
    server = start_server(server_env)
    with keyed_client(server) as client:
        assert client.post("/api/v1/run", json={"prompt": "Say hi."}).status_code == 200
    response = _metrics(server)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert (
        samples[
            (
                "ccgate_http_requests_total",
                (("door", "native"), ("error_type", "none"), ("status", "200")),
            )
        ]
        == 1
    )
    assert samples[("ccgate_cli_spawn_seconds_count", ())] == 1
    assert (
        samples[
            (
                "ccgate_time_to_first_token_seconds_count",
                (("backend", "cli"), ("door", "native"), ("model", "sonnet")),
            )
        ]
        == 1
    )
    assert (
        samples[("ccgate_tokens_total", (("key", "e2e"), ("kind", "output"), ("model", "sonnet")))]
        > 0
    )


def test_serve_metrics_refuses_other_addresses_even_through_a_trusted_proxy(
    start_server: StartServer, server_env: dict[str, str]
) -> None:
    """From a non-loopback socket address /metrics is 403 in the error shape, even when that
    address is a trusted proxy forwarding for 127.0.0.1; the bearer token opens it."""
    address = _own_address()
    server = start_server(
        server_env,
        CCGATE_HOST="0.0.0.0",
        CCGATE_TRUSTED_PROXIES=address,
        CCGATE_METRICS_TOKEN=METRICS_TOKEN,
    )
    refused = _metrics(server, address, forged="127.0.0.1")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "forbidden"
    assert _metrics(server, address, token="x" * 40).status_code == 403
    opened = _metrics(server, address, token=METRICS_TOKEN)
    assert opened.status_code == 200
    assert "ccgate_http_requests_total" in {
        f.name + "_total" for f in text_string_to_metric_families(opened.text)
    }


def test_serve_metrics_merge_worker_processes_sharing_a_multiproc_dir(
    start_server: StartServer, server_env: dict[str, str], tmp_path: Path
) -> None:
    """Two server processes sharing PROMETHEUS_MULTIPROC_DIR: a scrape of either counts the
    requests both answered."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**server_env, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first, second = start_server(env), start_server(env)
    for server, times in ((first, 1), (second, 2)):
        for _ in range(times):
            assert httpx.get(f"{server.url}/no-such-route", timeout=10).status_code == 404
    samples = _samples(_metrics(first).text)
    not_found = sum(
        value
        for (name, labels), value in samples.items()
        if name == "ccgate_http_requests_total" and ("status", "404") in labels
    )
    assert not_found == 3
