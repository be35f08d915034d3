"""The web console: its pages and static assets, shipped inside the package (``ccgate/web``).

Pages and assets need no key (the pages ask for one and keep it in the tab), are never audited
or rate-limited, and carry strict security headers: the Content-Security-Policy lets a page run
only scripts and styles from this server and talk only to this server, so a model's answer that
slipped into the DOM as HTML still could not run or send anything anywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

from ccgate.errors import ApiError

router = APIRouter(tags=["console"], include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Route → page file in WEB_DIR. Each page loads its scripts and styles from /console/.
PAGES: dict[str, str] = {
    "/": "playground.html",
    "/admin": "admin.html",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    # Revalidate every time (the ETag makes that cheap), so an upgrade shows at once.
    "Cache-Control": "no-cache",
}

ASSET_TYPES: dict[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)")


def console_response(request: Request, file: Path, media_type: str) -> Response:
    """``file`` with the console's security headers and an ETag (304 when it still matches)."""
    try:
        body = file.read_bytes()
    except OSError:
        raise ApiError("not_found", f"no route {request.method} {request.url.path}") from None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**SECURITY_HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    content = b"" if request.method == "HEAD" else body
    response = Response(content=content, media_type=media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["content-length"] = str(len(body))
    return response


def _page_route(file_name: str) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        return console_response(request, WEB_DIR / file_name, "text/html; charset=utf-8")

    page.__doc__ = f"The console page {file_name}."
    return page


for _path, _file in PAGES.items():
    router.add_api_route(
        _path, _page_route(_file), methods=["GET", "HEAD"], name=f"console:{_file}"
    )


@router.api_route("/console/{name}", methods=["GET", "HEAD"], name="console:asset")
async def console_asset(request: Request, name: str) -> Response:
    """One static asset of the console (scripts, styles, images); no key needed."""
    match = _ASSET_NAME.fullmatch(name)
    media_type = ASSET_TYPES.get(match.group(1).lower()) if match else None
    if media_type is None:
        raise ApiError("not_found", f"no route {request.method} {request.url.path}")
    return console_response(request, WEB_DIR / name, media_type)


# The API docs (Swagger UI) come from a copy shipped as a Python package, never from a CDN:
# the console must work air-gapped and a page on this origin must load nothing from elsewhere.
SWAGGER_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
SWAGGER_ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
# Swagger UI starts itself with an inline script, so its page allows that one thing more.
DOCS_SECURITY_HEADERS: dict[str, str] = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY.replace(
        "script-src 'self'", "script-src 'self' 'unsafe-inline'"
    )
    .replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    .replace("img-src 'self'", "img-src 'self' data:"),
}


@router.get("/docs", name="console:api-docs")
async def api_docs() -> Response:
    """Swagger UI for ``/openapi.json``, with every asset served by this server."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="ccgate API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/console/favicon.svg",
        # No validator badge: it would fetch an image from the validator's own server.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(DOCS_SECURITY_HEADERS)
    return page


@router.api_route("/docs/assets/{name}", methods=["GET", "HEAD"], name="console:api-docs-asset")
async def api_docs_asset(request: Request, name: str) -> Response:
    """One of Swagger UI's two files."""
    media_type = SWAGGER_ASSETS.get(name)
    if media_type is None:
        raise ApiError("not_found", f"no route {request.method} {request.url.path}")
    return console_response(request, SWAGGER_DIR / name, media_type)
