"""Where a client finds the gateway and its key when the caller names neither."""

from __future__ import annotations

import os

from ccgate.client.errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:8787"
URL_VARIABLE = "CCGATE_URL"
KEY_VARIABLE = "CCGATE_KEY"


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The base URL and API key to use: the arguments, else CCGATE_URL and CCGATE_KEY.

    The client is a library that runs inside the caller's application, not the server, so the
    server's rule of reading the environment only in ``ccgate.config`` does not bind it; it
    reads the two variables here and nowhere else.
    """
    url = base_url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
    key = api_key or os.environ.get(KEY_VARIABLE)
    if not key:
        raise ConfigurationError(f"no API key: pass api_key= or set {KEY_VARIABLE}")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base URL must start with http:// or https:// ({URL_VARIABLE})")
    return url.rstrip("/"), key
