"""``GET /v1/models``: one listing that both the Anthropic and the OpenAI SDKs parse.

Each entry carries the Anthropic fields (``type``, ``id``, ``display_name``, ``created_at``)
and the OpenAI ones (``object``, ``id``, ``created``, ``owned_by``); the page carries
``has_more``/``first_id``/``last_id`` and ``object: list``. Only models the calling key may
use are listed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.errors import ApiError
from ccgate.models import ListedModel, ModelPolicy
from ccgate.store import KeyRecord

router = APIRouter(prefix="/v1", tags=["models"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


def model_entry(model: ListedModel) -> dict[str, Any]:
    """One model in both SDKs' shapes."""
    created = int(datetime.fromisoformat(model.created_at.replace("Z", "+00:00")).timestamp())
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.display_name,
        "created_at": model.created_at,
        "object": "model",
        "created": created,
        "owned_by": "anthropic",
    }


@router.get("/models", summary="Models the calling key may use")
async def list_models(
    request: Request,
    key: CallerKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    after_id: Annotated[str | None, Query()] = None,
    before_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """The key's models; Anthropic-style paging with ``limit``/``after_id``/``before_id``."""
    policy: ModelPolicy = services_of(request).models
    models = policy.listing(key.policy.models)
    ids = [m.id for m in models]
    start, end = 0, len(models)
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(models)
    if before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
    page = models[start:end][:limit]
    has_more = start + len(page) < end
    data = [model_entry(m) for m in page]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/models/{model_id:path}", summary="One model the calling key may use")
async def get_model(request: Request, key: CallerKey, model_id: str) -> dict[str, Any]:
    """The model's entry, or 404 when the key may not use it."""
    policy: ModelPolicy = services_of(request).models
    for model in policy.listing(key.policy.models):
        if model.id == model_id:
            return model_entry(model)
    raise ApiError("not_found", f"model {model_id!r} not found")
