"""``POST /v1/fetch`` against a real test site on loopback, with the guard on every hop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import structlog

from ccgate import fetcher as fetcher_module
from ccgate.api.deps import app_services
from ccgate.fetcher import Fetcher, UpstreamFailed
from ccgate.security import netguard
from ccgate.security.netguard import OutboundGuard
from tests.integration.conftest import Gateway

PAGE = (
    b"<!DOCTYPE html><html><head><title>Test</title><style>body{margin:0}</style>"
    b'<script src="/app.js"></script><script>track("visit")</script>'
    b'<script type="application/ld+json">{"@type":"Article","headline":"Hi"}</script>'
    b"</head><body><!-- secret build note --><h1>Hello &amp; welcome</h1>"
    b'<svg width="10"><circle r="4"/></svg><noscript>enable js</noscript>'
    b"<p>Body text.</p></body></html>"
)
HTML = "text/html; charset=utf-8"
Route = tuple[int, dict[str, str], bytes]


@dataclass
class Site:
    """A threaded stdlib HTTP server that answers scripted routes and records every path."""

    host: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this site."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}{path}"

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        """Make ``path`` redirect to ``location``."""
        self.routes[path] = (status, {"Location": location}, b"")


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(self.path)
            if self.path == "/slow":
                site.release.wait(5)
            status, headers, body = site.routes.get(self.path, (404, {}, b"<p>no page</p>"))
            self.send_response(status)
            for name, value in {"Content-Type": HTML, **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    return Handler


@pytest.fixture
def site_factory() -> Iterator[Callable[[str], Site]]:
    """Start test sites on a loopback address; all stop at the end."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread, Site]] = []

    def start(host: str = "127.0.0.1") -> Site:
        site = Site(host)
        server_class = type(
            "Server",
            (ThreadingHTTPServer,),
            {
                "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
                "daemon_threads": True,
            },
        )
        server = server_class((host, 0), _handler(site))
        site.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread, site))
        return site

    yield start
    for server, thread, site in running:
        site.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def site(site_factory: Callable[[str], Site]) -> Site:
    """A test site on 127.0.0.1 serving PAGE at /page."""
    started = site_factory("127.0.0.1")
    started.routes["/page"] = (200, {}, PAGE)
    return started


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    """A gateway with fetching on and 127.0.0.1 (the test site) allowed."""
    started: Gateway = await gateway_factory(
        CCGATE_FETCH_ENABLED="true", CCGATE_OUTBOUND_ALLOW="127.0.0.1"
    )
    return started


async def _fetch(gateway: Gateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await gateway.client.post("/v1/fetch", json=body, headers=headers or gateway.auth())


async def test_fetch_returns_page_without_scripts_styles_svg_or_comments(
    gateway: Gateway, site: Site
) -> None:
    """By default the page comes back stripped, with its JSON-LD still in it."""
    response = await _fetch(gateway, {"url": site.url("/page")})
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is True and data["status"] == 200 and data["truncated"] is False
    assert data["final_url"] == site.url("/page")
    html = data["html"]
    assert '{"@type":"Article","headline":"Hi"}' in html
    assert "<h1>Hello &amp; welcome</h1>" in html and "<p>Body text.</p>" in html
    for gone in ("track(", "app.js", "margin:0", "secret build note", "<svg", "enable js"):
        assert gone not in html


async def test_fetch_strip_false_returns_the_page_as_served(gateway: Gateway, site: Site) -> None:
    """``strip: false`` returns the raw markup, byte for byte."""
    response = await _fetch(gateway, {"url": site.url("/page"), "strip": False})
    assert response.status_code == 200
    assert response.json()["html"] == PAGE.decode()


async def test_fetch_follows_redirects_within_the_site(gateway: Gateway, site: Site) -> None:
    """Relative and absolute redirects are followed and final_url names the last hop."""
    site.redirect("/old", "/moved?x=1")
    site.redirect("/moved?x=1", site.url("/page"), status=301)
    response = await _fetch(gateway, {"url": site.url("/old")})
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is True
    assert data["final_url"] == site.url("/page")
    assert site.requests == ["/old", "/moved?x=1", "/page"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "not a public address"),
        ("http://10.0.0.1/admin", "not a public address"),
        ("http://localhost/", "localhost"),
        ("ftp://files.example.com/data", "only http and https"),
    ],
)
async def test_fetch_refuses_a_redirect_to_a_blocked_address_at_that_hop(
    gateway: Gateway, site: Site, location: str, reason: str
) -> None:
    """A redirect into the metadata service or a private network is a 403 naming the hop."""
    site.redirect("/start", "/next")
    site.redirect("/next", location)
    response = await _fetch(gateway, {"url": site.url("/start")})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "destination_blocked"
    assert f"redirect 2 ({location}" in error["message"] and reason in error["message"]
    assert site.requests == ["/start", "/next"]


async def test_fetch_never_connects_to_a_blocked_ipv6_loopback_hop(
    gateway: Gateway, site: Site, site_factory: Callable[[str], Site]
) -> None:
    """A redirect to [::1] is refused before connecting: the server there sees nothing."""
    try:
        hidden = site_factory("::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback to listen on")
    hidden.routes["/internal"] = (200, {}, b"<p>internal secrets</p>")
    site.redirect("/go", hidden.url("/internal"))
    response = await _fetch(gateway, {"url": site.url("/go")})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "destination_blocked"
    assert "redirect 1" in error["message"] and "not a public address" in error["message"]
    assert hidden.requests == []


async def test_fetch_never_says_what_a_blocked_name_resolved_to(
    gateway: Gateway, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirect to a name that resolves to a private address is a 403 saying only "not a
    public address": the client never learns the address; the server log keeps it."""

    async def intranet_dns(host: str, port: int) -> list[str]:
        return ["10.9.8.7"] if host == "intranet.test" else ["127.0.0.1"]

    monkeypatch.setattr(netguard, "_getaddrinfo", intranet_dns)
    site.redirect("/go", "http://intranet.test/wiki")
    with structlog.testing.capture_logs() as logs:
        response = await _fetch(gateway, {"url": site.url("/go")})
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert message == "redirect 1 (http://intranet.test/wiki) is blocked: not a public address"
    [blocked] = [e for e in logs if e["event"] == "fetch_blocked"]
    assert blocked["detail"] == "10.9.8.7: private address"


async def test_fetch_refuses_a_loopback_url_unless_allowed(
    gateway_factory: Callable[..., Any], site: Site
) -> None:
    """Without CCGATE_OUTBOUND_ALLOW the loopback site itself is blocked, unasked."""
    gateway = await gateway_factory(CCGATE_FETCH_ENABLED="true")
    response = await _fetch(gateway, {"url": site.url("/page")})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "destination_blocked" and error["param"] == "url"
    assert error["message"].startswith("the URL (")
    assert site.requests == []


async def test_fetch_stops_after_five_redirects(gateway: Gateway, site: Site) -> None:
    """A redirect loop ends in a 502 upstream_error after the sixth request."""
    for n in range(10):
        site.redirect(f"/loop/{n}", f"/loop/{n + 1}")
    response = await _fetch(gateway, {"url": site.url("/loop/0")})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "more than 5 times" in error["message"]
    assert len(site.requests) == 6


async def test_fetch_truncates_the_body_at_max_bytes(gateway: Gateway, site: Site) -> None:
    """Only max_bytes of a larger body are read, and truncated says so."""
    site.routes["/big"] = (200, {}, b"<p>" + b"x" * 5000 + b"</p>")
    response = await _fetch(gateway, {"url": site.url("/big"), "max_bytes": 1000, "strip": False})
    data = response.json()
    assert data["ok"] is True and data["truncated"] is True
    assert len(data["html"]) == 1000
    whole = await _fetch(gateway, {"url": site.url("/big"), "max_bytes": 5007})
    assert whole.json()["truncated"] is False


async def test_fetch_cut_inside_a_character_drops_the_partial_character(
    gateway: Gateway, site: Site
) -> None:
    """A cut through a multi-byte character leaves no replacement character behind."""
    site.routes["/utf8"] = (200, {}, "€€€".encode())
    response = await _fetch(gateway, {"url": site.url("/utf8"), "max_bytes": 4})
    data = response.json()
    assert data["truncated"] is True
    assert data["html"] == "€"


async def test_fetch_upstream_error_page_is_returned_with_ok_false(
    gateway: Gateway, site: Site
) -> None:
    """A 404 from the site is not a gateway error: ok is false, status and body are there."""
    response = await _fetch(gateway, {"url": site.url("/nowhere")})
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is False and data["status"] == 404
    assert data["html"] == "<p>no page</p>"
    assert data["message"] == "the page answered HTTP 404"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html; charset=ISO-8859-1", "<p>café</p>".encode("latin-1")),
        ("text/html", '<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251")),
        (
            "text/html",
            '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">'
            "<p>Привет</p>".encode("koi8-r"),
        ),
        ("text/html; charset=no-such-charset", "<p>café</p>".encode()),
        ("text/html; charset=base64", "<p>café</p>".encode()),
    ],
)
async def test_fetch_decodes_with_the_declared_charset(
    gateway: Gateway, site: Site, content_type: str, body: bytes
) -> None:
    """The Content-Type charset, then a meta tag, then UTF-8 decide how bytes become text."""
    site.routes["/text"] = (200, {"Content-Type": content_type}, body)
    response = await _fetch(gateway, {"url": site.url("/text")})
    html = response.json()["html"]
    assert "café" in html or "Привет" in html


async def test_fetch_returns_json_and_plain_text_unstripped(gateway: Gateway, site: Site) -> None:
    """Non-HTML text (JSON, text/plain) comes back as it is, even with strip on."""
    site.routes["/data"] = (200, {"Content-Type": "application/json"}, b'{"a": "<script>"}')
    site.routes["/notes"] = (200, {"Content-Type": "text/plain"}, b"<!-- kept -->")
    data = (await _fetch(gateway, {"url": site.url("/data")})).json()
    assert data["ok"] is True and data["content_type"] == "application/json"
    assert data["html"] == '{"a": "<script>"}'
    notes = (await _fetch(gateway, {"url": site.url("/notes")})).json()
    assert notes["html"] == "<!-- kept -->"


async def test_fetch_binary_content_is_not_returned(gateway: Gateway, site: Site) -> None:
    """An image answers ok false with a message saying only text is returned."""
    site.routes["/logo.png"] = (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n")
    response = await _fetch(gateway, {"url": site.url("/logo.png")})
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is False and data["status"] == 200 and data["html"] == ""
    assert "image/png, not text" in data["message"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://no-such-host.invalid/", "did not resolve"),
        (None, "connection failed"),
    ],
)
async def test_fetch_unreachable_host_is_a_502(
    gateway: Gateway, url: str | None, says: str
) -> None:
    """An unknown name or a refused connection is 502 upstream_error, never a 500."""
    target = url or f"http://127.0.0.1:{_closed_port()}/"
    response = await _fetch(gateway, {"url": target})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert says in error["message"]


async def test_fetch_gives_up_at_its_time_limit(site: Site) -> None:
    """A page slower than the fetch time limit fails with a clear upstream message."""
    site.routes["/slow"] = (200, {}, b"<p>late</p>")
    fetcher = Fetcher(OutboundGuard(("127.0.0.1",)), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamFailed, match=r"did not answer within 0\.3 s"):
        await fetcher.fetch(site.url("/slow"))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "url"),
        ({"url": "ftp://example.com/file"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://user:secret@example.com/"}, "url"),
        ({"url": "https://example.com/" + "a" * 2048}, "url"),
        ({"url": "https://example.com/", "max_bytes": 0}, "max_bytes"),
        ({"url": "https://example.com/", "max_bytes": 2_097_153}, "max_bytes"),
        ({"url": "https://example.com/", "max_bytes": "1000"}, "max_bytes"),
        ({"url": "https://example.com/", "strip": "no"}, "strip"),
        ({"url": "https://example.com/", "follow": True}, "follow"),
    ],
)
async def test_fetch_rejects_bad_input(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    """Missing or bad fields and unknown ones are 400 invalid_request naming the field."""
    response = await _fetch(gateway, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["param"] == param


async def test_fetch_is_off_by_default(gateway_factory: Callable[..., Any], site: Site) -> None:
    """Without CCGATE_FETCH_ENABLED the route is 404 feature_disabled, key or no key."""
    gateway = await gateway_factory(CCGATE_OUTBOUND_ALLOW="127.0.0.1")
    no_key: dict[str, str] = {}
    for headers in (gateway.auth(), no_key):
        response = await gateway.client.post(
            "/v1/fetch", json={"url": site.url("/page")}, headers=headers
        )
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["type"] == "feature_disabled"
        assert "CCGATE_FETCH_ENABLED=true" in error["message"]
    assert site.requests == []


async def test_fetch_needs_an_api_key(gateway: Gateway, site: Site) -> None:
    """A call without a key, or with a wrong one, is 401 and fetches nothing."""
    for headers in ({"X-Other": "1"}, {"Authorization": "Bearer ccg_wrong"}):
        response = await _fetch(gateway, {"url": site.url("/page")}, **headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert site.requests == []


async def test_fetch_has_its_own_per_key_bucket(
    gateway_factory: Callable[..., Any], site: Site
) -> None:
    """Past CCGATE_FETCH_RPM a key gets 429 fetch_rpm_exceeded with Retry-After, unfetched."""
    gateway = await gateway_factory(
        CCGATE_FETCH_ENABLED="true", CCGATE_FETCH_RPM="2", CCGATE_OUTBOUND_ALLOW="127.0.0.1"
    )
    for _ in range(2):
        assert (await _fetch(gateway, {"url": site.url("/page")})).status_code == 200
    response = await _fetch(gateway, {"url": site.url("/page")})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "fetch_rpm_exceeded"
    assert int(response.headers["retry-after"]) >= 1
    assert site.requests == ["/page", "/page"]
    other = (await app_services(gateway.app).keyring.create("other")).secret
    again = await _fetch(gateway, {"url": site.url("/page")}, Authorization=f"Bearer {other}")
    assert again.status_code == 200


async def test_fetch_audit_row_has_sizes_not_page_content(gateway: Gateway, site: Site) -> None:
    """The audit row records the route and the size returned; no job is run."""
    response = await _fetch(gateway, {"url": site.url("/page")})
    assert response.status_code == 200
    await app_services(gateway.app).audit.flush()
    rows = await app_services(gateway.app).store.audit.recent()
    row = next(r for r in rows if r["route"] == "/v1/fetch")
    assert row["http_status"] == 200
    assert row["response_bytes"] == len(response.json()["html"].encode())
    assert row["job_id"] is None and row["prompt_text"] is None
    assert "Body text" not in repr(row)


async def test_fetch_crafted_page_strips_without_stalling_the_server(
    gateway: Gateway, site: Site
) -> None:
    """A 48 KB page of unclosed tags comes back stripped while the event loop keeps ticking."""
    site.routes["/crafted"] = (200, {}, b"<p>kept</p>" + b"<a " * 16_000)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        response = await _fetch(gateway, {"url": site.url("/crafted")})
    finally:
        ticker.cancel()
    assert response.status_code == 200
    assert response.json()["html"] == "<p>kept</p>"
    assert max(gaps, default=0) < 0.5


async def test_fetch_page_too_slow_to_strip_is_502_with_advice(
    gateway: Gateway, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the strip time limit the fetch answers 502 upstream_error saying how to get the
    page anyway; with ``strip: false`` it comes back whole."""
    monkeypatch.setattr(fetcher_module, "STRIP_TIME_LIMIT_SECS", 0.0)
    page = b"<p>x</p>" * 5_000
    site.routes["/slow-to-strip"] = (200, {}, page)
    response = await _fetch(gateway, {"url": site.url("/slow-to-strip")})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "could not be stripped within 0 s" in error["message"]
    assert '"strip": false' in error["message"]
    whole = await _fetch(gateway, {"url": site.url("/slow-to-strip"), "strip": False})
    assert whole.status_code == 200 and whole.json()["html"] == page.decode()
