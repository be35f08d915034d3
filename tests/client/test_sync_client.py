"""``ccgate.client.Client`` against a real ``ccgate serve``."""

from __future__ import annotations

import pytest

from ccgate.client import APIError, Client, ConfigurationError, RateLimitError
from tests.client.conftest import Gateway
from tests.client.dropping_proxy import DroppingProxy


def test_client_run_returns_the_finished_job(gateway: Gateway, api_key: str) -> None:
    """``run`` answers the completed job with the model's answer and usage."""
    with Client(gateway.url, api_key) as gate:
        job = gate.run("hello from the client", metadata={"trace": "t-1"})
    assert job["status"] == "completed"
    assert job["result"] == "hello from the client"
    assert job["metadata"] == {"trace": "t-1"}
    assert job["usage"] is not None and job["usage"]["output_tokens"] > 0


def test_client_submit_then_wait_returns_the_ended_job(gateway: Gateway, api_key: str) -> None:
    """``submit`` answers at once and ``wait`` (by stream, then by polling) gets its end."""
    with Client(gateway.url, api_key) as gate:
        first = gate.submit("first job")
        second = gate.submit("second job")
        assert first["status"] in ("queued", "processing")
        by_stream = gate.wait(first["job_id"], timeout=30)
        by_polling = gate.wait(second["job_id"], timeout=30, poll_interval=0.1)
    assert (by_stream["status"], by_stream["result"]) == ("completed", "first job")
    assert (by_polling["status"], by_polling["result"]) == ("completed", "second job")


def test_client_stream_resumes_after_a_dropped_connection(
    gateway: Gateway, api_key: str, dropping_proxy: DroppingProxy
) -> None:
    """A stream cut in the middle of an event resumes with Last-Event-ID: no event is lost
    or repeated, and the chunks add up to the result."""
    with Client(dropping_proxy.url, api_key) as gate:
        job = gate.submit("resume me across a dropped connection please")
        events = list(gate.stream(job["job_id"]))
    assert dropping_proxy.dropped == 1
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "result"
    assert "".join(e.text for e in events) == events[-1].data["result"]
    assert events[-1].data["result"] == "resume me across a dropped connection please"


def test_client_cancel_stops_a_running_job(gateway: Gateway, api_key: str) -> None:
    """``cancel`` ends a hanging job as cancelled; a second cancel is a ``conflict``."""
    with Client(gateway.url, api_key) as gate:
        job = gate.submit("#fake: hang")
        cancelled = gate.cancel(job["job_id"])
        with pytest.raises(APIError) as again:
            gate.cancel(job["job_id"])
    assert cancelled["status"] == "cancelled"
    assert (again.value.type, again.value.status) == ("conflict", 409)


def test_client_list_pages_through_every_job(gateway: Gateway, api_key: str) -> None:
    """``list`` answers pages of the key's jobs and ``iter_jobs`` walks them all, once each."""
    with Client(gateway.url, api_key) as gate:
        submitted = [gate.submit(f"job {n}")["job_id"] for n in range(5)]
        page = gate.list(limit=2)
        walked = [job["job_id"] for job in gate.iter_jobs(page_size=2)]
    assert (page["total"], page["limit"], len(page["jobs"])) == (5, 2, 2)
    assert walked == list(reversed(submitted))


def test_client_files_upload_get_and_delete(gateway: Gateway, api_key: str) -> None:
    """An uploaded file can be looked at, attached to a run and deleted."""
    with Client(gateway.url, api_key) as gate:
        info = gate.upload_file(b"# notes\nhello", filename="notes.md", ttl_secs=600)
        seen = gate.get_file(info["file_token"])
        job = gate.run("read the notes", files=[info["file_token"]])
        gate.delete_file(info["file_token"])
        with pytest.raises(APIError) as gone:
            gate.get_file(info["file_token"])
    assert (seen["filename"], seen["media_type"], seen["size"]) == ("notes.md", "text/markdown", 13)
    assert job["status"] == "completed"
    assert (gone.value.type, gone.value.status) == ("not_found", 404)


def test_client_sessions_get_and_delete(gateway: Gateway, api_key: str) -> None:
    """A run's session can be read with its turn and then forgotten."""
    with Client(gateway.url, api_key) as gate:
        job = gate.run("remember me")
        assert job["session_id"] is not None
        session = gate.get_session(job["session_id"])
        gate.delete_session(job["session_id"])
        with pytest.raises(APIError) as gone:
            gate.get_session(job["session_id"])
    assert (session["session_id"], session["turns"]) == (job["session_id"], 1)
    assert gone.value.status == 404


def test_client_rate_limit_error_carries_retry_after(gateway: Gateway) -> None:
    """Past a key's rpm the client raises ``RateLimitError`` with type, Retry-After and the
    request id."""
    with Client(gateway.url, gateway.key(rpm=1)) as gate:
        gate.run("one")
        with pytest.raises(RateLimitError) as refused:
            gate.run("two")
    error = refused.value
    assert (error.type, error.status) == ("rpm_exceeded", 429)
    assert error.retry_after is not None and 0 < error.retry_after <= 60
    assert error.request_id is not None and error.request_id.startswith("req_")


def test_client_error_carries_the_request_id_and_param(gateway: Gateway, api_key: str) -> None:
    """A refused request raises ``APIError`` with the type, message, param and request id."""
    with Client(gateway.url, api_key) as gate, pytest.raises(APIError) as refused:
        gate.run("   ")
    error = refused.value
    assert (error.type, error.status, error.param) == ("invalid_request", 400, "prompt")
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert "prompt" in error.message


def test_client_reads_url_and_key_from_the_environment(
    gateway: Gateway, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without arguments the client uses CCGATE_URL and CCGATE_KEY."""
    monkeypatch.setenv("CCGATE_URL", gateway.url)
    monkeypatch.setenv("CCGATE_KEY", api_key)
    with Client() as gate:
        assert gate.run("from the environment")["result"] == "from the environment"


def test_client_without_a_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no key given and no CCGATE_KEY the client refuses to start, naming the variable."""
    monkeypatch.delenv("CCGATE_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="CCGATE_KEY"):
        Client("http://127.0.0.1:1")
