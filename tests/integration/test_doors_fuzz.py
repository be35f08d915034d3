"""Whatever a client sends to the compatible doors and the JSON routes, never a 500.

The values include NaN and Infinity, NUL and lone surrogates inside strings, huge integers
and deep nesting (tests/support/hostile_json.py); the two doors that queue jobs are fuzzed on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Gateway
from tests.support.hostile_json import hostile_json, hostile_text, raw_bodies

_json = hostile_json
_block = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "image", "document", "image_url", "tool_use", "x"])
        | _json,
        "text": _json,
        "source": _json,
        "image_url": _json,
    },
)
_content = hostile_text | st.lists(_block | _json, max_size=3) | _json
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | _json,
        "content": _content,
        "tool_calls": _json,
    },
)
_conversation = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["sonnet", "haiku"]) | _json,
        "max_tokens": st.integers(-5, 5) | _json,
        "messages": st.lists(_message, max_size=4) | _json,
        "system": _content,
        "stream": _json,
        "stop": _json,
        "stop_sequences": _json,
        "temperature": _json,
        "top_p": _json,
        "n": _json,
        "tools": _json,
        "stream_options": _json,
        "response_format": _json,
        "metadata": _json,
    },
)
_fuzz = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdefghij"


@pytest.fixture
async def admin_gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with the admin API on."""
    return await gateway_factory(CCGATE_ADMIN_TOKEN=ADMIN_TOKEN)  # type: ignore[no-any-return]


async def _post(gateway: Gateway, path: str, body: Any) -> Any:
    return await _post_raw(gateway, path, json.dumps(body))


async def _post_raw(gateway: Gateway, path: str, content: str) -> Any:
    response = await gateway.client.post(path, content=content, headers=gateway.auth())
    assert response.status_code < 500, response.text
    return response


@pytest.fixture
async def any_db_gateway(db_gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway on SQLite, then on PostgreSQL."""
    return await db_gateway_factory()  # type: ignore[no-any-return]


_USER_TURN = {"role": "user", "content": "hi"}
# Well-formed conversations whose text is hostile, so they get past the shape checks.
_hostile_turns = st.fixed_dictionaries(
    {
        "model": st.just("sonnet"),
        "max_tokens": st.just(5),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": hostile_text}),
            min_size=1,
            max_size=2,
        ),
    },
    optional={"system": hostile_text, "metadata": _json},
)
_raw_conversations = raw_bodies(
    ["metadata", "temperature", "max_tokens", "system", "top_p"],
    {"model": "sonnet", "max_tokens": 5, "messages": [_USER_TURN]},
) | raw_bodies(["messages"], {"model": "sonnet", "max_tokens": 5})


@_fuzz
@given(body=_hostile_turns | _conversation | _json, raw=_raw_conversations)
async def test_fuzz_messages_never_500(any_db_gateway: Gateway, body: Any, raw: str) -> None:
    """Random Messages bodies, and bodies with raw NaN, 1e999 or deep literals, get a 2xx
    or a 4xx in the Anthropic error shape."""
    for sent in (json.dumps(body), raw):
        response = await _post_raw(any_db_gateway, "/v1/messages", sent)
        if response.status_code >= 400:
            assert response.json()["type"] == "error"


@_fuzz
@given(body=_hostile_turns | _conversation | _json, raw=_raw_conversations)
async def test_fuzz_chat_completions_never_500(
    any_db_gateway: Gateway, body: Any, raw: str
) -> None:
    """Random chat completion bodies, raw literals included, get a 2xx or a 4xx in the
    OpenAI error shape."""
    for sent in (json.dumps(body), raw):
        response = await _post_raw(any_db_gateway, "/v1/chat/completions", sent)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@_fuzz
@given(body=_conversation | _json)
async def test_fuzz_count_tokens_never_500(gateway: Gateway, body: Any) -> None:
    """Random count_tokens bodies never crash the estimate."""
    await _post(gateway, "/v1/messages/count_tokens", body)


@_fuzz
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "name": _json,
            "rpm": _json,
            "rpd": _json,
            "tokens_per_day": _json,
            "budget_usd_per_month": _json,
            "concurrency": _json,
            "models": _json,
            "ip_cidrs": _json,
            "expires_at": _json,
            "webhook_secret": _json,
        },
    )
    | _json
)
async def test_fuzz_admin_keys_never_500(admin_gateway: Gateway, body: Any) -> None:
    """Random key policies are accepted or refused with a 4xx, never a 500."""
    response = await admin_gateway.client.post(
        "/admin/keys", content=json.dumps(body), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code < 500, response.text


@pytest.fixture
async def enrolling_gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with device enrollment on."""
    return await gateway_factory(  # type: ignore[no-any-return]
        CCGATE_ENROLLMENT_SECRET="fuzz-enrollment-secret-0123456789abcdef"
    )


@_fuzz
@given(
    body=st.fixed_dictionaries({}, optional={"device_id": _json, "enrollment_code": _json}) | _json,
    token=st.text(max_size=80),
)
async def test_fuzz_bootstrap_and_refresh_never_500(
    enrolling_gateway: Gateway, body: Any, token: str
) -> None:
    """Random enrollment attempts and bearer tokens are refused with a 4xx, never a 500."""
    response = await enrolling_gateway.client.post("/v1/bootstrap", content=json.dumps(body))
    assert 400 <= response.status_code < 500, response.text
    if token.isascii() and token.isprintable():
        refresh = await enrolling_gateway.client.post(
            "/v1/refresh", headers={"Authorization": f"Bearer eyJ{token}"}
        )
        assert 400 <= refresh.status_code < 500, refresh.text
