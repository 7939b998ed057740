"""Browser pages, HTML answers to form posts, and the OpenAPI description."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.api.helpers import wait_for_status
from tests.backends import Backend
from tests.conftest import Live, make_settings
from uploadsvc.config import ProcessingSettings
from uploadsvc.pipeline import Pipeline
from uploadsvc.plugin import Options, Processor, Upload

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_pages_offer_a_form_for_each_path(live: Live) -> None:
    for path, action in (("/", "/upload-blocking/"), ("/background", "/upload-nonblocking/")):
        page = live.http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert f'action="{action}"' in page.text
        assert 'enctype="multipart/form-data"' in page.text
        assert 'name="file"' in page.text


def test_form_post_is_redirected_to_the_uploads_page(live: Live) -> None:
    """Post-redirect-get: a browser lands on /uploads/{id}, so a reload sends nothing again."""
    headers = {"Accept": BROWSER_ACCEPT}
    done = live.http.post("/upload-blocking/", files={"file": ("note.txt", b"hi")}, headers=headers)
    assert done.status_code == 303 and done.content == b""
    upload_id = done.headers["location"].rsplit("/", 1)[-1]
    assert done.headers["location"] == f"/uploads/{upload_id}"
    page = live.http.get(done.headers["location"], headers=headers)
    assert page.headers["content-type"].startswith("text/html")
    assert "note.txt" in page.text and "completed" in page.text

    queued = live.http.post(
        "/upload-nonblocking/", files={"file": ("later.txt", b"hi")}, headers=headers
    )
    assert queued.status_code == 303
    upload_id = queued.headers["location"].rsplit("/", 1)[-1]
    assert "later.txt" in live.http.get(f"/uploads/{upload_id}", headers=headers).text
    wait_for_status(live, upload_id)
    status_page = live.http.get(f"/uploads/{upload_id}", headers=headers)
    assert status_page.headers["content-type"].startswith("text/html")
    assert "completed" in status_page.text
    assert 'http-equiv="refresh"' not in status_page.text  # final: no more refreshing

    # API clients keep their JSON answers.
    assert live.http.post("/upload-blocking/", files={"file": ("a", b"x")}).status_code == 201
    assert live.http.post("/upload-nonblocking/", files={"file": ("b", b"x")}).status_code == 202

    refused = live.http.post(
        "/upload-blocking/", content=b"x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert refused.status_code == 415
    assert refused.headers["content-type"].startswith("text/html")
    assert "multipart/form-data" in refused.text


def test_html_escapes_the_client_file_name(live: Live) -> None:
    posted = live.http.post(
        "/upload-blocking/",
        files={"file": ("<img src=x onerror=alert(1)>.txt", b"x")},
        headers={"Accept": BROWSER_ACCEPT},
    )
    response = live.http.get(posted.headers["location"], headers={"Accept": BROWSER_ACCEPT})
    assert "<img src=x" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in response.text


def test_openapi_describes_every_route_and_its_errors(live: Live) -> None:
    spec = live.http.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/upload-blocking/", "post"): {"201", "400", "413", "415", "503"},
        ("/upload-nonblocking/", "post"): {"202", "400", "413", "415", "503"},
        ("/uploads", "get"): {"200", "400", "503"},
        ("/uploads/{upload_id}", "get"): {"200", "404", "503"},
        ("/uploads/{upload_id}/content", "get"): {"200", "206", "404", "409", "416", "503"},
        ("/uploads/{upload_id}", "delete"): {"204", "404", "503"},
        ("/healthz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method, sorted(responses))
    # The pages are for people: served, but not API operations.
    assert "/" not in paths and "/background" not in paths
    upload = paths["/upload-blocking/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    error_schema = paths["/uploads/{upload_id}"]["get"]["responses"]["404"]["content"][
        "application/json"
    ]
    assert error_schema["schema"]["$ref"].endswith("/ErrorBody")


def test_the_file_list_page_shows_thumbnails_and_pages_with_the_cursor(
    live_factory: Callable[..., Live],
) -> None:
    class Thumbnailing(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            async with upload.derive("thumbnail", "image/png") as out:
                await out.write(b"\x89PNG")
            return {}

    live = live_factory(pipeline=Pipeline([("thumbnail", Thumbnailing(Options()))], timeout=30))
    ids = [
        live.http.post("/upload-blocking/", files={"file": (f"f{i}.png", b"x")}).json()["id"]
        for i in range(3)
    ]
    page = live.http.get("/uploads?limit=2", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'<img src="/uploads/{ids[2]}/derived/thumbnail"' in page.text
    assert "f2.png" in page.text and "f1.png" in page.text and "f0.png" not in page.text
    assert f"/uploads?cursor={ids[1]}&amp;limit=2" in page.text
    older = live.http.get(f"/uploads?cursor={ids[1]}&limit=2", headers={"Accept": BROWSER_ACCEPT})
    assert "f0.png" in older.text and "Older files" not in older.text
    record_page = live.http.get(f"/uploads/{ids[0]}", headers={"Accept": BROWSER_ACCEPT})
    assert f'<img src="/uploads/{ids[0]}/derived/thumbnail"' in record_page.text
    # API clients still get JSON.
    assert [r["id"] for r in live.http.get("/uploads").json()["items"]] == ids[::-1]


def test_the_upload_pages_say_which_processing_a_blocking_upload_waits_for(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    settings = make_settings(backend, tmp_path).model_copy(
        update={
            "processing": ProcessingSettings(pipeline=["delay"]),
            "plugins": {"delay": {"seconds": 2.5}},
        }
    )
    live = live_factory(settings)
    blocking, background = live.http.get("/").text, live.http.get("/background").text
    assert "Processing here: delay (2.5 s)." in blocking and "You wait for it" in blocking
    assert "Processing here: delay (2.5 s)." in background and "You will not wait" in background


def test_an_error_page_names_the_error_not_a_failed_upload(live: Live) -> None:
    missing = live.http.get(f"/uploads/{'0' * 28}", headers={"Accept": BROWSER_ACCEPT})
    assert missing.status_code == 404
    assert "<h1>Not found</h1>" in missing.text and "Upload failed" not in missing.text
    too_large = live.http.post(
        "/upload-blocking/",
        files={"file": ("big", b"x" * ((32 << 20) + 1))},
        headers={"Accept": BROWSER_ACCEPT},
    )
    assert too_large.status_code == 413
    assert "<h1>The file is too large</h1>" in too_large.text


def test_a_failed_uploads_page_says_what_to_do_not_what_broke(
    live_factory: Callable[..., Live],
) -> None:
    class Broken(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            raise ValueError("/srv/secret/path: internal parser state 0x1f")

    live = live_factory(pipeline=Pipeline([("broken", Broken(Options()))], timeout=30))
    accepted = live.http.post("/upload-nonblocking/", files={"file": ("f.txt", b"x")}).json()
    record = wait_for_status(live, accepted["id"])
    assert record["status"] == "failed" and "/srv/secret/path" in record["error"]  # the API's
    page = live.http.get(f"/uploads/{accepted['id']}", headers={"Accept": BROWSER_ACCEPT})
    assert "/srv/secret/path" not in page.text and "0x1f" not in page.text
    assert "Processing did not finish. Upload it again" in page.text
    assert accepted["id"] in page.text  # something to quote to whoever runs the service
