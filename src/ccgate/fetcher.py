"""Fetch one public page through the outbound guard, checking every redirect hop.

Redirects are followed here, by hand, so that each Location is resolved and checked by
``OutboundGuard`` before anything connects to it. The body is read up to a byte limit and
decoded with the charset the response or the page declares.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import re
import ssl
import time
from dataclasses import dataclass

import httpx

from ccgate import __version__
from ccgate.htmlstrip import StripAborted, strip_html
from ccgate.security.netguard import BlockedDestination, OutboundGuard

DEFAULT_MAX_BYTES = 512_000
MAX_BYTES_LIMIT = 2_097_152
MAX_REDIRECTS = 5
FETCH_TIMEOUT_SECS = 10.0
# Stripping a page (in a worker thread) stops after this; a fair 2 MB page takes well under.
STRIP_TIME_LIMIT_SECS = 3.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES = frozenset({"", "text/html", "application/xhtml+xml"})
_HEADERS = {
    "User-Agent": f"ccgate-fetch/{__version__}",
    "Accept": "text/html,application/xhtml+xml,text/*;q=0.9,application/json;q=0.9,*/*;q=0.5",
    # Compressed bodies could inflate far past max_bytes before the cap sees them.
    "Accept-Encoding": "identity",
}
# Possessive and stopping at the next tag, so hostile bytes cost linear time.
_META_CHARSET = re.compile(rb"""<meta[^<>]*?charset\s*+=\s*+["']?+\s*+([a-z0-9_.:-]++)""", re.I)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Labels browsers read differently from Python's codec of the same name.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
}


class FetchError(Exception):
    """A fetch that produced no page; ``str()`` is a message for the caller."""


class HopBlocked(FetchError):
    """A URL, or the Location of a redirect, that the outbound guard refused.

    ``str()`` never names the address a host resolved to; ``detail`` does, for the log.
    """

    def __init__(self, url: str, hop: int, reason: str, detail: str | None = None) -> None:
        where = "the URL" if hop == 0 else f"redirect {hop}"
        super().__init__(f"{where} ({url}) is blocked: {reason}")
        self.url = url
        self.hop = hop
        self.detail = detail or reason


class PageNotStripped(FetchError):
    """The page was fetched, but could not be stripped within its time limit."""


class UpstreamFailed(FetchError):
    """The page could not be fetched: no such host, refused, timed out, too many redirects."""


@dataclass(frozen=True)
class Page:
    """What the last hop answered; ``text`` is None for a body that is not text."""

    status: int
    final_url: str
    content_type: str
    text: str | None
    truncated: bool
    redirects: int
    body_bytes: int

    @property
    def is_html(self) -> bool:
        """Whether the page is HTML (or sent no Content-Type at all)."""
        return self.content_type in _HTML_TYPES


class Fetcher:
    """GETs pages through an OutboundGuard, one checked hop at a time."""

    def __init__(
        self,
        guard: OutboundGuard,
        *,
        timeout: float = FETCH_TIMEOUT_SECS,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        """``timeout`` bounds a whole fetch: every lookup, connect, redirect and read."""
        self.guard = guard
        self.timeout = timeout
        self.max_redirects = max_redirects

    async def fetch(self, url: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Page:
        """Fetch ``url``, following up to ``max_redirects`` redirects, each checked first."""
        # trust_env=False: only config.py reads os.environ, so no proxy or CA variables.
        async with httpx.AsyncClient(
            trust_env=False, verify=_tls_context(), timeout=self.timeout
        ) as client:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._follow(client, url, max_bytes)
            except (TimeoutError, httpx.TimeoutException):
                raise UpstreamFailed(f"the page did not answer within {self.timeout:g} s") from None

    async def _follow(self, client: httpx.AsyncClient, url: str, max_bytes: int) -> Page:
        for hop in range(self.max_redirects + 1):
            try:
                async with self.guard.open_get(client, url, headers=_HEADERS) as response:
                    location = response.headers.get("location", "").strip()
                    if response.status_code not in _REDIRECT_STATUSES or not location:
                        return await _read_page(response, url, hop, max_bytes)
            except BlockedDestination as exc:
                raise HopBlocked(url, hop, exc.reason, exc.detail) from None
            except (TimeoutError, httpx.TimeoutException):
                raise
            except OSError as exc:
                raise UpstreamFailed(f"{_host_of(url)} did not resolve: {exc}") from None
            except httpx.HTTPError as exc:
                raise UpstreamFailed(f"could not fetch {_host_of(url)}: {_describe(exc)}") from None
            try:
                url = str(httpx.URL(url).join(location))
            except (httpx.InvalidURL, ValueError):
                raise UpstreamFailed(
                    f"redirect {hop + 1} has an unusable Location header"
                ) from None
        raise UpstreamFailed(
            f"the page redirected more than {self.max_redirects} times (last Location: {url})"
        )


async def _read_page(response: httpx.Response, url: str, hops: int, max_bytes: int) -> Page:
    header = response.headers.get("content-type", "")
    media_type = header.split(";", 1)[0].strip().lower()
    if not _is_text(media_type):
        return Page(response.status_code, url, media_type, None, False, hops, 0)
    body, truncated = await _read_up_to(response, max_bytes)
    text = decode(body, header, sniff_meta=media_type in _HTML_TYPES, final=not truncated)
    return Page(response.status_code, url, media_type, text, truncated, hops, len(body))


async def render_page(page: Page, *, strip: bool) -> str:
    """The page's text for the caller: HTML stripped when asked, other text unchanged.

    Stripping runs in a worker thread and stops itself after ``STRIP_TIME_LIMIT_SECS``
    (PageNotStripped), so a page built to be slow to parse never holds the event loop.
    """
    if page.text is None:
        return ""
    if not (strip and page.is_html):
        return page.text
    time_limit = STRIP_TIME_LIMIT_SECS
    deadline = time.monotonic() + time_limit
    try:
        return await asyncio.to_thread(strip_html, page.text, deadline=deadline)
    except StripAborted as exc:
        why = f"within {time_limit:g} s" if exc.timed_out else f"({exc})"
        raise PageNotStripped(
            f"the page could not be stripped {why}; fetch it with "
            '"strip": false or a smaller max_bytes'
        ) from None


def _is_text(media_type: str) -> bool:
    return (
        media_type in _HTML_TYPES
        or media_type.startswith("text/")
        or media_type in ("application/json", "application/xml")
        or media_type.endswith(("+json", "+xml"))
    )


async def _read_up_to(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether more was there."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def decode(body: bytes, content_type: str, *, sniff_meta: bool, final: bool = True) -> str:
    """Decode ``body``: BOM, then the Content-Type charset, then ``<meta>``, then UTF-8.

    Undecodable bytes become U+FFFD. With ``final=False`` (a cut body) a character split
    by the cut is dropped instead.
    """
    charset = next((name for bom, name in _BOMS if body.startswith(bom)), None)
    charset = charset or _usable(_header_charset(content_type))
    if charset is None and sniff_meta:
        found = _META_CHARSET.search(body[:4096])
        meta = _usable(found.group(1).decode("ascii") if found else None)
        # A <meta> readable as ASCII rules out UTF-16/32, whatever it says.
        charset = None if meta and meta.startswith(("utf_16", "utf_32")) else meta
    decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    return decoder.decode(body, final=final)


def _header_charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'")
    return None


def _usable(label: str | None) -> str | None:
    """The Python codec for a charset label, or None when unknown or not a text encoding."""
    if not label:
        return None
    label = _CHARSET_ALIASES.get(label.lower(), label)
    try:
        # Refuses bytes-to-bytes codecs such as base64 (empty input would skip the check).
        b"a".decode(label, errors="replace")
        return codecs.lookup(label).name.replace("-", "_")
    except (LookupError, ValueError):
        return None


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).host or url
    except (httpx.InvalidURL, ValueError):
        return url


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({exc or 'refused'})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every fetch (loading the CA bundle is slow)."""
    return httpx.create_ssl_context()
