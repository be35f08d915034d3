"""The playground at `/`, driven in headless chromium against a real `ccgate serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    PHONE,
    SCREENSHOT_DIR,
    Console,
    OpenTab,
    Tab,
    assert_labelled_by_what_shows,
    assert_rows_are_cards,
)

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Route

WAIT_MS = 15_000
# The focused control's label (or text), marked when it shows no focus ring.
FOCUSED_JS = """() => { const n = document.activeElement;
  const ring = getComputedStyle(n).outlineStyle !== 'none';
  return (n.labels?.[0]?.textContent || n.textContent).trim() + (ring ? '' : ' (no ring)'); }"""


def fake(scenario: str, **params: Any) -> str:
    """A first prompt line that scripts the fake claude's reply to this one run."""
    return "#fake: " + json.dumps({"scenario": scenario, **params}) + "\n"


def open_playground(tab: Tab, key: str) -> Page:
    """Open `/`, paste `key` and wait until the page accepted it."""
    page = tab.page
    page.goto("/")
    page.get_by_label("API key").fill(key)
    expect(page.get_by_role("status").filter(has_text="Key accepted")).to_be_visible()
    return page


def run_prompt(page: Page, prompt: str) -> None:
    """Type `prompt` into the Prompt box and press Run."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Run", exact=True).click()


def output(page: Page) -> Locator:
    """The streamed answer: the log named Output."""
    return page.get_by_role("log", name="Output")


def run_status(page: Page) -> Locator:
    """The line saying what the current run is doing."""
    return page.locator("#run-status")


def jobs_of(console: Console, key: str) -> list[dict[str, Any]]:
    """The key's jobs, newest first, straight from the API."""
    with console.http(key) as client:
        jobs: list[dict[str, Any]] = client.get("/api/v1/jobs").json()["jobs"]
    return jobs


def test_playground_streams_tokens_before_the_job_ends(tab: Tab, console: Console) -> None:
    """Run shows the answer's first tokens while the job still runs, then the whole result."""
    page = open_playground(tab, console.create_key())
    text = "one two three four five six seven eight"
    run_prompt(page, fake("slow", text=text, chunks=8, delay=0.3) + "count")
    expect(output(page)).not_to_have_text("", timeout=WAIT_MS)
    partial = output(page).text_content() or ""
    assert partial and text.startswith(partial) and partial != text
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expect(output(page)).to_have_text(text)
    job = jobs_of(console, page.get_by_label("API key").input_value())[0]
    facts = page.get_by_label("Result", exact=True).get_by_role("definition")
    expect(facts.filter(has_text=job["session_id"])).to_have_count(1)
    expect(facts.filter(has_text="$")).to_have_count(1)
    assert not tab.problems


def test_playground_says_why_a_key_is_refused(tab: Tab, console: Console) -> None:
    """A wrong key gets a clear message naming the error, and Run says to fix the key."""
    page = tab.page
    page.goto("/")
    page.get_by_label("API key").fill("ccg_not-a-real-key")
    expect(page.locator("#key-status")).to_contain_text(
        "authentication_error: invalid or revoked API key"
    )
    run_prompt(page, "hello")
    expect(run_status(page)).to_contain_text("authentication_error")
    assert page.evaluate("location.href") == f"{console.url}/"


def test_playground_cancel_stops_the_running_job(tab: Tab, console: Console) -> None:
    """Cancel ends a running job as cancelled, in the page and on the server."""
    key = console.create_key()
    page = open_playground(tab, key)
    run_prompt(page, fake("hang") + "never answers")
    expect(run_status(page)).to_contain_text("processing", timeout=WAIT_MS)
    page.get_by_role("button", name="Cancel").click()
    expect(run_status(page)).to_contain_text("cancelled", timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert jobs_of(console, key)[0]["status"] == "cancelled"


def test_playground_history_filters_opens_replays_and_deletes(tab: Tab, console: Console) -> None:
    """The Jobs table lists the key's jobs, filters them by status, opens one to show its
    result, replays its events and deletes it."""
    key = console.create_key()
    with console.http(key) as client:
        done = client.post("/api/v1/run", json={"prompt": "remember me"}).json()
        queued = client.post("/api/v1/jobs", json={"prompt": fake("hang") + "x"}).json()
        client.post(f"/api/v1/jobs/{queued['job_id']}/cancel")
    page = open_playground(tab, key)
    jobs = page.get_by_role("table", name="Jobs")
    expect(jobs.get_by_role("row")).to_have_count(3)  # the header and two jobs
    page.get_by_label("Status").select_option("cancelled")
    expect(jobs.get_by_role("row")).to_have_count(2)
    expect(jobs).to_contain_text(queued["job_id"])
    page.get_by_label("Status").select_option("")
    row = jobs.get_by_role("row").filter(has_text=done["job_id"])
    row.get_by_role("button", name="Open").click()
    expect(output(page)).to_have_text("remember me")
    page.get_by_role("button", name="Replay events").click()
    expect(page.locator("#events li").filter(has_text="chunk")).not_to_have_count(0)
    expect(page.locator("#events li").last).to_contain_text("result: status completed")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(jobs.get_by_role("row")).to_have_count(2)
    with console.http(key) as client:
        assert client.get(f"/api/v1/jobs/{done['job_id']}").status_code == 404


def test_playground_shows_html_in_a_reply_as_text(tab: Tab, console: Console) -> None:
    """A reply holding HTML and a <script> shows as characters, adds no element and runs
    nothing, live and when the job is opened again from the history."""
    page = open_playground(tab, console.create_key())
    hostile = (
        '<img src="/console/x.png" onerror="window.__pwned=1">'
        "<script>window.__pwned=2</script><b>bold</b>"
    )
    run_prompt(page, hostile)
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expect(output(page)).to_have_text(hostile)
    page.get_by_role("table", name="Jobs").get_by_role("button", name="Open").first.click()
    expect(output(page)).to_have_text(hostile)
    assert output(page).locator("img, script, b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert not [url for url in tab.requests if url.endswith("/x.png")]


def test_playground_makes_no_outside_requests(tab: Tab, console: Console) -> None:
    """Loading the page and running a prompt asks nothing of any host but the server."""
    page = tab.page
    page.route(re.compile(r"^(?!" + re.escape(console.url) + r"/)"), lambda route: route.abort())
    open_playground(tab, console.create_key())
    run_prompt(page, "hello")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    assert tab.requests
    assert [url for url in tab.requests if not url.startswith(console.url + "/")] == []
    assert not tab.problems


def test_console_pages_send_a_strict_content_security_policy(tab: Tab, console: Console) -> None:
    """`/` and its assets carry a strict CSP and nosniff, and the browser enforces the CSP:
    an inline script does not run."""
    with console.http() as client:
        responses = [
            client.get(path) for path in ("/", "/console/common.js", "/console/console.css")
        ]
    for response in responses:
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        for rule in (
            "default-src 'self'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ):
            assert rule in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    page = tab.page
    page.goto("/")
    page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__inline = 1'; document.head.append(s); }""")
    assert page.evaluate("window.__inline") is None
    assert any("Content Security Policy" in problem for problem in tab.problems)


def test_console_assets_need_no_key_and_unknown_ones_are_404(console: Console) -> None:
    """Pages and assets load without a key; a path outside the assets is a 404 in the
    documented error shape, and the console never shows up in the audit log."""
    with console.http() as client:
        assert (
            client.get("/console/playground.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        for path in (
            "/console/nope.js",
            "/console/playground.html",
            "/console/..%2fconfig.py",
            "/console/%2e%2e/api/app.py",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["type"] == "not_found"
    with console.http(console.admin_token) as admin:
        rows = admin.get("/admin/audit", params={"limit": 1000}).json()
    routes = json.dumps(rows)
    assert "/console/" not in routes and '"route": "/"' not in routes


def test_playground_pretty_prints_a_json_answer(tab: Tab, console: Console) -> None:
    """With Response format JSON the parsed answer is shown indented, not as one line."""
    page = open_playground(tab, console.create_key())
    page.get_by_label("JSON").check()
    run_prompt(page, fake("text", text='Here: {"b": [1, 2], "a": {"c": "<i>x</i>"}}') + "json")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expected = json.dumps({"b": [1, 2], "a": {"c": "<i>x</i>"}}, indent=2)
    expect(output(page)).to_have_text(expected)


def test_playground_follow_up_continues_the_session(tab: Tab, console: Console) -> None:
    """After a run, the next Run continues its session: both jobs share one session that
    holds both turns."""
    key = console.create_key()
    page = open_playground(tab, key)
    run_prompt(page, "my name is Ada")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expect(page.get_by_label("Continue the session")).to_be_checked()
    page.get_by_label("Prompt", exact=True).fill("what is my name?")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")  # the keyboard runs it too
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    second, first = jobs_of(console, key)[:2]
    assert second["session_id"] == first["session_id"]
    with console.http(key) as client:
        session = client.get(f"/api/v1/sessions/{first['session_id']}").json()
    assert "what is my name?" in json.dumps(session) and "my name is Ada" in json.dumps(session)


def test_playground_keeps_the_key_in_this_tab_only(open_tab: OpenTab, console: Console) -> None:
    """The key survives a reload of the tab, lives in sessionStorage only, never in the URL,
    and another tab does not get it."""
    key = console.create_key()
    tab = open_tab()
    page = open_playground(tab, key)
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(key)
    assert page.evaluate("sessionStorage.getItem('ccgate.api_key')") == key
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    run_prompt(page, "hi")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    assert not [url for url in tab.requests if key in url]
    other = open_tab().page
    other.goto("/")
    expect(other.get_by_label("API key")).to_have_value("")


def test_playground_docs_link_opens_a_tab_without_the_key(tab: Tab, console: Console) -> None:
    """The API docs link opens /docs in a new tab that does not get the key: that page runs
    Swagger UI's own script, so it must not share the playground's sessionStorage."""
    tab.page.context.route(
        re.compile(r"^(?!" + re.escape(console.url) + r"/)"), lambda route: route.abort()
    )
    page = open_playground(tab, console.create_key())
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="API docs").click()
    docs = opened.value
    docs.wait_for_load_state("domcontentloaded")
    assert docs.url == f"{console.url}/docs"
    assert docs.evaluate("sessionStorage.getItem('ccgate.api_key')") is None
    assert docs.evaluate("document.referrer") == ""


def test_api_docs_render_from_this_server_alone(tab: Tab, console: Console) -> None:
    """/docs shows the API's routes with Swagger UI loaded from ccgate itself: it works
    air-gapped, and not one request goes anywhere but this server."""
    page = tab.page
    page.goto("/docs")
    expect(page.locator(".swagger-ui .title")).to_contain_text("ccgate", timeout=WAIT_MS)
    expect(page.get_by_text("/api/v1/jobs", exact=True).first).to_be_visible()
    outside = [url for url in tab.requests if not url.startswith((console.url + "/", "data:"))]
    assert outside == []
    assert not [problem for problem in tab.problems if "Content Security Policy" in problem]


def test_playground_copy_as_snippets_leave_the_key_out(tab: Tab, console: Console) -> None:
    """Every "Copy as" snippet shows the request on the form and reads the key from the
    environment instead of showing it."""
    key = console.create_key()
    page = open_playground(tab, key)
    page.get_by_label("System prompt").fill("be brief")
    page.get_by_label("Prompt", exact=True).fill("it's a test")
    snippet = page.get_by_label("Snippet", exact=True)
    expect(snippet).to_contain_text("it'\\''s a test")
    for name, marker in (
        ("curl", "$CCGATE_API_KEY"),
        ("Python (anthropic)", "anthropic.Anthropic("),
        ("Python (openai)", "OpenAI("),
        ("Python (httpx)", "httpx.post("),
        ("TypeScript (fetch)", "process.env.CCGATE_API_KEY"),
    ):
        page.get_by_role("button", name=name).click()
        expect(snippet).to_contain_text(marker)
        expect(snippet).to_contain_text("be brief")
        assert key not in (snippet.text_content() or "")


@pytest.mark.parametrize("name", ["Python (anthropic)", "Python (openai)", "Python (httpx)"])
def test_playground_python_snippets_run_against_ccgate(
    tab: Tab, console: Console, name: str
) -> None:
    """Each Python "Copy as" snippet, run as shown with the key in CCGATE_API_KEY, gets the
    answer from this server and prints it, with no warning on stderr."""
    key = console.create_key()
    page = open_playground(tab, key)
    page.get_by_label("System prompt").fill('be "brief"')
    page.get_by_label("Prompt", exact=True).fill("it's a \\ test")
    page.get_by_role("button", name=name).click()
    code = page.get_by_label("Snippet", exact=True).text_content() or ""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "CCGATE_API_KEY": key},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "it's a \\ test\n"
    assert done.stderr == ""


def test_playground_controls_are_named_by_their_visible_labels(tab: Tab, console: Console) -> None:
    """Every control a keyboard reaches, with a result and a job on show, has a label on the
    screen, and that label is its accessible name (nothing named by a hidden aria-label)."""
    page = open_playground(tab, console.create_key())
    run_prompt(page, "hello")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    page.get_by_role("table", name="Jobs").get_by_role("button", name="Open").click()
    expect(page.get_by_role("button", name="Replay events")).to_be_visible()
    assert assert_labelled_by_what_shows(page) >= 25
    for role, name in (
        ("textbox", "API key"),
        ("textbox", "Prompt"),
        ("textbox", "System prompt"),
        ("combobox", "Model"),
        ("button", "Run"),
        ("button", "Cancel"),
        ("log", "Output"),
        ("table", "Jobs"),
    ):
        expect(page.get_by_role(role, name=name, exact=True)).to_have_count(1)  # type: ignore[arg-type]


def test_playground_works_from_the_keyboard(tab: Tab, console: Console) -> None:
    """Tab walks the controls in reading order with a visible focus ring, Space picks a
    snippet, and deleting a job with Enter leaves the focus on the history's Refresh."""
    key = console.create_key()
    with console.http(key) as client:
        assert client.post("/api/v1/run", json={"prompt": "one"}).status_code == 200
    page = open_playground(tab, key)
    expect(page.get_by_role("table", name="Jobs").get_by_role("button", name="Open")).to_have_count(
        1
    )
    page.get_by_label("API key").focus()
    order = []
    for _ in range(10):
        page.keyboard.press("Tab")
        order.append(page.evaluate(FOCUSED_JS))
    assert order == [
        "Forget key",
        "Model",
        "Timeout (seconds)",
        "System prompt",
        "Prompt",
        "Text",
        "Run",
        "",
        "Refresh limits",
        "curl",
    ]
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    expect(page.get_by_role("button", name="Python (anthropic)")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.get_by_role("table", name="Jobs").get_by_role("button", name="Delete").focus()
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    expect(page.get_by_role("table", name="Jobs")).to_contain_text("No jobs yet.")
    expect(page.get_by_role("button", name="Refresh", exact=True)).to_be_focused()


def test_playground_shows_the_key_limits(tab: Tab, console: Console) -> None:
    """The Limits panel shows what the key's policy allows and, after a run, the requests
    left from the rate-limit headers."""
    page = open_playground(tab, console.create_key(rpm=30, tokens_per_day=50_000))
    limits = page.get_by_label("Limits of this key")
    expect(limits).to_contain_text("Requests per minute")
    expect(limits).to_contain_text("50,000")
    run_prompt(page, "hello")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expect(limits).to_contain_text("29 of 30", timeout=WAIT_MS)


def test_playground_resumes_a_dropped_stream_with_last_event_id(tab: Tab, console: Console) -> None:
    """When the event stream drops mid-answer the page reconnects with Last-Event-ID and
    shows the whole answer once."""
    page = tab.page
    text = "alpha beta gamma delta epsilon zeta"
    seen: list[str | None] = []

    def cut_first_stream(route: Route) -> None:
        seen.append(route.request.headers.get("last-event-id"))
        if len(seen) > 1:
            route.continue_()
            return
        response = route.fetch()
        first_events = response.text().split("\n\n")[:3]
        route.fulfill(response=response, body="\n\n".join(first_events) + "\n\n")

    page.route("**/api/v1/jobs/*/sse", cut_first_stream)
    open_playground(tab, console.create_key())
    run_prompt(page, fake("slow", text=text, chunks=6, delay=0.1) + "go")
    expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    expect(output(page)).to_have_text(text)
    assert len(seen) == 2 and seen[0] is None and seen[1] is not None and int(seen[1]) >= 1


@pytest.mark.parametrize(("name", "size"), [("desktop", (1280, 900)), ("phone", PHONE)])
def test_playground_fits_and_is_photographed(
    open_tab: OpenTab, console: Console, name: str, size: tuple[int, int]
) -> None:
    """The playground fits the screen without sideways scrolling on a desktop and on a
    390 px phone; the test run saves the screenshots docs/console.md shows."""
    tab = open_tab(*size)
    page = open_playground(tab, console.create_key(rpm=60, tokens_per_day=100_000))
    page.get_by_label("System prompt").fill("Answer in one short paragraph.")
    reply = (
        "A gateway in front of the Claude Code CLI: keys, limits, queues and streams, "
        "so every app on the network can ask without holding a login."
    )
    with console.fake_replies("text", text=reply):
        run_prompt(page, "What is ccgate, in one sentence?")
        expect(run_status(page)).to_contain_text("Completed", timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.scrollWidth") <= size[0]
    page.evaluate("document.getElementById('prompt').closest('.field').scrollIntoView()")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(
        path=SCREENSHOT_DIR / f"playground-{name}.png", full_page=name == "desktop", type="png"
    )
    assert (SCREENSHOT_DIR / f"playground-{name}.png").stat().st_size > 1000
    if name == "phone":
        expect(page.get_by_role("table", name="Jobs").locator("tbody tr")).to_have_count(1)
        assert_rows_are_cards(page, "Jobs")
        page.locator("#history-title").evaluate("node => node.scrollIntoView()")
        page.screenshot(path=SCREENSHOT_DIR / "playground-history-phone.png", type="png")


def test_console_unknown_method_and_http_client_see_plain_errors(console: Console) -> None:
    """A POST to the playground is a 405 in the documented error shape, not a page."""
    response = httpx.post(f"{console.url}/", timeout=10)
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "method_not_allowed"
