"""The OpenAI Responses door (``/v1/responses``), one door in four modules: ``routes`` (the
endpoints, stored responses), ``request`` (parsing), ``render`` (the Response and its stream)
and ``tools`` (function tools through the pass-through, API backend only)."""

from __future__ import annotations

from ccgate.api.doors.responses.routes import router

__all__ = ["router"]
