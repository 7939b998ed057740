"""The background path's promises, and the processing pipeline on both paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import stored_bytes, wait_for_status, wait_until
from tests.conftest import Live
from uploadsvc.errors import StorageUnavailable
from uploadsvc.pipeline import Pipeline, StoredUpload


class Gate:
    """Holds a coroutine until the test opens it (from the test's thread)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0

    async def wait(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiting += 1
        await self.opened.wait()

    def open(self) -> None:
        assert self.loop is not None, "nothing is waiting at the gate"
        self.loop.call_soon_threadsafe(self.opened.set)


def test_background_answers_before_storing_finishes(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 202 must not wait for the backend: hold the backend and get the answer anyway."""
    service = live.app.state.service
    gate = Gate()
    real_put = service.storage.put_local_file

    async def slow_put(key: str, path: Path) -> Any:
        await gate.wait()
        return await real_put(key, path)

    monkeypatch.setattr(service.storage, "put_local_file", slow_put)
    payload = os.urandom(3 << 20)
    response = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)})
    assert response.status_code == 202
    upload_id = response.json()["id"]
    held = wait_for_status(live, upload_id, "storing")
    assert held["status"] == "storing"
    assert live.http.get(f"/uploads/{upload_id}/content").status_code == 409
    refused = live.http.delete(f"/uploads/{upload_id}")  # would race the job storing it
    assert (refused.status_code, refused.json()["code"]) == (409, "conflict")
    gate.open()
    assert wait_for_status(live, upload_id)["status"] == "completed"
    assert stored_bytes(live.backend, upload_id) == payload


def test_background_task_is_handed_only_the_id(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard for fastapi#10857: no request or file object may reach the task."""
    service = live.app.state.service
    calls: list[tuple[Any, ...]] = []
    real = service.complete_background

    async def spy(*args: Any, **kwargs: Any) -> None:
        calls.append(args + tuple(kwargs.values()))
        await real(*args, **kwargs)

    monkeypatch.setattr(service, "complete_background", spy)
    payload = os.urandom(1 << 20)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    assert wait_for_status(live, upload_id)["status"] == "completed"
    assert calls == [(upload_id,)]
    assert stored_bytes(live.backend, upload_id) == payload


def test_storing_failure_marks_failed_and_keeps_the_staged_bytes(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accepted upload is never lost: if the backend fails, the staged copy stays."""
    service = live.app.state.service
    service.retry_delays = (0, 0)
    attempts = []

    async def broken_put(key: str, path: Path) -> Any:
        attempts.append(key)
        raise StorageUnavailable("storage failed: injected")

    monkeypatch.setattr(service.storage, "put_local_file", broken_put)
    payload = b"precious" * 1000
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "failed"
    assert "injected" in record["error"]
    assert attempts == [upload_id] * 3  # retried before giving up
    assert (live.staging / upload_id).read_bytes() == payload
    # Deleting the failed upload is the one way its staged bytes go.
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    assert list(live.staging.iterdir()) == []
    assert live.backend.leftovers() == []


class Recorder:
    """A processor that reads the stored bytes back and reports their digest."""

    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        digest = hashlib.sha256()
        async for block in upload.read():
            digest.update(block)
        return {"sha256": digest.hexdigest(), "status_seen": upload.record.status.value}


def test_a_backend_that_comes_back_gets_the_upload(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = live.app.state.service
    service.retry_delays = (0, 0)
    real_put = service.storage.put_local_file
    failures = [StorageUnavailable("storage failed: injected")]

    async def flaky_put(key: str, path: Path) -> Any:
        if failures:
            raise failures.pop()
        return await real_put(key, path)

    monkeypatch.setattr(service.storage, "put_local_file", flaky_put)
    payload = os.urandom(100_000)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    assert wait_for_status(live, upload_id)["status"] == "completed"
    assert stored_bytes(live.backend, upload_id) == payload


def test_deleting_a_queued_upload_stops_its_job(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = live.app.state.service
    gate = Gate()
    real_job = service.complete_background

    async def held_job(upload_id: str) -> None:
        await gate.wait()
        await real_job(upload_id)

    monkeypatch.setattr(service, "complete_background", held_job)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", b"x" * 1000)}).json()[
        "id"
    ]
    assert live.http.get(f"/uploads/{upload_id}").json()["status"] == "queued"
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    gate.open()
    wait_until(lambda: gate.opened.is_set())
    # The job finds the upload taken and stores nothing.
    wait_until(lambda: live.backend.leftovers() == [] and not any(live.staging.iterdir()))
    assert live.http.get(f"/uploads/{upload_id}").status_code == 404


def test_a_job_whose_record_cannot_be_written_stops_quietly_and_keeps_the_bytes(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage away for the bytes and the record: the job ends without an error escaping."""
    service = live.app.state.service
    service.retry_delays = ()
    upload_id = asyncio.run(_queued_upload(service, b"keep me"))

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("storage failed: injected")

    monkeypatch.setattr(service.storage, "put_local_file", down)
    real_put_small = service.storage.put_small
    calls = {"n": 0}

    async def put_small_then_down(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:  # queued -> storing works, nothing after it does
            raise StorageUnavailable("storage failed: injected")
        return await real_put_small(*args, **kwargs)

    monkeypatch.setattr(service.storage, "put_small", put_small_then_down)
    asyncio.run(service.complete_background(upload_id))  # must not raise
    monkeypatch.undo()
    assert live.http.get(f"/uploads/{upload_id}").json()["status"] == "storing"
    assert (live.staging / upload_id).read_bytes() == b"keep me"


async def _queued_upload(service: Any, data: bytes) -> str:
    """Accept an upload on the background path without running its job."""
    from tests.rawhttp import MULTIPART_TYPE, multipart

    async def body() -> Any:
        yield multipart(data)

    record = await service.upload_background(body(), MULTIPART_TYPE, None)
    return str(record.id)


class Unserialisable:
    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        return {"when": object()}


def test_a_result_that_is_not_json_fails_the_upload(live_factory: Any) -> None:
    live = live_factory(pipeline=Pipeline([("odd", Unserialisable())], timeout=30))
    record = live.http.post("/upload-blocking/", files={"file": ("f", b"x")}).json()
    assert record["status"] == "failed"
    assert "odd" in record["error"]


class Broken:
    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        raise ValueError("cannot parse this file")


@pytest.mark.parametrize("path", ["/upload-blocking/", "/upload-nonblocking/"])
def test_pipeline_results_land_in_the_record(live_factory: Any, path: str) -> None:
    live = live_factory(pipeline=Pipeline([("recorder", Recorder())], timeout=30))
    payload = os.urandom(2 << 20)
    response = live.http.post(path, files={"file": ("f", payload)})
    record = wait_for_status(live, response.json()["id"])
    assert record["status"] == "completed"
    assert record["results"] == {
        "recorder": {"sha256": hashlib.sha256(payload).hexdigest(), "status_seen": "processing"}
    }
    if path == "/upload-blocking/":
        assert response.json() == record  # the blocking answer is the final record


@pytest.mark.parametrize("path", ["/upload-blocking/", "/upload-nonblocking/"])
def test_failing_processor_fails_the_upload_but_keeps_the_bytes(
    live_factory: Any, path: str
) -> None:
    live = live_factory(
        pipeline=Pipeline([("broken", Broken()), ("recorder", Recorder())], timeout=30)
    )
    payload = b"data" * 100
    upload_id = live.http.post(path, files={"file": ("f", payload)}).json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "failed"
    assert "broken" in record["error"] and "cannot parse this file" in record["error"]
    assert record["results"] == {}
    assert stored_bytes(live.backend, upload_id) == payload
    assert live.http.get(record["url"]).status_code == 409
