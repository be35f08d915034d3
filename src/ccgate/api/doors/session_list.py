"""``/api/v1/sessions/{id}``: look at or end one of the caller's sessions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.errors import ApiError
from ccgate.jobs.views import iso
from ccgate.store import KeyRecord

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


@router.get("/{session_id}", summary="One of the caller's sessions, with its turns")
async def get_session(request: Request, key: CallerKey, session_id: str) -> dict[str, Any]:
    """The session's model, system prompt, turns and expiry; 404 for another key's."""
    session = await services_of(request).sessions.find(session_id, key.id)
    if session is None:
        raise ApiError("not_found", f"no session {session_id!r}")
    return {
        "session_id": session.id,
        "model": session.model,
        "system_prompt": session.system_prompt,
        "turns": session.turns,
        "messages": session.messages,
        "created_at": iso(session.created_at),
        "updated_at": iso(session.updated_at),
        "expires_at": iso(session.expires_at),
    }


@router.delete("/{session_id}", status_code=204, summary="Forget a session now")
async def delete_session(request: Request, key: CallerKey, session_id: str) -> Response:
    """Delete the session's stored turns; later jobs naming it get 404."""
    if not await services_of(request).store.sessions.delete(session_id, key_id=key.id):
        raise ApiError("not_found", f"no session {session_id!r}")
    return Response(status_code=204)
