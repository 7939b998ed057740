"""Both upload paths end-to-end over real HTTP (uvicorn on 127.0.0.1), every backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import stored_bytes, wait_for_status
from tests.conftest import Backend, Live, make_settings
from tests.rawhttp import MULTIPART_TYPE, multipart, multipart_stream
from uploadsvc.models import ID_PATTERN
from uploadsvc.records import index_key

SIZE = 5 * 1024 * 1024 + 123  # several MiB, not a multiple of any block size


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def test_blocking_upload_stores_exact_bytes(live: Live, payload: bytes) -> None:
    response = live.http.post(
        "/upload-blocking/", files={"file": ("report.pdf", payload, "application/pdf")}
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["status"] == "completed"
    assert record["size"] == SIZE
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["filename"] == "report.pdf"
    assert record["content_type"] == "application/pdf"
    assert record["url"] == f"/uploads/{record['id']}/content"
    assert record["error"] is None and record["results"] == {}
    assert record["created_at"].endswith("Z") and record["completed_at"].endswith("Z")
    assert response.headers["location"] == f"/uploads/{record['id']}"
    assert stored_bytes(live.backend, record["id"]) == payload
    assert live.http.get(f"/uploads/{record['id']}").json() == record


def test_background_upload_completes_with_exact_bytes(live: Live, payload: bytes) -> None:
    response = live.http.post("/upload-nonblocking/", files={"file": ("big.bin", payload)})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"id", "status", "status_url"}
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"/uploads/{accepted['id']}"
    record = wait_for_status(live, accepted["id"])
    assert record["status"] == "completed", record
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()
    assert stored_bytes(live.backend, accepted["id"]) == payload
    assert list(live.staging.iterdir()) == []  # staging is emptied once stored


def test_empty_file_is_a_valid_upload(live: Live) -> None:
    response = live.http.post("/upload-blocking/", files={"file": ("empty.txt", b"")})
    assert response.status_code == 201
    assert response.json()["size"] == 0
    assert response.json()["sha256"] == hashlib.sha256(b"").hexdigest()


def test_hostile_file_name_is_reduced_and_never_used_as_key(live: Live) -> None:
    # Sent by hand: httpx would percent-encode the control character.
    response = live.http.post(
        "/upload-blocking/",
        content=multipart(b"x", filename="../../etc/pass\x01wd\x00"),
        headers={"Content-Type": MULTIPART_TYPE},
    )
    assert response.status_code == 201
    record = response.json()
    assert record["filename"] == "passwd"
    # The bytes, the record, and the record's entry in the listing index.
    upload_id = record["id"]
    assert live.backend.contents() == sorted([upload_id, f"{upload_id}.json", index_key(upload_id)])


def test_ids_are_opaque_and_unique(live: Live) -> None:
    import re

    ids = {
        live.http.post("/upload-blocking/", files={"file": ("a", b"1")}).json()["id"]
        for _ in range(3)
    }
    assert len(ids) == 3
    assert all(re.match(ID_PATTERN, i) for i in ids)


def test_list_is_newest_first_and_pages(live: Live) -> None:
    ids = [
        live.http.post("/upload-blocking/", files={"file": (f"f{i}", b"%d" % i)}).json()["id"]
        for i in range(5)
    ]
    first = live.http.get("/uploads", params={"limit": 2}).json()
    assert [r["id"] for r in first["items"]] == ids[::-1][:2]
    second = live.http.get("/uploads", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in second["items"]] == ids[::-1][2:4]
    last = live.http.get("/uploads", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [r["id"] for r in last["items"]] == [ids[0]]
    assert last["next_cursor"] is None
    everything = live.http.get("/uploads").json()
    assert [r["id"] for r in everything["items"]] == ids[::-1]


def test_list_rejects_bad_parameters(live: Live) -> None:
    for params in ({"limit": 0}, {"limit": "x"}, {"cursor": "../x"}):
        response = live.http.get("/uploads", params=params)
        assert response.status_code == 400
        assert response.json()["code"] == "bad_request"


def test_download_whole_and_ranges(live: Live, payload: bytes) -> None:
    record = live.http.post("/upload-blocking/", files={"file": ("résumé.bin", payload)}).json()
    url = record["url"]
    whole = live.http.get(url)
    assert whole.status_code == 200
    assert whole.content == payload
    assert whole.headers["content-length"] == str(SIZE)
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["content-security-policy"] == "sandbox"
    assert whole.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in whole.headers["content-disposition"]
    assert whole.headers["etag"] == f'"{record["sha256"]}"'
    assert whole.headers["accept-ranges"] == "bytes"

    part = live.http.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == payload[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{SIZE}"

    tail = live.http.get(url, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, payload[-10:])

    outside = live.http.get(url, headers={"Range": f"bytes={SIZE}-"})
    assert outside.status_code == 416
    assert outside.json()["code"] == "range_not_satisfiable"
    assert outside.headers["content-range"] == f"bytes */{SIZE}"

    stale = live.http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (stale.status_code, len(stale.content)) == (200, SIZE)

    cached = live.http.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    listed = live.http.get(url, headers={"If-None-Match": f'"other", W/{whole.headers["etag"]}'})
    assert listed.status_code == 304
    assert live.http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    reads: list[str] = []
    storage = live.app.state.service.storage
    real_read = storage.read
    storage.read = lambda key, *a: reads.append(key) or real_read(key, *a)
    try:
        head = live.http.head(url)
    finally:
        storage.read = real_read
    assert (head.status_code, head.headers["content-length"], head.content) == (200, str(SIZE), b"")
    assert reads == []  # HEAD answers from the record: not one byte read


def test_download_keeps_the_declared_type_without_inventing_a_charset(live: Live) -> None:
    record = live.http.post(
        "/upload-blocking/", files={"file": ("latin.txt", "é".encode("latin-1"), "text/plain")}
    ).json()
    response = live.http.get(record["url"])
    assert response.headers["content-type"] == "text/plain"
    assert response.content == b"\xe9"


def test_delete_removes_bytes_and_record(live: Live) -> None:
    record = live.http.post("/upload-blocking/", files={"file": ("gone.txt", b"bye")}).json()
    assert live.http.delete(f"/uploads/{record['id']}").status_code == 204
    assert live.http.get(f"/uploads/{record['id']}").status_code == 404
    assert live.http.get(record["url"]).status_code == 404
    assert live.http.get("/uploads").json()["items"] == []
    assert live.backend.leftovers() == []
    again = live.http.delete(f"/uploads/{record['id']}")
    assert (again.status_code, again.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize("path", ["/uploads/{id}", "/uploads/{id}/content"])
@pytest.mark.parametrize("upload_id", ["0" * 28, "nope", "..%2F..%2Fetc"])
def test_unknown_ids_are_404(live: Live, path: str, upload_id: str) -> None:
    response = live.http.get(path.format(id=upload_id))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert set(response.json()) == {"detail", "code"}


def test_healthz(live: Live) -> None:
    response = live.http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/upload-blocking/", "/upload-nonblocking/"])
def test_memory_stays_flat_while_a_large_file_streams(
    live_factory: Any, backend: Backend, tmp_path: Path, path: str
) -> None:
    """Python allocations during a 96 MiB upload stay a few blocks or parts, not the file.

    tracemalloc counts every allocation in this process, server threads
    included (moto runs in its own process); holding the file whole anywhere
    would show as >= 96 MiB.
    """
    if backend.writer_memory is None:
        pytest.skip(f"{backend.name} keeps the file in memory by design")
    size = 96 << 20
    live = live_factory(make_settings(backend, tmp_path, max_upload_bytes=size))
    block = os.urandom(1 << 20)
    # What the backend's writer holds (S3: the parts in flight, one filling,
    # one being copied), and 16 MiB for the rest (botocore's models loaded on
    # first use, the receive blocks).
    bound = backend.writer_memory + (16 << 20)

    tracemalloc.start()
    try:
        response = live.http.post(
            path,
            content=multipart_stream(block for _ in range(size >> 20)),
            headers={"Content-Type": MULTIPART_TYPE},
        )
        assert response.status_code in (201, 202), response.text
        record = wait_for_status(live, response.json()["id"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record["size"] == size
    assert peak < bound < size, f"peak {peak / 2**20:.1f} MiB of Python allocations"


def test_download_of_vanished_bytes_is_an_error_not_an_empty_200(live: Live) -> None:
    """The first block is read before answering, so a missing object is a 404."""
    record = live.http.post("/upload-blocking/", files={"file": ("f", b"data")}).json()
    asyncio.run(live.app.state.service.storage.delete(record["id"]))  # lost behind our back
    response = live.http.get(record["url"])
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_health_and_records_answer_while_bulk_work_fills_its_pool(live: Live) -> None:
    """Hashing and writing run on their own pool: short calls never queue behind them."""
    from uploadsvc.offload import BULK

    record = live.http.post("/upload-blocking/", files={"file": ("f", b"x")}).json()
    release = threading.Event()
    blockers = [BULK.submit(release.wait, 30) for _ in range(BULK._max_workers)]
    try:
        assert live.http.get("/healthz", timeout=10).status_code == 200
        assert live.http.get(f"/uploads/{record['id']}", timeout=10).status_code == 200
    finally:
        release.set()
        for blocker in blockers:
            blocker.result(timeout=10)
