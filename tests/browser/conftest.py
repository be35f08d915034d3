"""Browser fixtures: a real `ccgate serve` per test module, driven by Playwright on chromium.

What they offer:
  - ``console`` (module scope): a `Console` — a real `ccgate serve` process running the fast
    fake claude (tests/support/fake_claude.py, default scenario ``echo`` so a reply repeats
    its prompt; a first prompt line ``#fake: {"scenario": "slow", "text": "...", "chunks": 8,
    "delay": 0.2}`` scripts one run), with the admin API on (``console.admin_token``).
    ``console.create_key(name, **policy)`` makes an API key through the admin API and returns
    its secret; ``console.http(token)`` is an httpx client for direct API calls;
    ``with console.fake_replies("text", text="..."):`` scripts every run inside the block
    without a directive line in the prompt (handy for screenshots).
  - ``browser`` (module scope): Debian's chromium (/usr/bin/chromium, or
    CCGATE_TEST_CHROMIUM), launched headless with the flags that keep it off the network.
    Missing chromium or Playwright skips (and fails in CI, through ``service_missing``).
    Module, not session, scope: while Playwright's sync API is alive the thread counts as
    running an event loop, which would break every async test that runs after this folder.
    For the same reason the tests here are plain ``def`` tests, never ``async def``.
  - ``tab``: a fresh browser context and page at 1280x900 whose ``base_url`` is the console
    server; ``tab.requests`` lists every URL the page asked for, ``tab.problems`` every page
    error, console error and CSP violation. ``page`` is ``tab.page``.
  - ``open_tab(width, height)``: more tabs, e.g. a 390 px wide phone.
  - ``SCREENSHOT_DIR``: where the screenshot tests save their pictures: docs/console/ (the
    ones docs/console.md shows) with ``CCGATE_TEST_SCREENSHOTS=1``, else a temporary folder,
    so an ordinary test run leaves the work tree as it was.
  - ``assert_labelled_by_what_shows(page)``: every visible control's accessible name is its
    visible label; ``assert_rows_are_cards(page, table)``: on a phone, each row of the table
    is a card that fits the screen, every value beside its column's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import service_missing
from tests.support.fake_claude import CONFIG_NAME
from tests.support.fake_claude_factory import make_fake_claude
from tests.support.server import ServerProcess, fake_claude_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path(os.environ.get("CCGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking switches chromium keeps calling home, which a closed
# network answers slowly (or never).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = (
    Path(__file__).resolve().parents[2] / "docs" / "console"
    if os.environ.get("CCGATE_TEST_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "ccgate-console-screenshots"
)
HTTP_TIMEOUT_SECS = 30.0
DESKTOP = (1280, 900)
PHONE = (390, 844)

OpenTab = Callable[..., "Tab"]

# Everything a keyboard can reach.
CONTROLS = (
    "a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex='-1'])"
)
# The text a sighted person reads as a control's label, or "" when it has none on screen
# (an aria-label, a label that is hidden or off screen, nothing at all).
VISIBLE_LABEL_JS = """(node) => {
  const shown = (n) => Boolean(n) && n.checkVisibility() && !n.closest('.offscreen');
  const text = (n) => n.textContent.replace(/\\s+/g, ' ').trim();
  if (node.hasAttribute('aria-label')) return '';
  const ids = node.getAttribute('aria-labelledby');
  if (ids) {
    const parts = ids.split(/\\s+/).map((id) => document.getElementById(id));
    return parts.every(shown) ? parts.map(text).join(' ') : '';
  }
  if (node.labels && node.labels.length) return shown(node.labels[0]) ? text(node.labels[0]) : '';
  return node.tagName === 'BUTTON' || node.tagName === 'A' ? text(node) : '';
}"""
# Per body row, the column name each cell shows before its value (CSS content, "none" for the
# cell holding a row's buttons), plus how far the table and its rows stick out.
CARD_LAYOUT_JS = """(table) => ({
  heads: [...table.tHead.rows[0].cells].map((cell) => cell.textContent.trim()),
  rows: [...table.tBodies[0].rows].map((row) => [...row.cells].map(
    (cell) => getComputedStyle(cell, '::before').content)),
  overflow: table.parentElement.scrollWidth - table.parentElement.clientWidth,
  right: Math.max(0, ...[...table.tBodies[0].rows].map((row) => row.getBoundingClientRect().right)),
  viewport: window.innerWidth,
})"""


@dataclass
class Console:
    """A running `ccgate serve` for browser tests, with its admin token."""

    server: ServerProcess
    admin_token: str
    fake_config: Path

    @property
    def url(self) -> str:
        """The server's base URL (always on 127.0.0.1)."""
        return self.server.url

    def http(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for the server sending ``token`` as a bearer; close it after use."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_SECS)

    @contextlib.contextmanager
    def fake_replies(self, scenario: str, **params: Any) -> Iterator[None]:
        """Within the block every run without a ``#fake:`` line follows ``scenario``."""
        before = self.fake_config.read_text(encoding="utf-8")
        self.fake_config.write_text(json.dumps({"scenario": scenario, **params}), encoding="utf-8")
        try:
            yield
        finally:
            self.fake_config.write_text(before, encoding="utf-8")

    def create_key(self, name: str | None = None, **policy: Any) -> str:
        """Create an API key (a fresh name unless given) through the admin API; its secret."""
        body = {"name": name or f"browser-{secrets.token_hex(4)}", **policy}
        with self.http(self.admin_token) as client:
            response = client.post("/admin/keys", json=body)
        assert response.status_code == 201, response.text
        secret = response.json()["key"]
        assert isinstance(secret, str)
        return secret


@dataclass
class Tab:
    """One browser page with everything it requested and every problem it reported."""

    page: Page
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def watch(self) -> Tab:
        """Start recording requests, page errors, console errors and CSP violations."""
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        self.page.on("console", self._console)
        return self

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium under Playwright, shared by the tests of one module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        service_missing(
            f"chromium not found at {CHROMIUM}: apt-get install chromium "
            "(scripts/test.sh does it when run as root)"
        )
    driver = sync_playwright().start()
    try:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()
    finally:
        driver.stop()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """One real `ccgate serve` with the fake claude and the admin API, per test module."""
    root = tmp_path_factory.mktemp("console")
    admin_token = "console-admin-" + secrets.token_hex(16)
    claude = make_fake_claude(root / "fake-claude", "echo")
    env = fake_claude_env(root, claude, admin_token)
    server = ServerProcess(env, root / "server").start()
    try:
        yield Console(server, admin_token, claude.with_name(CONFIG_NAME))
    finally:
        server.stop()
        # pytest shows this only when a test failed.
        print(f"--- log of ccgate serve in {server.cwd} ---\n{server.log_text()}")


@pytest.fixture
def open_tab(browser: Browser, console: Console) -> Iterator[OpenTab]:
    """Factory: ``open_tab(width=1280, height=900)`` opens a fresh context and page."""
    contexts = []

    def open_one(width: int = DESKTOP[0], height: int = DESKTOP[1]) -> Tab:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            base_url=console.url,
            service_workers="block",
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        return Tab(context.new_page()).watch()

    yield open_one
    for context in contexts:
        context.close()


@pytest.fixture
def tab(open_tab: OpenTab) -> Tab:
    """A fresh desktop-sized tab on the console server."""
    return open_tab()


@pytest.fixture
def page(tab: Tab) -> Page:
    """The page of ``tab``."""
    return tab.page


def assert_labelled_by_what_shows(page: Page) -> int:
    """Assert every visible control's accessible name is the label shown for it; how many."""
    from playwright.sync_api import expect

    controls = page.locator(CONTROLS)
    checked = 0
    for index in range(controls.count()):
        control = controls.nth(index)
        if not control.is_visible():
            continue
        label = control.evaluate(VISIBLE_LABEL_JS)
        assert label, "no visible label: " + control.evaluate("n => n.outerHTML.slice(0, 160)")
        expect(control).to_have_accessible_name(label)
        checked += 1
    return checked


def assert_rows_are_cards(page: Page, table: str) -> None:
    """Assert the table named ``table`` shows each row as a card: nothing sticks out of the
    screen or scrolls sideways, and every value follows its column's name."""
    layout = page.get_by_role("table", name=table).evaluate(CARD_LAYOUT_JS)
    assert layout["rows"], f"table {table} has no rows"
    assert layout["overflow"] <= 0, f"table {table} scrolls sideways by {layout['overflow']} px"
    assert layout["right"] <= layout["viewport"], f"a row of {table} sticks out of the screen"
    heads = layout["heads"]
    for row in layout["rows"]:
        if len(row) == 1 and len(heads) > 1:
            continue  # a note spanning the table ("No jobs yet.")
        assert row[0] == json.dumps(heads[0]), (table, row)
        for head, shown in zip(heads, row, strict=True):
            assert shown in (json.dumps(head), "none"), (table, head, shown)
