"""The metrics module's bounded labels and sampled state, without a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ccgate import metrics
from ccgate.config import ConfigError, load_settings
from ccgate.doors import door_of


@pytest.fixture(autouse=True)
def _configured() -> Iterator[None]:
    metrics.configure(
        allowed_models=("sonnet", "claude-*"), aliases={"fast": "claude-x-1"}, multiproc_dir=None
    )
    yield
    metrics.reset()


def _value(name: str, **labels: str) -> float:
    text = metrics.exposition()[0].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_model_label_keeps_known_names_and_folds_the_rest() -> None:
    """Exact allowlist names, aliases and their targets stay; wildcard matches are ``other``."""
    assert [
        metrics.model_label(m) for m in ("sonnet", "fast", "claude-x-1", "claude-anything", None)
    ] == ["sonnet", "fast", "claude-x-1", "other", "none"]


def test_door_label_never_returns_a_raw_path() -> None:
    """Paths map to a fixed set of doors, whatever the client wrote."""
    assert [
        metrics.door_label(p)
        for p in (
            "/v1/messages",
            "/v1/chat/completions",
            "/api/v1/jobs/x",
            "/admin/keys",
            "/readyz",
            "/metrics",
            "/../etc/passwd",
            "/run",
            "/v1/responses",
        )
    ] == [
        "anthropic",
        "openai",
        "native",
        "admin",
        "health",
        "metrics",
        "other",
        "compat",
        "openai",
    ]


def test_door_label_agrees_with_the_door_registry() -> None:
    """Metrics name a request's door as the audit and the error shapes do (ccgate.doors)."""
    for path in ("/v1/messages/batches", "/v1/chat/completions", "/v1/complete", "/api/v1/run"):
        assert metrics.door_label(path) == door_of(path).name


def test_sampler_adds_pool_counter_growth_and_sets_states() -> None:
    """Pool stats become process gauges, and only the growth of hits between samples is
    added to the hit counter; the circuit gauge is 1 for its current state only."""
    sampler = metrics.StateSampler()
    before = _value("ccgate_pool_requests_total", outcome="hit")
    sampler.sample_pool({"idle": 2, "busy": 1, "starting": 0, "hits": 3, "misses": 1})
    sampler.sample_pool({"idle": 1, "busy": 2, "starting": 0, "hits": 5, "misses": 1})
    sampler.sample_circuit("open")
    assert _value("ccgate_pool_requests_total", outcome="hit") - before == 5
    assert _value("ccgate_pool_processes", state="busy") == 2
    assert _value("ccgate_circuit_state", state="open") == 1
    assert _value("ccgate_circuit_state", state="closed") == 0


def test_record_usage_counts_each_token_kind_and_cost() -> None:
    """A settlement adds input, output and cache tokens and the cost under model and key."""
    before = _value("ccgate_tokens_total", model="sonnet", key="k1", kind="cache_read")
    metrics.record_usage(
        "sonnet", "k1", {"input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 11}, 0.5
    )
    assert _value("ccgate_tokens_total", model="sonnet", key="k1", kind="cache_read") - before == 11
    assert _value("ccgate_cost_usd_total", model="sonnet", key="k1") >= 0.5


def test_multiproc_dir_only_in_the_env_file_stops_start_up(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR set only in the env file is a ConfigError naming the key:
    prometheus-client would never see it and each worker would count alone."""
    base = tmp_path
    env_file = base / "ccgate.env"
    env_file.write_text(f"PROMETHEUS_MULTIPROC_DIR={base}\n")
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        load_settings({}, env_file=str(env_file))
    assert load_settings({"PROMETHEUS_MULTIPROC_DIR": str(base)}).prometheus_multiproc_dir == str(
        base
    )


async def test_metered_pass_through_times_the_first_byte_of_a_stream() -> None:
    """A pass-through stream through the metered client observes one time to first token
    and leaves no run in progress; the bytes pass unchanged."""
    from ccgate.circuit import CircuitBreaker
    from ccgate.runners.anthropic_client import AnthropicClient
    from tests.support.fake_anthropic import FAKE_API_KEY, FakeAnthropic, Text

    labels = {"door": "none", "backend": "api", "model": "other"}
    with FakeAnthropic() as fake:
        fake.reply(Text("hi"))
        client = AnthropicClient(
            api_key=FAKE_API_KEY, base_url=fake.url, breaker=CircuitBreaker(5, 30.0)
        )
        metered = metrics.MeteredPassThrough(client, "api")
        try:
            body = {"model": "claude-x-2", "max_tokens": 5, "stream": True, "messages": []}
            async with await metered.open_stream(body, {}) as stream:
                raw = b"".join([chunk async for chunk in stream])
        finally:
            await client.aclose()
    assert b"message_stop" in raw and stream.completed
    assert _value("ccgate_time_to_first_token_seconds_count", **labels) == 1
    assert _value("ccgate_runs_in_progress", backend="api") == 0


def test_metrics_children_count_into_the_series_labels_names() -> None:
    """Children looked up once count into the very series ``labels`` names, also for label
    sets past the kept limit, and the request observer counts each request once."""
    children = metrics.Children(metrics.LIMIT_REFUSALS, limit=1)
    before = {n: _value("ccgate_limit_refusals_total", limit=n) for n in ("kept_a", "past_b")}
    for _ in range(3):
        children.get("kept_a").inc()
        children.get("past_b").inc()
    assert children.get("kept_a") is metrics.LIMIT_REFUSALS.labels("kept_a")
    assert children.get("past_b") is metrics.LIMIT_REFUSALS.labels("past_b")
    after = {n: _value("ccgate_limit_refusals_total", limit=n) for n in before}
    assert {n: after[n] - before[n] for n in before} == {"kept_a": 3, "past_b": 3}

    labels = {"door": "children_door", "status": "418", "error_type": "none"}
    observer = metrics.request_observer("children_door", "api")
    for _ in range(2):
        observer.observe(418, None, 0.01, None)
    assert _value("ccgate_http_requests_total", **labels) == 2
