"""/docs and /redoc in a real browser that may reach nothing but the service.

Swagger UI renders every operation and uploads a file through "Try it out";
ReDoc renders the API's title and its operations. Not one request leaves
127.0.0.1: ReDoc's bundle tries to show the "API docs by Redocly" logo from
its CDN, and the page's Content-Security-Policy makes the browser refuse it
unsent (the page renders the same without it). Screenshots of both pages go
to tests/artifacts/browser/.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OfflinePage
from tests.conftest import Live

pytestmark = [
    pytest.mark.parametrize("backend", ["local"], indirect=True),
    # The first run installs Debian's chromium with apt, which takes minutes.
    pytest.mark.timeout(900),
]

UI_TIMEOUT_MS = 30_000
BLOCKING_SUMMARY = "Upload a file; answer once it is stored and processed"


def assert_only_the_service_was_asked(offline: OfflinePage, live: Live) -> None:
    """Zero requests left the machine; any other attempt was refused by the page's policy."""
    assert offline.external == []
    assert offline.requested, "the page asked for nothing at all"
    elsewhere = [url for url in offline.requested if not url.startswith(live.url + "/")]
    assert sorted(elsewhere) == sorted(offline.refused)


def test_swagger_ui_uploads_a_file_with_try_it_out(
    live: Live, offline_page: OfflinePage, artifacts: Path
) -> None:
    page = offline_page.page
    page.set_default_timeout(UI_TIMEOUT_MS)
    described = live.http.get("/openapi.json").json()["paths"]
    page.goto(f"{live.url}/docs")
    # Every API operation is rendered (and no page: they are not operations).
    expect(page.locator(".opblock")).to_have_count(sum(map(len, described.values())))
    operation = page.locator(".opblock-post", has_text="/upload-blocking/")
    operation.locator(".opblock-summary").click()
    # The documented 201 is a completed record.
    expect(operation.locator('tr.response[data-code="201"]')).to_contain_text('"completed"')

    operation.get_by_role("button", name="Try it out").click()
    data = b"uploaded through Swagger UI\n"
    operation.locator('input[type="file"]').set_input_files(
        {"name": "swagger-try.txt", "mimeType": "text/plain", "buffer": data}
    )
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table .response")
    expect(answer.locator(".response-col_status")).to_contain_text("201")
    body = answer.locator(".response-col_description pre").first
    expect(body).to_contain_text("swagger-try.txt")
    page.screenshot(path=artifacts / "swagger-ui.png", full_page=True)

    shown = json.loads(body.inner_text())
    record = live.http.get(f"/uploads/{shown['id']}").json()
    assert record["filename"] == "swagger-try.txt"
    assert record["status"] == "completed"
    assert record["size"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert live.http.get(f"/uploads/{shown['id']}/content").content == data
    assert_only_the_service_was_asked(offline_page, live)


def test_redoc_renders_the_api(live: Live, offline_page: OfflinePage, artifacts: Path) -> None:
    page = offline_page.page
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{live.url}/redoc")
    expect(page.get_by_role("heading", name="uploadsvc", exact=False).first).to_be_visible()
    expect(page.get_by_text(BLOCKING_SUMMARY).first).to_be_visible()
    page.screenshot(path=artifacts / "redoc.png", full_page=True)
    assert_only_the_service_was_asked(offline_page, live)
    assert offline_page.refused == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
