"""The upload pages in a real Chromium against a real uvicorn, local and S3.

Each test drives the pages as a person would: the file input, a drop on the
drop zone, the Cancel and Delete buttons, and, with JavaScript off, the plain
form. Progress is watched on the page's own <progress> bars while Chromium's
network emulation slows the upload down. Every page is checked with axe-core
(no serious or critical violation), and screenshots of each page in its final
state, desktop and 375 px wide, go to tests/artifacts/pages/.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from tests.api.helpers import wait_until
from tests.backends import Backend
from tests.backends.tools import CHECKOUT
from tests.browser.conftest import OfflinePage
from tests.conftest import Live, make_settings
from tests.e2e.test_nginx import proxied
from tests.nginx import PREFIX
from uploadsvc.config import ProcessingSettings

ADMIN = "admin-5c1e9a7f3b2d4e6a"

pytestmark = [
    # The first run installs Debian's chromium with apt, which takes minutes.
    pytest.mark.timeout(900),
]
BOTH = pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)

UI_TIMEOUT_MS = 30_000
SHOTS = CHECKOUT / "tests" / "artifacts" / "pages"
#: Chromium's upload throttle, bytes per second: slow enough to see progress move.
SLOW = 2 << 20
BAD_IMPACTS = {"serious", "critical"}

#: Records every value the page's progress bars take, as the page sets them.
WATCH_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      const node = change.target;
      if (node.tagName === "PROGRESS") window.__progress.push(Number(node.getAttribute("value")));
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["value"]});
}"""

#: A drop on the drop zone, as a file dragged from the desktop arrives.
DROP = """([name, text]) => {
  const data = new DataTransfer();
  data.items.add(new File([text], name, {type: "text/plain"}));
  const zone = document.getElementById("dropzone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""


@pytest.fixture
def page(offline_page: OfflinePage) -> Page:
    offline_page.page.set_default_timeout(UI_TIMEOUT_MS)
    return offline_page.page


@pytest.fixture
def posts(page: Page) -> list[str]:
    """Every POST the page sends."""
    sent: list[str] = []
    page.on(
        "request", lambda request: sent.append(request.url) if request.method == "POST" else None
    )
    return sent


def throttle(page: Page, upload_bytes_per_s: int) -> None:
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": upload_bytes_per_s,
        },
    )


def shoot(page: Page, name: str) -> None:
    """The page as it is now, desktop and 375 px wide."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or {"width": 1280, "height": 900}
    page.screenshot(path=SHOTS / f"{name}-desktop.png", full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    page.screenshot(path=SHOTS / f"{name}-375.png", full_page=True)
    page.set_viewport_size(size)


def accessible(page: Page, name: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page; the serious and critical ones fail the test."""
    results = Axe().run(page)
    violations = results.response["violations"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    summary = [
        {"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"]), "help": v["help"]}
        for v in violations
    ]
    (SHOTS / f"{name}-axe.json").write_text(json.dumps(summary, indent=2))
    bad = [v for v in summary if v["impact"] in BAD_IMPACTS]
    assert bad == [], bad
    return summary


def uploads(live: Live) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = live.http.get("/uploads").json()["items"]
    return items


@BOTH
def test_blocking_page_uploads_several_files_with_progress(
    live: Live, page: Page, posts: list[str]
) -> None:
    big, small = os.urandom(6 << 20), b"second file\n"
    page.goto(f"{live.url}/")
    expect(
        page.get_by_text(live.backend.url.split("?")[0].rstrip("/"), exact=False)
    ).to_be_visible()
    accessible(page, "upload")
    page.evaluate(WATCH_PROGRESS)
    throttle(page, SLOW)
    page.locator("#file").set_input_files(
        [
            {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": big},
            {"name": "small.txt", "mimeType": "text/plain", "buffer": small},
        ]
    )
    rows = page.locator("#queue .item")
    expect(rows).to_have_count(2)
    big_row = rows.filter(has_text="big.bin")
    expect(big_row.locator(".item-speed")).to_contain_text("/s")
    expect(big_row.locator(".item-eta")).to_contain_text("left")
    expect(big_row.locator(".item-status")).to_contain_text("completed", timeout=60_000)
    expect(big_row.locator(".item-percent")).to_have_text("100 %")
    expect(rows.filter(has_text="small.txt").locator(".item-status")).to_contain_text("completed")
    seen = page.evaluate("window.__progress")
    assert any(0 < value < 100 for value in seen), seen
    assert seen[-1] == 100 or 100 in seen
    assert len(posts) == 2
    stored = {item["filename"]: item for item in uploads(live)}
    assert stored["big.bin"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert stored["small.txt"]["size"] == len(small)
    expect(page.locator("#recent-list")).to_contain_text("big.bin")
    expect(page.locator("#announcer")).not_to_be_empty()
    accessible(page, "upload-done")
    shoot(page, "upload-done")


@BOTH
def test_background_page_follows_a_dropped_file_to_completed(live: Live, page: Page) -> None:
    page.goto(f"{live.url}/background")
    accessible(page, "background")
    page.evaluate(DROP, ["dropped.txt", "dropped on the zone\n"])
    row = page.locator("#queue .item", has_text="dropped.txt")
    expect(row.locator(".item-status")).to_contain_text("completed")
    expect(row.locator(".item-note")).to_contain_text("ready to download")
    expect(row.get_by_role("link", name="Download dropped.txt")).to_be_visible()
    (record,) = uploads(live)
    assert record["filename"] == "dropped.txt" and record["status"] == "completed"
    accessible(page, "background-done")
    shoot(page, "background-done")


@BOTH
def test_the_file_list_downloads_and_deletes(live: Live, page: Page, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    first = live.http.post("/upload-blocking/", files={"file": ("keep.bin", data)}).json()
    second = live.http.post("/upload-blocking/", files={"file": ("gone.txt", b"bye")}).json()
    page.goto(f"{live.url}/uploads")
    rows = page.locator("table.files tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("gone.txt")  # newest first
    accessible(page, "list")
    shoot(page, "list")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download keep.bin").click()
    assert Path(download.value.path()).read_bytes() == data

    page.once("dialog", lambda dialog: dialog.dismiss())  # "Keep" first: nothing goes
    page.get_by_role("button", name="Delete gone.txt").click()
    expect(rows).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete gone.txt").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#announcer")).to_contain_text("gone.txt deleted")
    assert live.http.get(f"/uploads/{second['id']}").status_code == 404
    assert [item["id"] for item in uploads(live)] == [first["id"]]

    page.goto(f"{live.url}/uploads/{first['id']}")
    expect(page.locator("#status")).to_contain_text("completed")
    accessible(page, "record")
    shoot(page, "record")


@LOCAL
def test_the_file_list_refreshes_when_an_upload_completes(live: Live, browser: Browser) -> None:
    context = browser.new_context()
    try:
        listing, uploading = context.new_page(), context.new_page()
        listing.goto(f"{live.url}/uploads")
        expect(listing.get_by_text("No files yet.")).to_be_visible()
        uploading.goto(f"{live.url}/background")
        uploading.locator("#file").set_input_files(
            {"name": "fresh.txt", "mimeType": "text/plain", "buffer": b"new"}
        )
        expect(listing.locator("table.files")).to_contain_text("fresh.txt", timeout=UI_TIMEOUT_MS)
    finally:
        context.close()


@BOTH
def test_cancel_stops_a_slow_upload_and_keeps_nothing(live: Live, page: Page) -> None:
    page.goto(f"{live.url}/")
    throttle(page, 256 << 10)
    page.locator("#file").set_input_files(
        {"name": "slow.bin", "mimeType": "application/octet-stream", "buffer": os.urandom(8 << 20)}
    )
    row = page.locator("#queue .item", has_text="slow.bin")
    expect(row.locator(".item-speed")).to_contain_text("/s")
    row.get_by_role("button", name="Cancel slow.bin").click()
    expect(row.locator(".item-status")).to_contain_text("cancelled")
    expect(row.get_by_role("button", name="Try slow.bin again")).to_be_visible()
    wait_until(lambda: live.backend.leftovers() == [], timeout=20)
    assert uploads(live) == []


@LOCAL
def test_a_file_over_the_limit_is_refused_before_anything_is_sent(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    page: Page,
    posts: list[str],
) -> None:
    live = live_factory(make_settings(backend, tmp_path, max_upload_bytes=1 << 20))
    page.goto(f"{live.url}/")
    expect(page.locator(".facts")).to_contain_text("Up to 1 MiB per file")
    page.locator("#file").set_input_files(
        {"name": "huge.bin", "mimeType": "application/octet-stream", "buffer": b"x" * (2 << 20)}
    )
    message = page.locator("#queue .item .message")
    expect(message).to_have_text("!huge.bin is 2 MiB, over the limit of 1 MiB. It was not sent.")
    expect(message).to_have_attribute("role", "alert")
    assert posts == []
    accessible(page, "over-limit")
    shoot(page, "over-limit")


@LOCAL
def test_server_errors_read_as_sentences_with_a_way_to_try_again(live: Live, page: Page) -> None:
    """The service's answers, as a flaky storage or a network loss would give them."""
    page.goto(f"{live.url}/")
    answers = iter(
        [
            {"status": 503, "body": '{"detail": "storage: boom", "code": "storage_unavailable"}'},
            None,  # the connection drops
            {"status": 422, "body": '{"detail": "not an image", "code": "rejected", "id": "x"}'},
        ]
    )

    def answer(route: Route) -> None:
        given = next(answers)
        if given is None:
            route.abort("connectionreset")
        else:
            route.fulfill(content_type="application/json", **given)

    page.route("**/upload-blocking/", answer)
    page.locator("#file").set_input_files(
        {"name": "a.txt", "mimeType": "text/plain", "buffer": b"a"}
    )
    row = page.locator("#queue .item", has_text="a.txt")
    expect(row.locator(".message")).to_have_text(
        "!Storage is unavailable right now. Nothing was kept; try again in a minute."
    )
    row.get_by_role("button", name="Try a.txt again").click()
    expect(row.locator(".message")).to_contain_text("The connection was lost")
    page.locator("#file").set_input_files(
        {"name": "b.txt", "mimeType": "text/plain", "buffer": b"b"}
    )
    refused = page.locator("#queue .item", has_text="b.txt")
    expect(refused.locator(".message")).to_have_text("!b.txt was refused: not an image.")
    # Sent again, it would be refused again: no "Try again".
    expect(refused.get_by_role("button")).to_have_count(0)
    expect(row.get_by_role("button", name="Try a.txt again")).to_be_visible()
    accessible(page, "errors")
    shoot(page, "errors")


@LOCAL
def test_without_javascript_the_form_posts_and_a_reload_uploads_nothing_again(
    live: Live, browser: Browser
) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        for path in ("/", "/background"):
            page.goto(f"{live.url}{path}")
            name = f"plain{path.strip('/') or '-blocking'}.txt"
            page.get_by_label("Choose a file").set_input_files(
                {"name": name, "mimeType": "text/plain", "buffer": b"no script"}
            )
            page.get_by_role("button", name="Upload").click()
            expect(page).to_have_url(re.compile(r"/uploads/[0-9a-z]+$"))
            expect(page.get_by_role("heading", name=name)).to_be_visible()
            # The background upload's page refreshes itself until the upload is final.
            expect(page.locator("#status")).to_contain_text("completed", timeout=UI_TIMEOUT_MS)
            page.reload()
            expect(page.locator("#status")).to_contain_text("completed")
        assert sorted(item["filename"] for item in uploads(live)) == [
            "plain-blocking.txt",
            "plainbackground.txt",
        ]
        shoot(page, "record-no-js")
    finally:
        context.close()


@LOCAL
def test_every_page_has_a_strict_policy_and_no_serious_axe_violations(
    live: Live, page: Page, offline_page: OfflinePage
) -> None:
    live.http.post("/upload-blocking/", files={"file": ("x.txt", b"x")})
    for path in ("/", "/background", "/uploads", f"/uploads/{'0' * 28}"):
        answer = page.goto(f"{live.url}{path}")
        assert answer is not None
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["x-frame-options"] == "DENY"
        accessible(page, "page" + path.replace("/", "-"))
    shoot(page, "not-found")
    assert offline_page.refused == [] and offline_page.external == []


#: Records every status a row of the queue shows, in order.
WATCH_STATUSES = """() => {
  window.__statuses = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      const row = change.target;
      if (row.classList && row.classList.contains("item")) {
        const name = row.querySelector(".item-name").textContent;
        window.__statuses.push(name + ":" + row.dataset.status);
      }
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["data-status"]});
}"""


@BOTH
def test_background_rows_show_each_status_and_a_refusal_in_words(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path, page: Page
) -> None:
    settings = make_settings(backend, tmp_path, max_upload_bytes=32 << 20).model_copy(
        update={
            "processing": ProcessingSettings(pipeline=["delay", "mimetype"]),
            "plugins": {"delay": {"seconds": 1}, "mimetype": {"allow": ["text/plain"]}},
        }
    )
    live = live_factory(settings)
    page.goto(f"{live.url}/background")
    expect(page.locator(".facts")).to_contain_text("Processing here: delay (1 s), then mimetype")
    page.evaluate(WATCH_STATUSES)
    page.locator("#file").set_input_files(
        [
            {"name": "fine.txt", "mimeType": "text/plain", "buffer": b"plain words\n"},
            {"name": "pic.png", "mimeType": "image/png", "buffer": png()},
        ]
    )
    fine = page.locator("#queue .item", has_text="fine.txt")
    pic = page.locator("#queue .item", has_text="pic.png")
    expect(fine.locator(".item-status")).to_contain_text("completed")
    expect(pic.locator(".item-status")).to_contain_text("failed")
    expect(pic.locator(".message")).to_have_text(
        "!pic.png was refused by mimetype: type image/png is not allowed (allowed: text/plain)."
    )
    statuses = [s.split(":", 1)[1] for s in page.evaluate("window.__statuses") if "fine" in s]
    assert "processing" in statuses and statuses[-1] == "completed", statuses
    assert statuses.index("processing") > statuses.index("uploading"), statuses
    accessible(page, "background-refused")
    shoot(page, "background-refused")


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(out, "PNG")
    return out.getvalue()


def test_under_a_prefix_behind_nginx_with_sign_in(
    tmp_path: Path, page: Page, offline_page: OfflinePage
) -> None:
    """The pages' static files, the script's requests and the cookie all work under
    the README's prefix, through nginx, with tokens on."""
    with proxied(tmp_path, tokens=[ADMIN]) as setup:
        base = f"http://127.0.0.1:{setup.proxy.port}"
        page.goto(f"{base}{PREFIX}/background")
        expect(page.get_by_role("heading", name="Sign-in needed")).to_be_visible()
        accessible(page, "sign-in")
        shoot(page, "sign-in")
        page.get_by_label("Token").fill(ADMIN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Background upload")).to_be_visible()
        page.locator("#file").set_input_files(
            {"name": "pic.png", "mimeType": "image/png", "buffer": png()}
        )
        row = page.locator("#queue .item", has_text="pic.png")
        expect(row.locator(".item-status")).to_contain_text("completed")
        row.get_by_role("link", name="pic.png", exact=True).click()
        expect(page).to_have_url(re.compile(rf"{PREFIX}/uploads/[0-9a-z]+$"))
        expect(page.get_by_role("img", name="Thumbnail of pic.png")).to_be_visible()
        page.get_by_role("navigation").get_by_role("link", name="Files").click()
        expect(page.locator("table.files img")).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete pic.png").click()
        expect(page.locator("table.files tbody tr")).to_have_count(0)
        assert setup.files() == []
        outside = [u for u in offline_page.requested if not u.startswith(f"{base}{PREFIX}/")]
        assert outside == [] and offline_page.refused == []


@LOCAL
def test_an_uploads_page_follows_its_status_without_a_reload(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path, page: Page
) -> None:
    settings = make_settings(backend, tmp_path, max_upload_bytes=32 << 20).model_copy(
        update={
            "processing": ProcessingSettings(pipeline=["delay"]),
            "plugins": {"delay": {"seconds": 1.5}},
        }
    )
    live = live_factory(settings)
    accepted = live.http.post("/upload-nonblocking/", files={"file": ("later.txt", b"x")}).json()
    page.goto(f"{live.url}/uploads/{accepted['id']}")
    page.evaluate("window.__same_document = true")
    expect(page.locator("#status")).to_contain_text("processing")
    expect(page.locator("#status")).to_contain_text("the processing steps are running")
    accessible(page, "record-processing")
    shoot(page, "record-processing")
    expect(page.locator("#status")).to_contain_text("completed")
    expect(page.get_by_role("link", name="Download")).to_be_visible()
    assert page.evaluate("window.__same_document") is True  # no reload happened


@LOCAL
def test_the_drop_zone_opens_the_picker_from_the_keyboard(live: Live, page: Page) -> None:
    # Playwright turns on Chromium's file chooser interception when the first
    # listener is added, asynchronously: a chooser opened before that is lost.
    page.on("filechooser", lambda chooser: None)
    page.goto(f"{live.url}/")
    zone = page.get_by_role("button", name="Choose files to upload, or drop them here")
    zone.focus()
    # One chooser at a time: each is answered before the next key opens another.
    for key, name in (("Enter", "enter.txt"), (" ", "space.txt")):
        with page.expect_file_chooser() as chooser:
            page.keyboard.press(key)
        assert chooser.value.is_multiple()
        chooser.value.set_files({"name": name, "mimeType": "text/plain", "buffer": b"k"})
        expect(page.locator("#queue .item", has_text=name).locator(".item-status")).to_contain_text(
            "completed"
        )
        zone.focus()
    expect(page.locator("#queue .item")).to_have_count(2)
