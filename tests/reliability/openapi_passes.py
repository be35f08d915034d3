"""What the passes over a served /openapi.json share: the schema, real ids, and the report.

A pass sends requests to every operation of the server's own schema with one kind of
credential and collects every 5xx before it fails, so one run lists them all, each with
the request that caused it and the end of the traceback the server logged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import httpx
import schemathesis
from schemathesis import APIOperation, BaseSchema, Case
from schemathesis.core.result import Ok

from tests.reliability.door_bodies import add_door_bodies
from tests.reliability.gate import HTTP_TIMEOUT_SECS, Gate

Operation: TypeAlias = APIOperation[Any, Any, Any, Any]
AnyCase: TypeAlias = Case[Any]
PATH_PARAM = re.compile(r"{(\w+)}")
# The longest any answer may take; the servers send SSE heartbeats every second, so a
# stream that never ends is seen within a second of this.
ANSWER_LIMIT_SECS = 20.0
_TRACE_LINES = 6


@dataclass
class Seeds:
    """Real values made through the API before a pass, mixed into generated requests so they
    get past the 404 of an unknown id: by path parameter, and by body field."""

    path: dict[str, list[str]] = field(default_factory=dict)
    body: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Principals:
    """The credentials and real ids a fuzzed server was given before the passes."""

    device_token: str
    app_seeds: Seeds
    admin_seeds: Seeds


@dataclass(frozen=True)
class Answer:
    """The parts of a response a pass looks at; status 0 when there was no complete answer
    (the connection dropped, or the answer was still open at the time limit)."""

    status: int
    text: str
    request_id: str
    dropped: bool = False

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        """The answer an httpx response carries."""
        return cls.parts(
            response.status_code, response.text, response.headers.get("request-id", "")
        )

    @classmethod
    def parts(cls, status: int, text: str, request_id: str) -> Answer:
        """An answer from its parts; the id comes from the error body when no header has it
        (an unhandled error is answered outside the middleware that sets the header)."""
        return cls(status, text, request_id or _body_request_id(text))

    @classmethod
    def no_answer(cls, error: Exception) -> Answer:
        """No answer: the connection failed with `error`."""
        return cls(0, f"no answer: {error!r}", "", dropped=True)


@dataclass
class Finding:
    """One 5xx: what was sent, what came back, and the server's own account of it."""

    label: str
    mode: str
    status: int
    request: str
    answer: str
    trace: str

    def render(self) -> str:
        """A few lines for the failure message."""
        return (
            f"{self.label} [{self.mode}] -> {self.status}\n  {self.request[:600]}\n"
            f"  answer: {self.answer[:300]}\n  server: {self.trace}"
        )


@dataclass
class Report:
    """What a pass sent (requests per operation) and every 5xx (or missing answer) it got."""

    sent: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def distinct(self) -> list[Finding]:
        """One finding per operation, status and answer type: the shortest request of each."""
        best: dict[tuple[str, int, str], Finding] = {}
        for finding in self.findings:
            key = (finding.label, finding.status, _answer_type(finding.answer))
            if key not in best or len(finding.request) < len(best[key].request):
                best[key] = finding
        return list(best.values())

    def check(self, gate: Gate, label: str, mode: str, request: str, answer: Answer) -> None:
        """Count one request to `label`; keep it as a finding when it got a 5xx, or no
        complete answer at all."""
        self.sent[label] = self.sent.get(label, 0) + 1
        if answer.status >= 500 or answer.status == 0:
            self.findings.append(
                Finding(
                    label,
                    mode,
                    answer.status,
                    request,
                    answer.text,
                    server_trace(gate, answer.request_id),
                )
            )


def send_bounded(
    http: httpx.Client, build: Callable[[], httpx.Request], limit_secs: float = ANSWER_LIMIT_SECS
) -> Answer:
    """Send the request `build` makes and read its answer for at most `limit_secs`: an
    answer still open then (a stream that never ends) is kept as status 0.

    After an unhandled error uvicorn closes the connection, so the next request on it may
    meet a reset: a dropped request is sent once more, on a fresh connection, before it
    counts as dropped.
    """
    answer = _send_once(http, build(), limit_secs)
    return _send_once(http, build(), limit_secs) if answer.dropped else answer


def _send_once(http: httpx.Client, request: httpx.Request, limit_secs: float) -> Answer:
    deadline = time.monotonic() + limit_secs
    try:
        response = http.send(request, stream=True)
    except httpx.LocalProtocolError:
        raise  # the test built a request no client may send: its own bug, not the server's
    except httpx.TransportError as exc:
        return Answer.no_answer(exc)
    request_id = response.headers.get("request-id", "")
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if time.monotonic() > deadline:
                return Answer(
                    0,
                    f"{response.status_code}, but the answer was still open "
                    f"after {limit_secs:g} s: {body[:200]!r}",
                    request_id,
                )
    except httpx.TransportError as exc:
        return Answer.no_answer(exc)
    finally:
        response.close()
    return Answer.parts(response.status_code, body.decode("utf-8", "replace"), request_id)


def _body_request_id(text: str) -> str:
    try:
        error = json.loads(text).get("error", {})
    except (ValueError, AttributeError):
        return ""
    return str(error.get("request_id", "")) if isinstance(error, dict) else ""


def _answer_type(answer: str) -> str:
    try:
        error = json.loads(answer).get("error", {})
    except (ValueError, AttributeError):
        return answer[:40]
    return str(error.get("type") if isinstance(error, dict) else error)


def server_trace(gate: Gate, request_id: str) -> str:
    """The tail of the traceback the server logged for `request_id`, or what it logged."""
    for line in gate.server.log_text().splitlines():
        if not request_id or request_id not in line or '"level": "error"' not in line:
            continue
        try:
            exception = str(json.loads(line).get("exception", line))
        except ValueError:
            return line[-600:]
        return " | ".join(exception.strip().splitlines()[-_TRACE_LINES:])
    return f"no error logged for {request_id or 'this request'}"


def load_schema(gate: Gate) -> BaseSchema:
    """The schema the server serves at /openapi.json, plus bodies for the hand-parsed doors."""
    spec = httpx.get(f"{gate.url}/openapi.json", timeout=HTTP_TIMEOUT_SECS).json()
    add_door_bodies(spec)
    return schemathesis.openapi.from_dict(spec)


def operations(schema: BaseSchema, admin: bool) -> list[Operation]:
    """The admin (`/admin/*`) or all other operations, deletes last so seeds live longest."""
    found = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    chosen = [op for op in found if op.path.startswith("/admin") == admin]
    return sorted(chosen, key=lambda op: op.method.upper() == "DELETE")


def assert_clean(report: Report, ops: Sequence[Operation]) -> None:
    """Every operation was sent at least once and none answered a 5xx."""
    assert sorted(report.sent) == sorted(op.label for op in ops)
    assert [label for label, count in report.sent.items() if count == 0] == []
    distinct = report.distinct()
    assert distinct == [], (
        f"{len(report.findings)} requests got a 5xx, "
        f"{len(distinct)} distinct:\n\n" + "\n\n".join(f.render() for f in distinct)
    )


def _created(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def make_principals(gate: Gate) -> Principals:
    """Make a finished run with its session, a job, a file and an enrolled device through
    the API, so the passes can name them."""
    app = {"Authorization": f"Bearer {gate.api_key}"}
    admin = {"Authorization": f"Bearer {gate.admin_token}"}
    with httpx.Client(base_url=gate.url, timeout=HTTP_TIMEOUT_SECS) as http:
        run = _created(http.post("/api/v1/run", json={"prompt": "seed"}, headers=app), 200)
        job = _created(http.post("/api/v1/jobs", json={"prompt": "seed"}, headers=app), 202)
        upload = _created(
            http.post(
                "/api/v1/files", headers=app, files={"file": ("seed.txt", b"seed", "text/plain")}
            ),
            201,
        )
        enrollment = _created(
            http.post(
                "/admin/enrollments",
                headers=admin,
                json={"name": "seed-desktop", "max_devices": 1000},
            ),
            201,
        )
        code = enrollment["enrollment_code"]
        device = _created(
            http.post("/v1/bootstrap", json={"device_id": "seed-device", "enrollment_code": code}),
            200,
        )
    app_seeds = Seeds(
        path={
            "job_id": [run["job_id"], job["job_id"]],
            "token": [upload["file_token"]],
            "session_id": [run["session_id"]],
            "model_id": ["sonnet", "claude-sonnet-4-5"],
        },
        body={
            "session_id": [run["session_id"]],
            "files": [[upload["file_token"]]],
            "enrollment_code": [code],
        },
    )
    admin_seeds = Seeds(
        path={"name": [gate.api_key_name, "seed-desktop"], "device_id": [device["device"]["id"]]}
    )
    return Principals(device["token"], app_seeds, admin_seeds)
