"""Browser pages, HTML answers to form posts, and the OpenAPI description."""

from __future__ import annotations

from tests.api.helpers import wait_for_status
from tests.conftest import Live

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_pages_offer_a_form_for_each_path(live: Live) -> None:
    for path, action in (("/", "/upload-blocking/"), ("/background", "/upload-nonblocking/")):
        page = live.http.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert f'action="{action}"' in page.text
        assert 'enctype="multipart/form-data"' in page.text
        assert 'name="file"' in page.text


def test_form_post_gets_a_page_with_the_outcome(live: Live) -> None:
    headers = {"Accept": BROWSER_ACCEPT}
    done = live.http.post("/upload-blocking/", files={"file": ("note.txt", b"hi")}, headers=headers)
    assert done.status_code == 201
    assert done.headers["content-type"].startswith("text/html")
    assert "note.txt" in done.text and "completed" in done.text

    queued = live.http.post(
        "/upload-nonblocking/", files={"file": ("later.txt", b"hi")}, headers=headers
    )
    assert queued.status_code == 202
    assert "later.txt" in queued.text
    upload_id = queued.headers["location"].rsplit("/", 1)[-1]
    wait_for_status(live, upload_id)
    status_page = live.http.get(f"/uploads/{upload_id}", headers=headers)
    assert status_page.headers["content-type"].startswith("text/html")
    assert "completed" in status_page.text

    refused = live.http.post(
        "/upload-blocking/", content=b"x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert refused.status_code == 415
    assert refused.headers["content-type"].startswith("text/html")
    assert "multipart/form-data" in refused.text


def test_html_escapes_the_client_file_name(live: Live) -> None:
    response = live.http.post(
        "/upload-blocking/",
        files={"file": ("<img src=x onerror=alert(1)>.txt", b"x")},
        headers={"Accept": BROWSER_ACCEPT},
    )
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
        ("/", "get"): {"200"},
        ("/background", "get"): {"200"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method, sorted(responses))
    upload = paths["/upload-blocking/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    error_schema = paths["/uploads/{upload_id}"]["get"]["responses"]["404"]["content"][
        "application/json"
    ]
    assert error_schema["schema"]["$ref"].endswith("/ErrorBody")
