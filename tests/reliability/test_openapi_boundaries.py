"""Known-hostile values in every parameter and body field of every served route: no 5xx.

Each request starts from one valid request schemathesis made for the operation (naming a
real id where there is one) and changes exactly one thing: one parameter, one top-level body
field, or one part of an upload, set to a value from `hostile`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.reliability import hostile
from tests.reliability.gate import HTTP_TIMEOUT_SECS, Gate
from tests.reliability.openapi_passes import (
    PATH_PARAM,
    AnyCase,
    Operation,
    Principals,
    Report,
    Seeds,
    assert_clean,
    load_schema,
    operations,
    send_bounded,
)

_JSON = "application/json"
_MULTIPART = "multipart/form-data"
_SHOWN_CHARS = 120
# Body fields that must differ from one create to the next, or every probe after the first
# stops at 409 conflict before its hostile value is looked at.
_UNIQUE_FIELDS = ("name",)


@dataclass(frozen=True)
class Probe:
    """One request: a valid one with a single hostile change, and what that change was."""

    what: str
    path: dict[str, Any]
    query: dict[str, Any]
    headers: dict[str, str]
    body: Any
    upload: tuple[str, str] | None = None


def base_case(op: Operation, seeds: Seeds) -> AnyCase:
    """schemathesis' first valid case for `op`, with a seeded real id in its path."""
    real = {
        name: seeds.path[name][0] for name in PATH_PARAM.findall(op.path) if seeds.path.get(name)
    }
    found: list[AnyCase] = []

    @settings(
        max_examples=1,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(path_parameters=real or None))
    def take(case: AnyCase) -> None:
        found.append(case)

    take()
    return found[0]


def _media_type(op: Operation) -> str | None:
    content = op.definition.raw.get("requestBody", {}).get("content", {})
    return next((media for media in (_JSON, _MULTIPART) if media in content), None)


def _body_fields(op: Operation) -> list[str]:
    content = op.definition.raw.get("requestBody", {}).get("content", {})
    schema = content.get(_JSON, {}).get("schema", {})
    if "$ref" in schema:
        schema = op.schema.raw_schema["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return list(schema.get("properties", {}))


def probes(op: Operation, case: AnyCase) -> Iterator[Probe]:
    """`case` unchanged, then every single-change variant `hostile` has a value for."""
    path = dict(case.path_parameters or {})
    query = dict(case.query or {})
    headers = {k: str(v) for k, v in (case.headers or {}).items()}
    body = case.body if isinstance(case.body, dict) else {}
    yield Probe("no change", path, query, headers, body)
    for param in op.iter_parameters():
        where = str(param.location.value)
        values = hostile.for_header() if where == "header" else hostile.for_url()
        for value in values:
            shown = f"{where} {param.name}={value!r:.{_SHOWN_CHARS}}"
            if where == "path":
                yield Probe(shown, {**path, param.name: value}, query, headers, body)
            elif where == "query":
                yield Probe(shown, path, {**query, param.name: value}, headers, body)
            elif where == "header":
                yield Probe(shown, path, query, {**headers, param.name: value}, body)
    media = _media_type(op)
    if media == _JSON:
        for field in _body_fields(op):
            for value in hostile.for_json():
                yield Probe(
                    f"body {field}={value!r:.{_SHOWN_CHARS}}",
                    path,
                    query,
                    headers,
                    {**body, field: value},
                )
    elif media == _MULTIPART:
        for filename, content_type in hostile.UPLOAD_PARTS:
            yield Probe(
                f"upload {filename!r:.{_SHOWN_CHARS}} as {content_type!r:.60}",
                path,
                query,
                headers,
                None,
                (filename, content_type),
            )


def _fresh(body: Any, probe_number: int, changed: str) -> Any:
    if not isinstance(body, dict):
        return body
    return {
        **body,
        **{
            field: f"probe-{probe_number}"
            for field in _UNIQUE_FIELDS
            if field in body and not changed.startswith(f"body {field}=")
        },
    }


def build(http: httpx.Client, op: Operation, probe: Probe) -> httpx.Request:
    """`probe` as a request to `op`; JSON bodies keep NaN and Infinity, which no client
    library sends."""
    url = op.path.format(**{k: quote(str(v), safe="") for k, v in probe.path.items()})
    params = {k: v if isinstance(v, str | list) else json.dumps(v) for k, v in probe.query.items()}
    method = op.method.upper()
    media = _media_type(op)
    if probe.upload is not None:
        filename, content_type = probe.upload
        return http.build_request(
            method,
            url,
            params=params,
            headers=probe.headers,
            files={"file": (filename, b"hostile upload", content_type)},
        )
    if media == _MULTIPART:
        return http.build_request(
            method,
            url,
            params=params,
            headers=probe.headers,
            files={"file": ("a.txt", b"hostile upload", "text/plain")},
        )
    if media == _JSON:
        return http.build_request(
            method,
            url,
            params=params,
            headers={**probe.headers, "Content-Type": _JSON},
            content=json.dumps(probe.body, allow_nan=True),
        )
    return http.build_request(method, url, params=params, headers=probe.headers)


def probe_all(gate: Gate, token: str, ops: list[Operation], seeds: Seeds) -> Report:
    """Send every probe of every operation with `token` as bearer; collect each 5xx."""
    report = Report()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gate.url, headers=auth, timeout=HTTP_TIMEOUT_SECS) as http:
        for op in ops:
            for number, probe in enumerate(probes(op, base_case(op, seeds))):
                probe = replace(probe, body=_fresh(probe.body, number, probe.what))
                answer = send_bounded(http, partial(build, http, op, probe))
                report.check(gate, op.label, "boundary", f"{op.label} with {probe.what}", answer)
    return report


@pytest.fixture(scope="module")
def gate(start_gate: Callable[..., Gate]) -> Gate:
    """A server whose queue never fills, so every 5xx is a bug."""
    return start_gate(CCGATE_QUEUE_SIZE=100000, CCGATE_CONCURRENCY=4, CCGATE_JOB_TIMEOUT_SECS=30)


def test_openapi_boundaries_app_routes_never_answer_5xx(gate: Gate, principals: Principals) -> None:
    """Hostile values in any parameter or body field of a non-admin route get no 5xx."""
    ops = operations(load_schema(gate), admin=False)
    assert_clean(probe_all(gate, gate.api_key, ops, principals.app_seeds), ops)
    assert gate.is_alive()


def test_openapi_boundaries_admin_routes_never_answer_5xx(
    gate: Gate, principals: Principals
) -> None:
    """Hostile values in any parameter or body field of an admin route get no 5xx."""
    ops = operations(load_schema(gate), admin=True)
    assert_clean(probe_all(gate, gate.admin_token, ops, principals.admin_seeds), ops)
    assert gate.is_alive()
