"""The error shape of each door and the handlers that make every failure use it.

One catalogue of error types (``ccgate.errors``) serves every door; the Anthropic and OpenAI
doors render it in their own documented shapes so their SDKs raise the right exceptions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ccgate.doors import ErrorShape, door_of
from ccgate.errors import ApiError, ErrorType

log = structlog.get_logger("ccgate.http")

# The status logged and audited for a request whose client went away before its answer.
CLIENT_CLOSED_REQUEST = 499
_HTTP_STATUS_TYPES: dict[int, ErrorType] = {
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


# What a client is told when the CLI is missing: the real problem names the CLI's path, which
# only the server log, the admin's /readyz and `ccgate doctor` show.
CLI_UNAVAILABLE_MESSAGE = (
    "the claude CLI is not available on this server: install it (npm "
    "install -g @anthropic-ai/claude-code) or set CCGATE_CLAUDE_PATH; "
    "'ccgate doctor' on the server says what is wrong"
)


def client_message(error: ApiError) -> str:
    """The message a client sees for ``error``: server paths never leave the server."""
    return CLI_UNAVAILABLE_MESSAGE if error.error_type == "cli_unavailable" else error.message


def request_id_of(request: Request) -> str:
    """The id the request-id middleware gave this request."""
    return str(request.scope.get("ccgate.request_id", ""))


# The Anthropic API's documented error types, by status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# OpenAI's error ``type`` values, by status; ccgate's own type goes in ``code``.
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def door_of_request(path: str, headers: Mapping[str, str]) -> ErrorShape:
    """Which door's error shape a request gets (``ccgate.doors``): ``anthropic``, ``openai``
    or ``native``."""
    return door_of(path, headers).error_shape


def error_body(door: ErrorShape, request_id: str, error: ApiError) -> dict[str, object]:
    """The JSON body of ``error`` in ``door``'s shape."""
    message = client_message(error)
    if door == "anthropic":
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(error.status, "api_error"), "message": message},
            "request_id": request_id,
        }
    if door == "openai":
        openai_error: dict[str, object] = {
            "message": message,
            "type": _OPENAI_TYPES.get(error.status, "invalid_request_error"),
            "param": error.param,
            "code": error.error_type,
        }
        if "raw_text" in error.extra:  # schema_validation_failed: the answer as written
            openai_error["raw_text"] = error.extra["raw_text"]
        return {"error": openai_error}
    body: dict[str, object] = {
        "type": error.error_type,
        "message": message,
        "request_id": request_id,
    }
    if error.param is not None:
        body["param"] = error.param
    body.update(error.extra)
    return {"error": body}


def error_headers(error: ApiError) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) plus whatever headers the error carries."""
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return headers


def error_response(request_id: str, error: ApiError, door: ErrorShape = "native") -> JSONResponse:
    """Render ``error`` in ``door``'s shape with its status and headers."""
    return JSONResponse(
        error_body(door, request_id, error), status_code=error.status, headers=error_headers(error)
    )


def _respond(request: Request, error: ApiError) -> JSONResponse:
    request.scope["ccgate.error_type"] = error.error_type  # for the requests metric
    door = door_of_request(request.url.path, request.headers)
    return error_response(request_id_of(request), error, door)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.error_type == "cli_unavailable":
        log.warning("cli_unavailable", request_id=request_id_of(request), problem=exc.message)
    return _respond(request, exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = _HTTP_STATUS_TYPES.get(exc.status_code, "invalid_request")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    response = _respond(request, ApiError(error_type, message))
    response.status_code = exc.status_code
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"{field}: {first.get('msg', 'invalid')}" if field else first.get("msg", "invalid")
    return _respond(request, ApiError("invalid_request", message, param=field))


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # The client hung up while its body was read: no one reads this answer, but the access
    # log and the audit row say 499 (client closed request), as for a run it walks away from.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", request_id=request_id_of(request), path=request.url.path)
    return _respond(
        request,
        ApiError(
            "internal_error", "ccgate hit an internal error; the request id finds it in the logs"
        ),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise to the native error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unhandled)
