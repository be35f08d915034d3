"""How doors reach the process's services: one typed dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from ccgate.services import Services


def services_of(request: Request) -> Services:
    """The services of the app serving ``request`` (built by its lifespan)."""
    services: Services = request.app.state.services
    return services


def app_services(app: FastAPI) -> Services:
    """The services of a running ``app`` (tests, the server's shutdown hook)."""
    services: Services = app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]
