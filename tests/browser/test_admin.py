"""The admin pages at `/admin`, driven in headless chromium against a real `ccgate serve`."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console, OpenTab, Tab, assert_labelled_by_what_shows
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, Locator, Page

HOSTILE = "<img src=x onerror=alert(1)>"


def sign_in(tab: Tab, console: Console, section: str = "keys") -> Page:
    """Open `/admin#section`, sign in with the admin token and wait for the Keys table."""
    page = tab.page
    page.goto(f"/admin#{section}")
    page.get_by_label("Admin token").fill(console.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


def problems(tab: Tab) -> list[str]:
    """The tab's page errors and CSP violations; not the console lines chromium writes for
    every error answer (the page asks /admin/status without a token to learn whether the
    admin API is on, and a wrong token is a 401)."""
    return [p for p in tab.problems if "Failed to load resource" not in p]


def key_row(page: Page, name: str) -> Locator:
    """The row of the Keys table whose name cell is exactly `name`."""
    table = page.get_by_role("table", name="Keys")
    return table.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name, exact=True))


def api_key(console: Console, name: str) -> dict[str, Any]:
    """The key `name` as the admin API shows it."""
    with console.http(console.admin_token) as client:
        key: dict[str, Any] = client.get(f"/admin/keys/{name}").json()
    return key


def wait_for_audit(console: Console, key: str, rows: int) -> None:
    """Wait until the audit log holds `rows` rows of `key` (rows are written in batches)."""
    deadline = time.monotonic() + 10
    with console.http(console.admin_token) as client:
        while time.monotonic() < deadline:
            found = client.get("/admin/audit", params={"key": key, "limit": 1000}).json()
            if len(found["data"]) >= rows:
                return
            time.sleep(0.05)
    raise AssertionError(f"the audit log never held {rows} rows of {key}")


@pytest.fixture(scope="module")
def admin_off(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second `ccgate serve` like the console's but without CCGATE_ADMIN_TOKEN; its URL."""
    root = tmp_path_factory.mktemp("admin-off")
    env = {
        name: value for name, value in console.server.env.items() if name != "CCGATE_ADMIN_TOKEN"
    }
    env["CCGATE_DATABASE_URL"] = f"sqlite:///{root / 'ccgate.db'}"
    server = ServerProcess(env, root).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_admin_page_says_how_to_turn_the_admin_api_on(open_tab: OpenTab, admin_off: str) -> None:
    """Without CCGATE_ADMIN_TOKEN the page says the admin API is off and how to turn it on,
    and offers no sign-in."""
    tab = open_tab()
    tab.page.goto(f"{admin_off}/admin")
    expect(tab.page.get_by_role("heading", name="The admin API is off")).to_be_visible()
    expect(
        tab.page.get_by_text('export CCGATE_ADMIN_TOKEN="$(openssl rand -hex 32)"')
    ).to_be_visible()
    expect(tab.page.get_by_label("Admin token")).to_be_hidden()
    assert not problems(tab)


def test_admin_page_has_the_console_headers_and_asks_only_this_server(
    tab: Tab, console: Console
) -> None:
    """`/admin` and its script carry the strict CSP; signing in and opening every section
    asks nothing of any host but the server, and nothing breaks the CSP."""
    with console.http() as client:
        for path in ("/admin", "/console/admin.js"):
            response = client.get(path)
            assert response.status_code == 200
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
    page = sign_in(tab, console)
    for section in ("Usage", "Audit log", "Server", "Keys"):
        page.get_by_role("button", name=section, exact=True).click()
        expect(page.locator("[data-section-panel]:not([hidden])")).to_have_count(1)
    page.wait_for_load_state("networkidle")
    assert [url for url in tab.requests if not url.startswith(console.url + "/")] == []
    assert not problems(tab)


def test_admin_sign_in_refuses_a_wrong_token_then_shows_the_keys(
    tab: Tab, console: Console
) -> None:
    """A wrong admin token shows an error and nothing else; the right one shows the Keys
    table; the token stays out of the URL and lives in this tab's sessionStorage only (the
    API docs open in a tab without it); Sign out forgets it."""
    console.create_key("signin-visible")
    page = tab.page
    page.goto("/admin")
    page.get_by_label("Admin token").fill("x" * 40)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong admin token")
    expect(page.get_by_role("table", name="Keys")).to_be_hidden()
    page.get_by_label("Admin token").fill(console.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(key_row(page, "signin-visible")).to_contain_text("active")
    assert console.admin_token not in page.url
    assert page.evaluate("sessionStorage.getItem('ccgate.admin_token')") == console.admin_token
    assert page.evaluate("localStorage.length") == 0
    page.reload()
    expect(key_row(page, "signin-visible")).to_be_visible()
    with page.expect_popup() as popup:
        page.get_by_role("link", name="API docs").click()
    assert popup.value.evaluate("sessionStorage.getItem('ccgate.admin_token')") is None
    popup.value.close()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ccgate.admin_token')") is None


def test_admin_creates_a_key_and_shows_its_secret_once(tab: Tab, console: Console) -> None:
    """Create key with a policy shows the secret once with a copy button; the key works and
    has that policy; once dismissed, the secret is nowhere on the page, even after a reload."""
    page = sign_in(tab, console)
    page.get_by_label("Key name").fill("made-in-browser")
    page.get_by_label("Requests per minute").first.fill("60")
    page.get_by_label("Models").first.fill("haiku, claude-*")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_role("textbox", name="Key secret")
    expect(secret_box).to_have_value(re.compile(r"^ccg_\S{20,}$"))
    secret = secret_box.input_value()
    expect(page.get_by_role("button", name="Copy key secret")).to_be_visible()
    expect(key_row(page, "made-in-browser")).to_contain_text("rpm=60")
    with console.http(secret) as client:
        assert client.get("/api/v1/usage").status_code == 200
    policy = api_key(console, "made-in-browser")["policy"]
    assert (policy["rpm"], policy["models"]) == (60, ["haiku", "claude-*"])
    page.get_by_role("button", name="Done, I saved it").click()
    assert secret not in page.content()
    page.reload()
    expect(key_row(page, "made-in-browser")).to_be_visible()
    assert secret not in page.content()


def test_admin_create_shows_the_servers_refusal(tab: Tab, console: Console) -> None:
    """A bad policy value is refused with the server's message naming the field; no key."""
    page = sign_in(tab, console)
    page.get_by_label("Key name").fill("bad-policy")
    page.get_by_label("Requests per minute").first.fill("many")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#create-status")).to_contain_text("rpm")
    expect(key_row(page, "bad-policy")).to_have_count(0)


def test_admin_revokes_a_key_only_after_confirmation(tab: Tab, console: Console) -> None:
    """Revoke asks first, naming the key: declining changes nothing; accepting revokes it,
    the table says so and the key's next request is refused."""
    secret = console.create_key("to-revoke")
    page = sign_in(tab, console)
    questions: list[str] = []

    def answer(accept: bool) -> Callable[[Dialog], None]:
        def handle(dialog: Dialog) -> None:
            questions.append(dialog.message)
            (dialog.accept if accept else dialog.dismiss)()

        return handle

    page.once("dialog", answer(False))
    key_row(page, "to-revoke").get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status").filter(has_text="revoked")).to_have_count(0)
    assert api_key(console, "to-revoke")["active"] is True
    page.once("dialog", answer(True))
    key_row(page, "to-revoke").get_by_role("button", name="Revoke").click()
    expect(key_row(page, "to-revoke")).to_contain_text("revoked")
    expect(key_row(page, "to-revoke").get_by_role("button", name="Revoke")).to_have_count(0)
    assert len(questions) == 2 and "to-revoke" in questions[0]
    with console.http(secret) as client:
        assert client.get("/api/v1/usage").status_code == 401


def test_admin_edits_a_policy(tab: Tab, console: Console) -> None:
    """Edit policy shows the current policy; saving sets new limits and clears emptied ones."""
    console.create_key("to-edit", rpm=10, concurrency=2)
    page = sign_in(tab, console)
    key_row(page, "to-edit").get_by_role("button", name="Edit policy").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Requests per minute")).to_have_value("10")
    dialog.get_by_label("Requests per minute").fill("120")
    dialog.get_by_label("Concurrent runs").fill("")
    dialog.get_by_label("Tokens per day").fill("50000")
    dialog.get_by_role("button", name="Save policy").click()
    expect(dialog).to_be_hidden()
    expect(key_row(page, "to-edit")).to_contain_text("rpm=120")
    policy = api_key(console, "to-edit")["policy"]
    assert (policy["rpm"], policy["concurrency"], policy["tokens_per_day"]) == (120, None, 50000)


def test_admin_rotates_a_webhook_secret(tab: Tab, console: Console) -> None:
    """Rotate webhook secret, once confirmed, shows a new secret once."""
    with console.http(console.admin_token) as client:
        first = client.post("/admin/keys", json={"name": "to-rotate"}).json()["webhook_secret"]
    page = sign_in(tab, console)
    page.once("dialog", lambda dialog: dialog.accept())
    key_row(page, "to-rotate").get_by_role("button", name="Rotate webhook secret").click()
    secret_box = page.get_by_role("textbox", name="Webhook secret")
    expect(secret_box).to_have_value(re.compile(r"^whsec_\S+$"))
    assert secret_box.input_value() != first
    expect(page.get_by_role("button", name="Copy webhook secret")).to_be_visible()


def _traffic(console: Console) -> None:
    """Audit rows for two keys: 30 usage lookups and one Anthropic-door request by `busy`,
    two runs by `limited`, the second past its rpm."""
    busy = console.create_key("busy")
    limited = console.create_key("limited", rpm=1)
    with console.http(busy) as client:
        for _ in range(30):
            assert client.get("/api/v1/usage").status_code == 200
        client.post(
            "/v1/messages",
            json={
                "model": "sonnet",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    with console.http(limited) as client:
        assert [
            client.post("/api/v1/run", json={"prompt": "hi"}).status_code for _ in range(2)
        ] == [200, 429]
    wait_for_audit(console, "busy", 31)
    wait_for_audit(console, "limited", 2)


def column(page: Page, table: str, index: int) -> list[str]:
    """The text of column `index` (0-based) in every body row of the table named `table`."""
    rows = page.get_by_role("table", name=table).locator("tbody tr")
    return [row.locator("td, th").nth(index).inner_text() for row in rows.all()]


def test_admin_audit_log_filters_and_pages(tab: Tab, console: Console) -> None:
    """The Audit log filters by key, status and door, and Next/Previous page walk the rows
    with keyset cursors: no row twice, none missing."""
    _traffic(console)
    page = sign_in(tab, console, "audit")
    page.get_by_label("Key", exact=True).fill("busy")
    page.get_by_label("Rows per page").select_option("25")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#audit-note")).to_contain_text("Rows 1 to 25")
    first = column(page, "Audit log", 12)
    assert set(column(page, "Audit log", 1)) == {"busy"}
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#audit-note")).to_contain_text("Rows 26 to 31, newest first (last page)")
    second = column(page, "Audit log", 12)
    assert len(set(first + second)) == 31
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(page.locator("#audit-note")).to_contain_text("Rows 1 to 25")
    assert column(page, "Audit log", 12) == first
    page.get_by_label("Door").select_option("anthropic")
    expect(page.locator("#audit-note")).to_contain_text("Rows 1 to 1")
    assert column(page, "Audit log", 3) == ["/v1/messages"]
    page.get_by_label("Key", exact=True).fill("")
    page.get_by_label("Door").select_option("")
    page.get_by_label("Status").fill("429")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#audit-note")).to_contain_text("Rows 1 to 1")
    assert column(page, "Audit log", 1) == ["limited"]
    assert column(page, "Audit log", 4) == ["429"]


def test_admin_audit_log_shows_a_bad_filter_as_an_error(tab: Tab, console: Console) -> None:
    """A status the server does not know is refused with its message; the table is empty."""
    page = sign_in(tab, console, "audit")
    page.get_by_label("Status").fill("weird")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#audit-note")).to_contain_text("invalid_request")
    expect(page.get_by_role("table", name="Audit log").locator("tbody tr")).to_have_count(0)


def test_admin_usage_draws_a_chart_and_a_table(tab: Tab, console: Console) -> None:
    """Usage shows per-day bars as an inline SVG and the same numbers in a table; grouping by
    model and the range picker reload both."""
    key = console.create_key("charted")
    with console.http(key) as client:
        for prompt in ("one", "two", "three"):
            assert client.post("/api/v1/run", json={"prompt": prompt}).status_code == 200
    wait_for_audit(console, "charted", 3)
    page = sign_in(tab, console, "usage")
    page.get_by_label("Usage key").select_option("charted")
    chart = page.get_by_role("img", name=re.compile("Requests per day"))
    expect(chart).to_be_visible()
    expect(chart.locator("rect.chart-bar")).to_have_count(1)
    today = datetime.now(UTC).date().isoformat()
    usage = page.get_by_role("table", name="Usage")
    expect(usage.locator("tbody tr")).to_have_count(1)
    assert column(page, "Usage", 1) == [today] and column(page, "Usage", 2) == ["3"]
    page.get_by_label("Group by").select_option("model")
    expect(page.get_by_role("img", name=re.compile("Requests per model"))).to_be_visible()
    expect(usage.get_by_role("columnheader", name="Model")).to_be_visible()
    page.get_by_role("button", name="Last 7 days").click()
    expect(page.get_by_role("button", name="Last 7 days")).to_have_attribute("aria-pressed", "true")
    assert page.get_by_label("To (inclusive)").input_value() == today


def test_admin_server_page_shows_readiness_queue_circuit_and_pool(
    tab: Tab, console: Console
) -> None:
    """The Server page shows readiness with the CLI's path and version, the queue, that the
    CLI backend has no circuit breaker, and the warm pool's mode."""
    page = sign_in(tab, console, "server")
    expect(page.locator("#server-status")).to_contain_text("Ready")
    ready = page.get_by_role("definition").filter(has_text=console.server.env["CCGATE_CLAUDE_PATH"])
    expect(ready).to_be_visible()
    queue = page.locator("#server-queue")
    expect(queue).to_contain_text("Queued (all nodes)")
    expect(queue).to_contain_text("Running here")
    expect(page.locator("#server-circuit")).to_contain_text("none on the cli backend")
    expect(page.locator("#server-pool")).to_contain_text("off")


def test_admin_shows_hostile_stored_values_as_text(tab: Tab, console: Console) -> None:
    """A key named like an HTML element and audit values holding markup show as characters:
    no element is made, no script runs."""
    database = console.server.env["CCGATE_DATABASE_URL"].removeprefix("sqlite:///")
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(database, timeout=10) as db:
        db.execute(
            "INSERT INTO api_keys (id, name, prefix, secret_hash, created_at, models, "
            "kind) VALUES (?, ?, ?, ?, ?, ?, 'app')",
            (
                "key_hostile",
                HOSTILE,
                "<b>ccg_</b>",
                "f" * 64,
                now,
                json.dumps(["<script>alert(2)</script>"]),
            ),
        )
        db.execute(
            "INSERT INTO audit_log (at, request_id, key_name, door, route, http_status, "
            "duration_ms, model, error_type) VALUES (?, 'req_hostile', ?, 'native', ?, "
            "500, 1, ?, ?)",
            (now, HOSTILE, "/api/<svg onload=alert(3)>", HOSTILE, "<i>boom</i>"),
        )
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.page.on("dialog", record)
    page = sign_in(tab, console)
    expect(key_row(page, HOSTILE)).to_contain_text("<script>alert(2)</script>")
    page.get_by_role("button", name="Audit log").click()
    page.get_by_label("Status").fill("500")
    page.get_by_role("button", name="Apply filters").click()
    audit = page.get_by_role("table", name="Audit log")
    expect(audit).to_contain_text("/api/<svg onload=alert(3)>")
    expect(audit).to_contain_text(HOSTILE)
    expect(audit).to_contain_text("<i>boom</i>")
    assert page.locator("main img, main svg[onload], main script, main b, main i").count() == 0
    assert dialogs == [] and not problems(tab)


def test_admin_controls_are_named_by_their_visible_labels(tab: Tab, console: Console) -> None:
    """In every section, the secret panel and the policy dialog, each control a keyboard
    reaches has a label on the screen that is its accessible name, with the names the
    console promises."""
    console.create_key("labelled")
    page = tab.page
    page.goto("/admin")
    expect(page.get_by_role("textbox", name="Admin token", exact=True)).to_be_visible()
    assert_labelled_by_what_shows(page)
    page = sign_in(tab, console)
    page.get_by_role("textbox", name="Key name", exact=True).fill("labelled-2")
    page.get_by_role("button", name="Create key", exact=True).click()
    expect(page.get_by_role("button", name="Copy key secret")).to_be_visible()
    assert_labelled_by_what_shows(page)
    expect(
        key_row(page, "labelled").get_by_role("button", name="Revoke", exact=True)
    ).to_have_count(1)
    for section, table in (("Usage", "Usage"), ("Audit log", "Audit log"), ("Server", None)):
        page.get_by_role("button", name=section, exact=True).click()
        if table:
            expect(page.get_by_role("table", name=table, exact=True)).to_be_visible()
        assert_labelled_by_what_shows(page)
    page.get_by_role("button", name="Keys", exact=True).click()
    key_row(page, "labelled").get_by_role("button", name="Edit policy").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    assert_labelled_by_what_shows(page)


def test_admin_is_usable_by_keyboard(tab: Tab, console: Console) -> None:
    """Signing in, switching sections, the policy dialog (Escape closes it, the focus comes
    back) and revoking work with the keyboard alone; after a revoke the focus rests on the
    Keys table's Refresh, not lost at the top of the page."""
    console.create_key("keyboard-key")
    page = tab.page
    page.goto("/admin")
    page.get_by_label("Admin token").focus()
    page.keyboard.type(console.admin_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("table", name="Keys")).to_be_visible()
    page.get_by_role("button", name="Keys", exact=True).focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Usage")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("table", name="Usage")).to_be_visible()
    assert page.url.endswith("#usage")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Space")
    edit = key_row(page, "keyboard-key").get_by_role("button", name="Edit policy")
    edit.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(edit).to_be_focused()
    key_row(page, "keyboard-key").get_by_role("button", name="Revoke").focus()
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    expect(key_row(page, "keyboard-key")).to_contain_text("revoked")
    expect(page.get_by_role("button", name="Refresh", exact=True)).to_be_focused()
