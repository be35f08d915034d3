"""The native error shape and the handlers that make every failure use it."""

from __future__ import annotations

import json
import math

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ccgate.errors import ApiError

log = structlog.get_logger("ccgate.http")

_HTTP_STATUS_TYPES = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed",
                      413: "request_too_large"}


def request_id_of(request: Request) -> str:
    """The id the request-id middleware gave this request."""
    return str(request.scope.get("ccgate.request_id", ""))


def error_response(request_id: str, error: ApiError) -> JSONResponse:
    """Render ``error`` in the native shape with its status and headers."""
    body: dict[str, object] = {"type": error.error_type, "message": error.message,
                               "request_id": request_id}
    if error.param is not None:
        body["param"] = error.param
    body.update(error.extra)
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request_id_of(request), exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = _HTTP_STATUS_TYPES.get(exc.status_code, "invalid_request")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    response = error_response(request_id_of(request), ApiError(error_type, message))
    response.status_code = exc.status_code
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"{field}: {first.get('msg', 'invalid')}" if field else first.get("msg", "invalid")
    return error_response(request_id_of(request), ApiError("invalid_request", message,
                                                           param=field))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", request_id=request_id_of(request), path=request.url.path)
    return error_response(request_id_of(request), ApiError(
        "internal_error", "ccgate hit an internal error; the request id finds it in the logs"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise to the native error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
