"""Every route of a real served process, fuzzed from its own /openapi.json: never a 5xx.

schemathesis turns each operation of the served schema into Hypothesis strategies, valid
(`positive`) and schema-breaking (`negative`) requests alike, plus its coverage cases
(boundaries, missing and wrong-typed fields). Some requests name real ids and carry real
session, file and enrollment values, so they reach the code behind the 404 of an unknown id.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import BaseSchema, GenerationMode
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override

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

# Generated examples per operation and mode; the device pass only changes who calls, so it
# sends fewer and skips the coverage cases.
EXAMPLES = 60
DEVICE_EXAMPLES = 10
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
_HIDDEN_AUTH = {"Authorization": "Bearer <token>"}


@st.composite
def _with_seeded_body(
    draw: st.DrawFn, base: st.SearchStrategy[AnyCase], fields: Mapping[str, Sequence[Any]]
) -> AnyCase:
    case = draw(base)
    if isinstance(case.body, dict) and draw(st.booleans()):
        for name, values in fields.items():
            if name in case.body:
                case.body[name] = draw(st.sampled_from(values))
    return case


def strategy(op: Operation, mode: GenerationMode, seeds: Seeds) -> st.SearchStrategy[AnyCase]:
    """Cases for `op` in `mode`, some of them naming real ids and carrying real body values."""
    base = op.as_strategy(generation_mode=mode)
    fixed = [
        op.as_strategy(generation_mode=mode, path_parameters={name: value})
        for name in PATH_PARAM.findall(op.path)
        for value in seeds.path.get(name, [])
    ]
    cases = st.one_of(base, *fixed) if fixed else base
    return _with_seeded_body(cases, seeds.body) if seeds.body else cases


def coverage_cases(schema: BaseSchema, op: Operation) -> Iterator[AnyCase]:
    """schemathesis' coverage phase for `op`: each constraint's edges, and each one broken.

    Its pytest integration is what usually runs this phase; that integration cannot load a
    schema from a fixture under the pinned pytest, so the phase's driver is called directly.
    """
    yield from CoverageGenerator(
        operation=op,
        generation_modes=list(MODES),
        generation_config=schema.config.generation_for(operation=op, phase="coverage"),
        auth_storage=None,
        override=Override(),
        feedback=FeedbackSources(),
    )


def case_request(http: httpx.Client, case: AnyCase, headers: dict[str, str]) -> httpx.Request:
    """The request schemathesis would send for `case`, built for httpx, so that its answer
    can be read with a time limit (schemathesis' own client has none for a whole answer)."""
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url).rstrip("/"), headers=headers)
    data = kwargs.get("data")
    content = json.dumps(kwargs["json"]) if "json" in kwargs else data
    fields, files = _multipart(kwargs.get("files") or [])
    return http.build_request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        files=files or None,
        data={**(data if isinstance(data, dict) else {}), **fields} or None,
        content=content if isinstance(content, bytes | str) else None,
    )


def _multipart(
    parts: list[tuple[str, tuple[Any, ...]]],
) -> tuple[dict[str, str], list[tuple[str, tuple[Any, ...]]]]:
    # schemathesis writes parts as its client takes them: a part without a filename is a
    # plain form field, and a value of any type is sent as its text.
    fields: dict[str, str] = {}
    files: list[tuple[str, tuple[Any, ...]]] = []
    for name, (filename, value, *rest) in parts:
        if filename is None:
            fields[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        else:
            body = value if isinstance(value, bytes | str) else str(value)
            files.append((name, (filename, body, *rest)))
    return fields, files


def _sender(
    gate: Gate,
    http: httpx.Client,
    op: Operation,
    mode: str,
    headers: dict[str, str],
    report: Report,
) -> Callable[[AnyCase], None]:
    def send(case: AnyCase) -> None:
        answer = send_bounded(http, partial(case_request, http, case, headers))
        shown = case.as_curl_command(headers=_HIDDEN_AUTH, base_url=gate.url)
        report.check(gate, op.label, mode, shown, answer)

    return send


def fuzz(
    gate: Gate,
    schema: BaseSchema,
    token: str,
    ops: Iterable[Operation],
    examples: int,
    seeds: Seeds,
    *,
    coverage: bool = True,
) -> Report:
    """Send every operation's coverage cases (unless `coverage` is off) and generated cases
    with `token`; collect each 5xx."""
    report = Report()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gate.url, timeout=HTTP_TIMEOUT_SECS) as http:
        for op in ops:
            send_coverage = _sender(gate, http, op, "coverage", headers, report)
            for case in coverage_cases(schema, op) if coverage else ():
                send_coverage(case)
            for mode in MODES:
                run = settings(
                    max_examples=examples,
                    derandomize=True,
                    database=None,
                    deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )(
                    given(case=strategy(op, mode, seeds))(
                        _sender(gate, http, op, mode.value, headers, report)
                    )
                )
                # No negative case exists for a bare path parameter; its positive ones ran.
                with contextlib.suppress(Unsatisfiable):
                    run()
    return report


@pytest.fixture(scope="module")
def gate(start_gate: Callable[..., Gate]) -> Gate:
    """One server for every pass. A full queue would be a correct 503 (the overload test
    covers it); here the queue is big enough that every 5xx is a bug."""
    return start_gate(CCGATE_QUEUE_SIZE=100000, CCGATE_CONCURRENCY=4, CCGATE_JOB_TIMEOUT_SECS=30)


def test_openapi_app_routes_never_answer_5xx(gate: Gate, principals: Principals) -> None:
    """Valid and invalid requests to every non-admin route, with an API key, get no 5xx."""
    schema = load_schema(gate)
    ops = operations(schema, admin=False)
    assert_clean(fuzz(gate, schema, gate.api_key, ops, EXAMPLES, principals.app_seeds), ops)
    # Still the key's own answers, not a run of 401s: the pass did not lock itself out.
    models = httpx.get(
        f"{gate.url}/v1/models",
        timeout=HTTP_TIMEOUT_SECS,
        headers={"Authorization": f"Bearer {gate.api_key}"},
    )
    assert models.status_code == 200
    assert gate.is_alive()


def test_openapi_device_token_routes_never_answer_5xx(gate: Gate, principals: Principals) -> None:
    """The same routes called with an enrolled device's token get no 5xx."""
    schema = load_schema(gate)
    ops = operations(schema, admin=False)
    report = fuzz(
        gate,
        schema,
        principals.device_token,
        ops,
        DEVICE_EXAMPLES,
        principals.app_seeds,
        coverage=False,
    )
    assert_clean(report, ops)
    assert gate.is_alive()


def test_openapi_admin_routes_never_answer_5xx(gate: Gate, principals: Principals) -> None:
    """Valid and invalid requests to every admin route, with the admin token, get no 5xx."""
    schema = load_schema(gate)
    ops = operations(schema, admin=True)
    assert_clean(fuzz(gate, schema, gate.admin_token, ops, EXAMPLES, principals.admin_seeds), ops)
    assert gate.is_alive()


def test_openapi_passes_cover_every_served_route(gate: Gate) -> None:
    """The admin and non-admin passes together reach every operation the server lists."""
    served = httpx.get(f"{gate.url}/openapi.json", timeout=HTTP_TIMEOUT_SECS).json()
    listed = {
        f"{method.upper()} {path}" for path, item in served["paths"].items() for method in item
    }
    schema = load_schema(gate)
    fuzzed = {op.label for admin in (False, True) for op in operations(schema, admin)}
    assert fuzzed == listed
