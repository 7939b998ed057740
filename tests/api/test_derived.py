"""Derived files and rejections, on every backend: what a processor makes is owned by
its upload; what a processor refuses leaves nothing but its record."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live
from uploadsvc.leftovers import remove_leftovers
from uploadsvc.models import new_id
from uploadsvc.pipeline import Pipeline
from uploadsvc.plugin import Options, Processor, Upload

PATHS = ["/upload-blocking/", "/upload-nonblocking/"]


class Previewing(Processor[Options]):
    """Derives `preview` (the first bytes, upper-cased) and `report` (a JSON note)."""

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        head = b"".join([b async for b in upload.read(0, 16)])
        async with upload.derive("preview", "text/plain") as out:
            await out.write(head.upper())
        async with upload.derive("report", "application/json") as out:
            await out.write(b'{"ok": true}')
        return {"head": len(head)}


class Refusing(Processor[Options]):
    """Derives a file, then refuses the upload: neither may stay."""

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        async with upload.derive("preview", "text/plain") as out:
            await out.write(b"half-made")
        upload.reject("contains the word 'forbidden'")


class Crashing(Processor[Options]):
    async def process(self, upload: Upload) -> Mapping[str, Any]:
        async with upload.derive("preview", "text/plain") as out:
            await out.write(b"made before the crash")
        raise RuntimeError("decoder crashed")


def _live(live_factory: Callable[..., Live], *steps: Processor[Any]) -> Live:
    named = [(type(step).__name__.lower(), step) for step in steps]
    return live_factory(pipeline=Pipeline(named, timeout=30))


def _keys_of(backend: Backend, upload_id: str) -> list[str]:
    return [k for k in backend.leftovers() if upload_id in k]


@pytest.mark.parametrize("path", PATHS)
def test_derived_files_are_listed_served_and_removed_with_the_upload(
    live_factory: Callable[..., Live], backend: Backend, path: str
) -> None:
    live = _live(live_factory, Previewing(Options()))
    upload_id = live.http.post(path, files={"file": ("notes.txt", b"hello derived world")}).json()[
        "id"
    ]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "completed", record
    assert record["derived"] == {
        "preview": f"/uploads/{upload_id}/derived/preview",
        "report": f"/uploads/{upload_id}/derived/report",
    }
    assert "derived_types" not in record  # bookkeeping, not the client's view

    preview = live.http.get(record["derived"]["preview"])
    assert preview.status_code == 200
    assert preview.content == b"HELLO DERIVED WO"
    assert preview.headers["content-type"] == "text/plain"  # no charset we never declared
    assert preview.headers["x-content-type-options"] == "nosniff"
    assert preview.headers["content-security-policy"] == "sandbox"
    assert preview.headers["content-disposition"].startswith(
        'attachment; filename="notes.txt.preview.txt"'
    )
    head = live.http.head(record["derived"]["report"])
    assert head.status_code == 200 and head.headers["content-length"] == "12"
    assert head.content == b""

    assert live.http.get(f"/uploads/{upload_id}/derived/thumbnail").status_code == 404
    assert live.http.get(f"/uploads/{'0' * 28}/derived/preview").json()["code"] == "not_found"

    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    assert _keys_of(backend, upload_id) == []
    assert live.http.get(record["derived"]["preview"]).status_code == 404


def test_a_rejected_blocking_upload_answers_422_and_keeps_only_its_record(
    live_factory: Callable[..., Live], backend: Backend
) -> None:
    live = _live(live_factory, Refusing(Options()))
    answer = live.http.post("/upload-blocking/", files={"file": ("f.bin", os.urandom(4096))})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "rejected"
    assert body["detail"] == "rejected by refusing: contains the word 'forbidden'"
    upload_id = body["id"]
    assert answer.headers["location"] == f"/uploads/{upload_id}"

    record = live.http.get(f"/uploads/{upload_id}").json()
    assert record["status"] == "failed" and record["rejected"] is True
    assert record["error"] == body["detail"]
    assert record["derived"] == {}
    assert live.http.get(record["url"]).status_code == 409
    assert [r["id"] for r in live.http.get("/uploads").json()["items"]] == [upload_id]
    # The record only: no bytes, no derived file.
    assert _keys_of(backend, upload_id) == [f"{upload_id}.json"]


def test_a_rejected_background_upload_ends_failed_with_nothing_staged_or_stored(
    live_factory: Callable[..., Live], backend: Backend
) -> None:
    live = _live(live_factory, Refusing(Options()))
    answer = live.http.post("/upload-nonblocking/", files={"file": ("f.bin", b"x" * 1000)})
    assert answer.status_code == 202
    upload_id = answer.json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "failed" and record["rejected"] is True
    wait_until(lambda: upload_id not in backend.leftovers())
    assert not any(k.startswith("derived.") for k in backend.leftovers())
    wait_until(lambda: not (live.staging / upload_id).exists())


@pytest.mark.parametrize("path", PATHS)
def test_a_failed_run_leaves_no_derived_file_and_keeps_the_bytes(
    live_factory: Callable[..., Live], backend: Backend, path: str
) -> None:
    live = _live(live_factory, Crashing(Options()))
    answer = live.http.post(path, files={"file": ("f", b"keep these bytes")})
    assert answer.status_code in (201, 202)
    record = wait_for_status(live, answer.json()["id"])
    assert record["status"] == "failed" and record["rejected"] is False
    assert record["error"] == "processor 'crashing' failed: decoder crashed"
    assert not any(k.startswith("derived.") for k in backend.leftovers())
    assert record["id"] in backend.leftovers()


def test_the_sweep_removes_derived_files_no_record_owns(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    """A processor still writing when its upload was deleted leaves an orphan: the
    leftovers pass removes it once older than the grace period, and nothing else."""
    live = _live(live_factory, Previewing(Options()))
    kept = live.http.post("/upload-blocking/", files={"file": ("f", b"still here")}).json()
    service = live.app.state.service
    orphan = new_id()

    async def orphan_and_sweep() -> int:
        async with service.storage.create(f"derived.{orphan}.preview") as writer:
            await writer.write(b"orphaned")
            await writer.commit()
        return await remove_leftovers(service, grace=0)

    asyncio.run(orphan_and_sweep())
    assert not any(orphan in k for k in backend.leftovers())
    assert live.http.get(kept["derived"]["preview"]).content == b"STILL HERE"


class Hanging(Processor[Options]):
    async def process(self, upload: Upload) -> Mapping[str, Any]:
        async with upload.derive("preview", "text/plain") as out:
            await out.write(b"started")
        await asyncio.Event().wait()  # never set
        return {}


@pytest.mark.parametrize("path", PATHS)
def test_a_hanging_processor_fails_at_its_timeout_while_the_service_keeps_serving(
    live_factory: Callable[..., Live], backend: Backend, path: str
) -> None:
    live = live_factory(pipeline=Pipeline([("hanging", Hanging(Options()))], timeout=1.0))
    answer = live.http.post(path, files={"file": ("f", b"bytes")})
    if path == "/upload-nonblocking/":
        assert live.http.get("/healthz").status_code == 200
    record = wait_for_status(live, answer.json()["id"])
    assert record["status"] == "failed"
    assert record["error"] == "processor 'hanging' failed: timed out after 1 s"
    assert not any(k.startswith("derived.") for k in backend.leftovers())
    assert live.http.get("/healthz").status_code == 200
    assert live.http.post(path, files={"file": ("g", b"more")}).status_code in (201, 202)
