"""Bad input and broken backends: the right error, and nothing left behind.

After every rejected or interrupted upload the backend holds no object, no
record, no part file and no pending multipart upload, the staging folder is
empty, and `GET /uploads` does not show it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import wait_until
from tests.conftest import Live
from tests.rawhttp import MULTIPART_TYPE, multipart, post
from uploadsvc.errors import StorageUnavailable

LIMIT = 32 << 20  # the live fixture's max_upload_bytes
PATHS = ["/upload-blocking/", "/upload-nonblocking/"]


def assert_nothing_left(live: Live) -> None:
    assert live.backend.leftovers() == []
    assert list(live.staging.iterdir()) == [] if live.staging.exists() else True
    assert live.http.get("/uploads").json()["items"] == []


def chunks(body: bytes, size: int = 256 << 10) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.parametrize("path", PATHS)
def test_declared_oversize_is_refused_before_reading(live: Live, path: str) -> None:
    """Only the headers are sent: an answer at all proves no body byte was awaited."""
    response = post(
        live.url + path, [], {"Content-Type": MULTIPART_TYPE, "Content-Length": str(LIMIT * 2)}
    )
    assert response.status == 413
    assert b'"code":"payload_too_large"' in response.body
    assert_nothing_left(live)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_oversize_is_stopped_while_streaming(
    live_factory: Any, tmp_path: Any, backend: Any, path: str, framing: str
) -> None:
    """The 413 comes once the count passes the limit, long before the body ends."""
    from tests.conftest import make_settings

    live = live_factory(make_settings(backend, tmp_path, max_upload_bytes=2 << 20))
    body = multipart(os.urandom(48 << 20))
    headers = {"Content-Type": MULTIPART_TYPE}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    else:
        # Under the limit plus framing allowance, so only the streaming count can catch it.
        headers["Content-Length"] = str((2 << 20) + 1000)
        body = body[: (2 << 20) + 1000]
    response = post(live.url + path, chunks(body), headers)
    assert response.status == 413
    assert b'"code":"payload_too_large"' in response.body
    if framing == "chunked":
        assert response.sent < len(body) // 2  # stopped while streaming, not after
    assert_nothing_left(live)


@pytest.mark.parametrize("path", PATHS)
def test_file_of_exactly_the_limit_is_accepted(live_factory: Any, path: str, tmp_path: Any) -> None:
    from tests.conftest import make_settings

    live = live_factory()
    small = live_factory(make_settings(live.backend, tmp_path, max_upload_bytes=1000))
    assert small.http.post(path, files={"file": ("a", b"x" * 1000)}).status_code in (201, 202)
    response = small.http.post(path, files={"file": ("b", b"x" * 1001)})
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("path", PATHS)
def test_truncated_body_is_400_and_leaves_nothing(live: Live, path: str) -> None:
    """Content-Length matches, but the closing boundary never comes."""
    body = multipart(os.urandom(3 << 20), closing=False)
    response = live.http.post(path, content=body, headers={"Content-Type": MULTIPART_TYPE})
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert "truncated" in response.json()["detail"]
    assert_nothing_left(live)


@pytest.mark.parametrize("path", PATHS)
def test_client_disconnect_mid_upload_leaves_nothing(live: Live, path: str) -> None:
    body = multipart(os.urandom(8 << 20))
    half = body[: len(body) // 2]
    response = post(
        live.url + path,
        chunks(half),
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
        close_early=True,
    )
    assert response.status is None
    # The server notices the disconnect on its own schedule: wait for the clean-up.
    wait_until(lambda: live.backend.leftovers() == [] and not any(live.staging.glob("*")))
    assert live.http.get("/uploads").json()["items"] == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"just text", "text/plain", 415, "unsupported_media_type"),
        (b'{"file": 1}', "application/json", 415, "unsupported_media_type"),
        (b"--x\r\n", "multipart/form-data", 400, "bad_request"),  # no boundary
        (b"garbage without boundaries", MULTIPART_TYPE, 400, "bad_request"),
        (multipart(b"abc", filename=""), MULTIPART_TYPE, 400, "bad_request"),
        (
            b"--"
            + MULTIPART_TYPE.split("=")[1].encode()
            + b'\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--'
            + MULTIPART_TYPE.split("=")[1].encode()
            + b"--\r\n",
            MULTIPART_TYPE,
            400,
            "bad_request",
        ),  # no file field
    ],
)
def test_malformed_requests(
    live: Live, path: str, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = live.http.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert set(response.json()) == {"detail", "code"}
    assert_nothing_left(live)


def test_two_file_fields_are_refused(live: Live) -> None:
    response = live.http.post(
        "/upload-blocking/", files=[("file", ("a", b"1" * 100)), ("file", ("b", b"2" * 100))]
    )
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")
    assert_nothing_left(live)


def test_backend_failure_during_blocking_upload_is_503_and_leaves_nothing(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = live.app.state.service.storage
    real_create = storage.create

    def failing_create(key: str) -> Any:
        writer = real_create(key)
        real_write = writer.write
        written = {"n": 0}

        async def write(block: bytes) -> None:
            written["n"] += 1
            if written["n"] == 3:
                raise StorageUnavailable(f"storage {storage.url} failed: injected")
            await real_write(block)

        writer.write = write  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(storage, "create", failing_create)
    response = live.http.post("/upload-blocking/", files={"file": ("x", os.urandom(20 << 20))})
    assert response.status_code == 503
    assert response.json()["code"] == "storage_unavailable"
    assert_nothing_left(live)


def test_unreachable_storage_is_503_everywhere(
    live_factory: Any, tmp_path: Any, backend: Any
) -> None:
    from tests.conftest import make_settings

    down = backend.unreachable()
    if down is None:
        pytest.skip(f"{backend.name} lives in this process: it cannot be unreachable")
    live = live_factory(make_settings(down, tmp_path, max_upload_bytes=LIMIT))
    health = live.http.get("/healthz")
    assert (health.status_code, health.json()["code"]) == (503, "storage_unavailable")
    for path in PATHS:
        response = live.http.post(path, files={"file": ("x", b"abc")})
        assert (response.status_code, response.json()["code"]) == (503, "storage_unavailable")
    assert list(live.staging.glob("*")) == []  # the staged copy went with the refusal
    assert live.http.get("/uploads").status_code == 503
