"""The admin pages on a desktop and a 390 px phone, photographed for docs/console.md.

A module of its own, so its `ccgate serve` holds only the tidy data the pictures show.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    SCREENSHOT_DIR,
    Console,
    OpenTab,
    assert_rows_are_cards,
)
from tests.browser.test_admin import problems, sign_in, wait_for_audit

# Section button, then what shows once its data arrived, then what to bring into view on a
# phone, then the table whose rows a phone shows as cards.
SECTIONS = {
    "keys": ("Keys", "table#keys tbody tr", "#keys-list-title", "Keys"),
    "usage": ("Usage", "rect.chart-bar", "#usage-title", "Usage"),
    "audit": ("Audit log", "table#audit tbody tr", "#audit-title", "Audit log"),
    "server": ("Server", "#server-ready dd", "#server-title", None),
}


@pytest.fixture(scope="module")
def seeded(console: Console) -> None:
    """A few keys with policies and some traffic, one key revoked."""
    keys: dict[str, dict[str, Any]] = {
        "billing-bot": {"rpm": 60, "tokens_per_day": 200_000, "models": ["sonnet", "haiku"]},
        "support-app": {"budget_usd_per_month": 25, "concurrency": 4},
        "nightly-batch": {"rpd": 500, "expires_at": "2031-12-31"},
        "old-laptop": {},
    }
    secrets = {name: console.create_key(name, **policy) for name, policy in keys.items()}
    for name, runs in (("billing-bot", 5), ("support-app", 3), ("nightly-batch", 2)):
        with console.http(secrets[name]) as client:
            for n in range(runs):
                client.post("/api/v1/run", json={"prompt": f"question {n}"})
    with console.http(console.admin_token) as admin:
        admin.delete("/admin/keys/old-laptop")
    wait_for_audit(console, "nightly-batch", 2)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(("name", "size"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_admin_fits_and_is_photographed(
    open_tab: OpenTab, console: Console, name: str, size: tuple[int, int]
) -> None:
    """Every admin section fits the screen without sideways page scrolling on a desktop and
    on a 390 px phone, where the Keys, Usage and Audit log tables show each row as a card;
    the test run saves the screenshots docs/console.md shows."""
    tab = open_tab(*size)
    page = sign_in(tab, console)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for section, (button, ready, top, table) in SECTIONS.items():
        page.get_by_role("button", name=button, exact=True).click()
        expect(page.locator(ready).first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= size[0], section
        if name == "phone":
            if table:
                assert_rows_are_cards(page, table)
            page.locator(top).evaluate("node => node.scrollIntoView({block: 'start'})")
        path = SCREENSHOT_DIR / f"admin-{section}-{name}.png"
        page.screenshot(path=path, full_page=name == "desktop", type="png")
        assert path.stat().st_size > 1000
    assert not problems(tab)
