"""Whatever a client sends to /api/v1/run, the answer is never a 500."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Gateway

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries({}, optional={
    "prompt": _json, "model": _json, "system_prompt": _json, "append_system_prompt": _json,
    "response_format": _json, "timeout_secs": _json, "metadata": _json,
})


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_fields | _json)
async def test_fuzz_run_body_never_500(gateway: Gateway, body: Any) -> None:
    """Random JSON bodies get a 2xx or a 4xx in the error shape, never a 5xx."""
    response = await gateway.client.post("/api/v1/run", content=json.dumps(body),
                                         headers=gateway.auth())
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"type", "message", "request_id"}
