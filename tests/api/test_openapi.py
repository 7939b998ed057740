"""The OpenAPI description (and so /docs and /redoc) tells the truth.

Every example in `/openapi.json` of a real server is held against a real
answer of the same route and status: the same keys, the same JSON types, the
same `status` or `code`. Every operation lists the errors it can return, in
the one error shape; pages are not operations.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live, make_settings
from tests.rawhttp import MULTIPART_TYPE, post
from uploadsvc.errors import StorageUnavailable
from uploadsvc.pipeline import Pipeline
from uploadsvc.plugin import Options, Processor, Upload

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

UNKNOWN = "0" * 28  # a well-formed id no upload has
#: Values inside these keys are free-form maps (by plugin, by derived name):
#: only their type is compared.
FREE_FORM = {"results", "derived"}
#: Keys whose values the examples must show exactly as the routes answer them.
EXACT = {"status", "code"}

#: The error statuses each operation can return, beside its successes; every
#: operation also has `default` (any other error, same shape).
ERRORS = {
    ("/upload-blocking/", "post"): {"400", "404", "408", "413", "415", "422", "503", "507"},
    ("/upload-nonblocking/", "post"): {"400", "408", "413", "415", "503", "507"},
    ("/uploads", "get"): {"400", "503"},
    ("/uploads/{upload_id}", "get"): {"404", "503"},
    ("/uploads/{upload_id}", "delete"): {"404", "503"},
    ("/uploads/{upload_id}/content", "get"): {"404", "409", "416", "503"},
    ("/uploads/{upload_id}/derived/{name}", "get"): {"404", "503"},
    ("/healthz", "get"): {"503"},
}
SUCCESSES = {
    ("/upload-blocking/", "post"): {"201"},
    ("/upload-nonblocking/", "post"): {"202"},
    ("/uploads", "get"): {"200"},
    ("/uploads/{upload_id}", "get"): {"200"},
    ("/uploads/{upload_id}", "delete"): {"204"},
    ("/uploads/{upload_id}/content", "get"): {"200", "206", "304"},
    ("/uploads/{upload_id}/derived/{name}", "get"): {"200"},
    ("/healthz", "get"): {"200"},
}
ERROR_CODES = {
    "400": "bad_request",
    "404": "not_found",
    "409": "conflict",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "408": "request_timeout",
    "416": "range_not_satisfiable",
    "422": "rejected",
    "503": "storage_unavailable",
    "507": "insufficient_storage",
}

Key = tuple[str, str, str]  # path template, method, status


class Scripted(Processor[Options]):
    """Rejects `reject*` files; holds `hold*` files until `release` is set."""

    release = threading.Event()

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        name = upload.record.filename
        if name.startswith("reject"):
            upload.reject("not wanted here")
        deadline = time.monotonic() + 30
        while name.startswith("hold") and not self.release.is_set():
            assert time.monotonic() < deadline, "never released"
            await asyncio.sleep(0.01)
        return {}


@pytest.fixture
def scripted(
    live_factory: Any, backend: Backend, tmp_path: Path
) -> Iterator[tuple[Live, threading.Event]]:
    Scripted.release = threading.Event()
    settings = make_settings(backend, tmp_path, max_upload_bytes=1 << 20)
    pipeline = Pipeline([("scripted", Scripted(Options()))], timeout=60)
    live = live_factory(settings, pipeline=pipeline)
    try:
        yield live, Scripted.release
    finally:
        Scripted.release.set()  # nothing stays held past the test


def shape(value: Any, free: bool = False) -> Any:
    """The JSON types of `value`, keys included: what a client's parser relies on."""
    if isinstance(value, dict):
        if free:
            return "object"
        return {k: shape(v, k in FREE_FORM) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return {type(None): "null", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), "string" if isinstance(value, str) else repr(type(value))
    )


def exact_values(value: Any) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k in EXACT} if isinstance(value, dict) else {}


def documented_examples(spec: dict[str, Any]) -> dict[Key, Any]:
    """Every JSON example but those of `default` (a 500, which no request is meant to cause)."""
    found = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                media = response.get("content", {}).get("application/json", {})
                if "example" in media and status != "default":
                    found[(path, method, status)] = media["example"]
    return found


def upload(live: Live, path: str, name: str, data: bytes = b"hello") -> httpx.Response:
    return live.http.post(path, files={"file": (name, data, "text/plain")})


def answers_of_every_route(live: Live, release: threading.Event) -> dict[Key, httpx.Response]:
    """A real answer for each documented (route, status), the errors included."""
    got: dict[Key, httpx.Response] = {}
    one = upload(live, "/upload-blocking/", "first.txt")
    got["/upload-blocking/", "post", "201"] = one
    queued = upload(live, "/upload-nonblocking/", "second.txt")
    got["/upload-nonblocking/", "post", "202"] = queued
    wait_for_status(live, queued.json()["id"])
    upload_id = one.json()["id"]
    got["/uploads", "get", "200"] = live.http.get("/uploads", params={"limit": 1})
    got["/uploads/{upload_id}", "get", "200"] = live.http.get(f"/uploads/{upload_id}")
    got["/healthz", "get", "200"] = live.http.get("/healthz")

    for path in ("/upload-blocking/", "/upload-nonblocking/"):
        no_file = live.http.post(path, data={"note": "no file"}, files={"other": ("x", b"x")})
        got[path, "post", "400"] = no_file
        got[path, "post", "415"] = live.http.post(
            path, content=b"x", headers={"Content-Type": "text/plain"}
        )
        too_large = post(
            live.url + path, [], {"Content-Type": MULTIPART_TYPE, "Content-Length": str(4 << 20)}
        )
        got[path, "post", "413"] = httpx.Response(too_large.status, content=too_large.body)
    got["/uploads", "get", "400"] = live.http.get("/uploads", params={"limit": 0})
    got["/upload-blocking/", "post", "422"] = upload(live, "/upload-blocking/", "reject.txt")

    for method in ("get", "delete"):
        got["/uploads/{upload_id}", method, "404"] = live.http.request(
            method, f"/uploads/{UNKNOWN}"
        )
    got["/uploads/{upload_id}/content", "get", "404"] = live.http.get(f"/uploads/{UNKNOWN}/content")
    got["/uploads/{upload_id}/derived/{name}", "get", "404"] = live.http.get(
        f"/uploads/{upload_id}/derived/thumbnail"
    )
    got["/uploads/{upload_id}/content", "get", "416"] = live.http.get(
        f"/uploads/{upload_id}/content", headers={"Range": "bytes=9999-"}
    )

    # 409: the bytes of an upload still being processed.
    held = upload(live, "/upload-nonblocking/", "hold-background.txt").json()["id"]
    wait_for_status(live, held, "processing")
    got["/uploads/{upload_id}/content", "get", "409"] = live.http.get(f"/uploads/{held}/content")
    # 404 from a blocking upload: deleted while it is processed.
    with ThreadPoolExecutor(1) as pool:
        blocking = pool.submit(upload, live, "/upload-blocking/", "hold-blocking.txt")
        wait_until(lambda: _processing_id(live, "hold-blocking.txt") is not None)
        live.http.delete(f"/uploads/{_processing_id(live, 'hold-blocking.txt')}")
        got["/upload-blocking/", "post", "404"] = blocking.result(timeout=30)
    release.set()
    wait_for_status(live, held)
    return got


def _processing_id(live: Live, filename: str) -> str | None:
    for item in live.http.get("/uploads").json()["items"]:
        if item["filename"] == filename and item["status"] == "processing":
            return str(item["id"])
    return None


def answers_at_the_limits(live: Live, monkeypatch: pytest.MonkeyPatch) -> dict[Key, httpx.Response]:
    """408 from a body that stalls, 507 when the disk is fuller than min_free_bytes."""
    service = live.app.state.service
    got: dict[Key, httpx.Response] = {}
    monkeypatch.setattr(service, "body_timeout", 0.5)
    monkeypatch.setattr(service.admission, "min_free_bytes", 1 << 62)
    for path in ("/upload-blocking/", "/upload-nonblocking/"):
        got[path, "post", "507"] = upload(live, path, "full.txt")
    monkeypatch.setattr(service.admission, "min_free_bytes", 0)
    for path in ("/upload-blocking/", "/upload-nonblocking/"):
        stalled = post(  # half of what it announces, then silence
            live.url + path, [b"--x\r\n"], {"Content-Type": MULTIPART_TYPE, "Content-Length": "999"}
        )
        got[path, "post", "408"] = httpx.Response(stalled.status or 0, content=stalled.body)
    monkeypatch.undo()
    return got


def answers_while_the_storage_is_down(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> dict[Key, httpx.Response]:
    """503 from every route: every call into the storage fails as an outage would."""
    storage = live.app.state.service.storage
    done = live.http.post("/upload-blocking/", files={"file": ("kept.txt", b"x")}).json()["id"]

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable(f"storage {storage.url} failed: injected")

    async def down_async(*args: Any, **kwargs: Any) -> Any:
        down()

    async def down_blocks(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        down()
        yield b""

    for name in ("check", "list", "get_small", "put_small", "put_marker", "delete", "size"):
        monkeypatch.setattr(storage, name, down_async)
    monkeypatch.setattr(storage, "create", down)
    monkeypatch.setattr(storage, "read", down_blocks)
    got: dict[Key, httpx.Response] = {}
    for path in ("/upload-blocking/", "/upload-nonblocking/"):
        got[path, "post", "503"] = upload(live, path, "lost.txt")
    got["/uploads", "get", "503"] = live.http.get("/uploads")
    for method in ("get", "delete"):
        got["/uploads/{upload_id}", method, "503"] = live.http.request(method, f"/uploads/{done}")
    got["/uploads/{upload_id}/content", "get", "503"] = live.http.get(f"/uploads/{done}/content")
    got["/uploads/{upload_id}/derived/{name}", "get", "503"] = live.http.get(
        f"/uploads/{done}/derived/thumbnail"
    )
    got["/healthz", "get", "503"] = live.http.get("/healthz")
    monkeypatch.undo()
    return got


def test_every_example_matches_a_real_answer_of_its_route(
    scripted: tuple[Live, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, release = scripted
    examples = documented_examples(live.http.get("/openapi.json").json())
    answers = answers_of_every_route(live, release)
    answers |= answers_at_the_limits(live, monkeypatch)
    answers |= answers_while_the_storage_is_down(live, monkeypatch)
    assert set(examples) == set(answers), "an example without a real answer, or the reverse"
    for key, example in examples.items():
        real = answers[key]
        assert str(real.status_code) == key[2], (key, real.text)
        body = real.json()
        assert shape(body) == shape(example), key
        assert exact_values(body) == exact_values(example), key


def test_the_blocking_example_is_a_completed_record_and_the_background_one_queued(
    live: Live,
) -> None:
    paths = live.http.get("/openapi.json").json()["paths"]

    def example(path: str, status: str) -> Any:
        return paths[path]["post"]["responses"][status]["content"]["application/json"]["example"]

    assert example("/upload-blocking/", "201")["status"] == "completed"
    accepted = example("/upload-nonblocking/", "202")
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"/uploads/{accepted['id']}"


def test_every_operation_lists_its_errors_in_the_one_shape(live: Live) -> None:
    spec = live.http.get("/openapi.json").json()
    operations = {
        (path, method): operation["responses"]
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }
    for key, errors in ERRORS.items():
        assert set(operations[key]) == SUCCESSES[key] | errors | {"default"}, key
    for key, responses in operations.items():
        # Routes added later (not in ERRORS) still list their errors in the one shape.
        assert "default" in responses, key
        assert "422" not in responses or responses["422"]["description"] == "`rejected`", key
        for status, response in responses.items():
            if status == "default" or int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorBody"), (key, status)
            if status in ERROR_CODES:
                example = response["content"]["application/json"]["example"]
                assert example["code"] == ERROR_CODES[status], (key, status)
        default = responses["default"]["content"]["application/json"]["example"]
        assert default == {"detail": "internal error", "code": "internal_error"}, key
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_pages_are_not_api_operations(live: Live) -> None:
    spec = live.http.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            successes = [r for s, r in operation["responses"].items() if s.startswith("2")]
            media = {m for r in successes for m in r.get("content", {})}
            assert media != {"text/html"}, (path, method)
    assert "/" not in spec["paths"] and "/background" not in spec["paths"]
    for page in ("/", "/background"):
        assert live.http.get(page).status_code == 200  # still served, just not described
