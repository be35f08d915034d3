"""The files door: ``/api/v1/files`` stores uploads for a while; runs attach them by token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ccgate.api.attachments import UPLOAD_OPENAPI, file_view, owned_file, store_upload
from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.store import KeyRecord

router = APIRouter(prefix="/api/v1/files", tags=["files"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


@router.post(
    "",
    status_code=201,
    summary="Upload a file to attach to later runs",
    openapi_extra=UPLOAD_OPENAPI,
)
async def upload_file(request: Request, key: CallerKey) -> JSONResponse:
    """Store one file (multipart field ``file``, optional ``ttl_secs``); 201 with its token."""
    return JSONResponse(await store_upload(request, key), status_code=201)


@router.get("/{token}", summary="A file's metadata (never its content)")
async def get_file(request: Request, key: CallerKey, token: str) -> dict[str, Any]:
    """Name, type, size and expiry of one of the caller's files."""
    return file_view(await owned_file(request, key, token))


@router.delete("/{token}", status_code=204, summary="Delete a file before it expires")
async def delete_file(request: Request, key: CallerKey, token: str) -> Response:
    """Remove one of the caller's files; runs already submitted keep their copy."""
    await owned_file(request, key, token)
    await services_of(request).store.files.delete(token, key_id=key.id)
    return Response(status_code=204)
