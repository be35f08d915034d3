"""How doors reach the process's services: one typed dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from starlette.types import Scope

from ccgate.services import Services

_IN_SCOPE = "ccgate.services"


def services_of(request: Request) -> Services:
    """The services of the app serving ``request`` (built by its lifespan)."""
    return services_in(request.scope)


def services_in(scope: Scope) -> Services:
    """The services of the app serving the request of ``scope``, looked up once per request
    (``app.state``'s attribute lookup is a failed one before its ``__getattr__``, and a
    request asks a dozen times)."""
    services: Services | None = scope.get(_IN_SCOPE)
    if services is None:
        services = scope[_IN_SCOPE] = scope["app"].state.services
    return services


def app_services(app: FastAPI) -> Services:
    """The services of a running ``app`` (tests, the server's shutdown hook)."""
    services: Services = app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]
