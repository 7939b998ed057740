"""A real Chromium for the browser tests, started once per session.

Playwright cannot download its own browsers here, so the tests drive
Debian's `chromium` (installed with apt when missing, as tests/backends
install their servers), headless, with its own background traffic (component
updates, sync) switched off. Each test gets a fresh page in which every
request to a host other than 127.0.0.1 is aborted and recorded: a page that
works offline must send none. A load the page's Content-Security-Policy
refuses never reaches the network (nor the route handler); it is recorded
apart, as refused.

Screenshots go to `tests/artifacts/browser/` (ignored by git), where a
person can look at what the tests saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright

from tests.backends.tools import CHECKOUT, apt_program

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1"}
#: How Chromium reports a load its Content-Security-Policy blocked (no request sent).
REFUSED_BY_POLICY = {"csp", "net::ERR_BLOCKED_BY_CSP"}
ARTIFACTS = CHECKOUT / "tests" / "artifacts" / "browser"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not longer: Playwright's sync API keeps an event
    loop running in this thread while it is open, and every later test that calls
    asyncio.run() would fail."""
    executable = apt_program("chromium", "chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class OfflinePage:
    """A page that may reach 127.0.0.1 only.

    `requested`: every http(s) URL the page tried to load; `external`: those
    that would have left the machine (aborted here); `refused`: those the
    browser refused under the page's Content-Security-Policy, unsent.
    """

    page: Page
    requested: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
def offline_page(browser: Browser) -> Iterator[OfflinePage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    offline = OfflinePage(page)

    def route(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            offline.external.append(route.request.url)
            route.abort()

    def seen(request: Request) -> None:
        if request.url.startswith(("http:", "https:")):
            offline.requested.append(request.url)

    def failed(request: Request) -> None:
        if request.failure in REFUSED_BY_POLICY:
            offline.refused.append(request.url)

    page.route("**/*", route)
    page.on("request", seen)
    page.on("requestfailed", failed)
    try:
        yield offline
    finally:
        context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
