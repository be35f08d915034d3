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

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ccgate.errors import ApiError

router = APIRouter(tags=["console"], include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Route → page file in WEB_DIR. Each page loads its scripts and styles from /console/.
PAGES: dict[str, str] = {
    "/": "playground.html",
    "/admin": "admin.html",
}

CONTENT_SECURITY_POLICY = "; ".join((
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
))

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
    router.add_api_route(_path, _page_route(_file), methods=["GET", "HEAD"],
                         name=f"console:{_file}")


@router.api_route("/console/{name}", methods=["GET", "HEAD"], name="console:asset")
async def console_asset(request: Request, name: str) -> Response:
    """One static asset of the console (scripts, styles, images); no key needed."""
    match = _ASSET_NAME.fullmatch(name)
    media_type = ASSET_TYPES.get(match.group(1).lower()) if match else None
    if media_type is None:
        raise ApiError("not_found", f"no route {request.method} {request.url.path}")
    return console_response(request, WEB_DIR / name, media_type)
