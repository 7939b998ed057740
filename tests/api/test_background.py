"""The background path's promises, and the processing pipeline on both paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import stored_bytes, wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live, make_settings
from tests.rawhttp import MULTIPART_TYPE, multipart_stream
from uploadsvc.errors import StorageUnavailable
from uploadsvc.pipeline import Pipeline
from uploadsvc.plugin import Options, Processor, Upload


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


def _hold_storing(live: Live, monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Hold every move from staging into storage until the gate opens."""
    storage = live.app.state.service.storage
    gate = Gate()
    real_adopt = storage.adopt

    async def held_adopt(key: str, source: Any) -> Any:
        await gate.wait()
        return await real_adopt(key, source)

    monkeypatch.setattr(storage, "adopt", held_adopt)
    return gate


def _fast_jobs(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path, **jobs: Any
) -> Live:
    """A live app whose retries come at once (and with `jobs` settings)."""
    jobs = {"backoff_seconds": 0.01, **jobs}
    return live_factory(make_settings(backend, tmp_path, jobs, max_upload_bytes=32 << 20))


def test_background_answers_before_storing_finishes(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 202 must not wait for the backend: hold the backend and get the answer anyway."""
    gate = _hold_storing(live, monkeypatch)
    payload = os.urandom(3 << 20)
    response = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)})
    assert response.status_code == 202
    upload_id = response.json()["id"]
    held = wait_for_status(live, upload_id, "storing")
    assert held["status"] == "storing" and "job" not in held
    assert live.http.get(f"/uploads/{upload_id}/content").status_code == 409
    gate.open()
    assert wait_for_status(live, upload_id)["status"] == "completed"
    assert stored_bytes(live.backend, upload_id) == payload


def test_deleting_an_upload_while_it_is_stored_stops_the_job_and_leaves_nothing(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _hold_storing(live, monkeypatch)
    upload_id = live.http.post(
        "/upload-nonblocking/", files={"file": ("f", os.urandom(1 << 20))}
    ).json()["id"]
    wait_for_status(live, upload_id, "storing")
    wait_until(lambda: gate.waiting == 1)
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    assert live.http.get(f"/uploads/{upload_id}").status_code == 404
    wait_until(lambda: live.backend.leftovers() == [] and not any(live.staging.iterdir()))


def test_background_task_is_handed_only_the_id(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard for fastapi#10857: no request or file object may reach the task."""
    jobs = live.app.state.jobs
    calls: list[tuple[Any, ...]] = []
    real = jobs.nudge

    async def spy(*args: Any, **kwargs: Any) -> None:
        calls.append(args + tuple(kwargs.values()))
        await real(*args, **kwargs)

    monkeypatch.setattr(jobs, "nudge", spy)
    payload = os.urandom(1 << 20)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    assert wait_for_status(live, upload_id)["status"] == "completed"
    assert calls == [(upload_id,)]
    assert stored_bytes(live.backend, upload_id) == payload


def test_storing_failure_retries_then_fails_and_keeps_the_staged_bytes(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An accepted upload is never lost: if the backend keeps failing, the staged copy stays."""
    live = _fast_jobs(live_factory, backend, tmp_path, attempts=3)
    attempts = []

    async def broken_adopt(key: str, source: Any) -> Any:
        attempts.append(key)
        raise StorageUnavailable("storage failed: injected")

    monkeypatch.setattr(live.app.state.service.storage, "adopt", broken_adopt)
    payload = b"precious" * 1000
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "failed"
    assert record["error"] == "storing failed after 3 attempts: storage failed: injected"
    assert record["attempts"] == 3
    assert attempts == [upload_id] * 3
    assert (live.staging / upload_id).read_bytes() == payload
    # Deleting the failed upload is the one way its staged bytes go.
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    assert list(live.staging.iterdir()) == []
    assert live.backend.leftovers() == []


def test_a_backend_that_comes_back_gets_the_upload(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = _fast_jobs(live_factory, backend, tmp_path, attempts=3)
    storage = live.app.state.service.storage
    real_adopt = storage.adopt
    failures = [StorageUnavailable("storage failed: injected")] * 2

    async def flaky_adopt(key: str, source: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_adopt(key, source)

    monkeypatch.setattr(storage, "adopt", flaky_adopt)
    payload = os.urandom(100_000)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    record = wait_for_status(live, upload_id)
    assert (record["status"], record["attempts"]) == ("completed", 2)
    assert stored_bytes(live.backend, upload_id) == payload


def test_deleting_a_queued_upload_stops_its_job(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = live.app.state.jobs
    gate = Gate()
    ran: list[str] = []

    async def held_nudge(upload_id: str) -> None:
        await gate.wait()
        await jobs.run(upload_id)  # the job itself, awaited, not just queued
        ran.append(upload_id)

    monkeypatch.setattr(jobs, "nudge", held_nudge)
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", b"x" * 1000)}).json()[
        "id"
    ]
    assert live.http.get(f"/uploads/{upload_id}").json()["status"] == "queued"
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    gate.open()
    wait_until(lambda: ran == [upload_id])
    # The job found the upload gone and stored nothing.
    assert live.backend.leftovers() == [] and not any(live.staging.iterdir())
    assert live.http.get(f"/uploads/{upload_id}").status_code == 404


def test_a_delete_on_another_instance_stops_a_job_mid_store_and_leaves_nothing(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job (first instance) commits the object after the DELETE (second instance)
    removed everything; its next record write finds the record gone, and it removes
    the object itself."""
    settings = make_settings(backend, tmp_path, max_upload_bytes=32 << 20)
    first, second = live_factory(settings), live_factory(settings)
    gate = _hold_storing(first, monkeypatch)
    upload_id = first.http.post(
        "/upload-nonblocking/", files={"file": ("f", os.urandom(1 << 20))}
    ).json()["id"]
    wait_until(lambda: gate.waiting == 1)
    assert second.http.delete(f"/uploads/{upload_id}").status_code == 204
    gate.open()
    wait_until(lambda: backend.leftovers() == [] and not any(first.staging.iterdir()))
    assert first.http.get(f"/uploads/{upload_id}").status_code == 404


def test_a_blocking_upload_slower_than_the_lease_is_processed_once(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    """The lease starts when the record is written, not when the body starts: a body
    that outlasts a lease must not leave a record any sweep may take."""
    runs: list[str] = []

    class Counting(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            runs.append(upload.record.id)
            await asyncio.sleep(0.5)
            return {}

    settings = make_settings(backend, tmp_path, {"lease_seconds": 0.6}, max_upload_bytes=8 << 20)
    live = live_factory(
        settings, pipeline=Pipeline([("counting", Counting(Options()))], timeout=30)
    )

    def slow_body() -> Any:
        for block in multipart_stream(iter([os.urandom(1 << 20)] * 3)):
            yield block
            time.sleep(0.5)  # 2 s in all: three leases

    answer = live.http.post(
        "/upload-blocking/", content=slow_body(), headers={"Content-Type": MULTIPART_TYPE}
    )
    assert answer.status_code == 201 and answer.json()["status"] == "completed", answer.text
    time.sleep(1.0)  # a sweep that took the record would have run it again by now
    assert runs == [answer.json()["id"]]


def test_a_job_that_cannot_write_its_record_is_taken_over_once_its_lease_runs_out(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage away for the bytes and the record: nothing is written, nothing lost; the
    sweep resumes the upload when the lease expires and the storage is back."""
    live = _fast_jobs(live_factory, backend, tmp_path, lease_seconds=0.6)
    storage = live.app.state.service.storage
    outage = {"on": True, "adopts": 0}
    real_adopt, real_put_small = storage.adopt, storage.put_small

    async def adopt(key: str, source: Any) -> Any:
        outage["adopts"] += 1
        if outage["on"]:
            raise StorageUnavailable("storage failed: injected")
        return await real_adopt(key, source)

    async def put_small(key: str, data: bytes, **conditions: Any) -> Any:
        if outage["on"] and outage["adopts"]:  # the claim works, nothing after it
            raise StorageUnavailable("storage failed: injected")
        return await real_put_small(key, data, **conditions)

    monkeypatch.setattr(storage, "adopt", adopt)
    monkeypatch.setattr(storage, "put_small", put_small)
    payload = b"keep me"
    upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()["id"]
    wait_until(lambda: outage["adopts"] >= 1)
    assert live.http.get(f"/uploads/{upload_id}").json()["status"] == "storing"
    assert (live.staging / upload_id).read_bytes() == payload
    outage["on"] = False
    record = wait_for_status(live, upload_id)
    assert record["status"] == "completed"
    assert stored_bytes(live.backend, upload_id) == payload


class Recorder(Processor[Options]):
    """A processor that reads the stored bytes back and reports their digest."""

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        digest = hashlib.sha256()
        async for block in upload.read():
            digest.update(block)
        return {"sha256": digest.hexdigest(), "status_seen": upload.record.status.value}


class Unserialisable(Processor[Options]):
    async def process(self, upload: Upload) -> Mapping[str, Any]:
        return {"when": object()}


def test_a_result_that_is_not_json_fails_the_upload(live_factory: Any) -> None:
    live = live_factory(pipeline=Pipeline([("odd", Unserialisable(Options()))], timeout=30))
    record = live.http.post("/upload-blocking/", files={"file": ("f", b"x")}).json()
    assert record["status"] == "failed"
    assert "odd" in record["error"]


class Broken(Processor[Options]):
    async def process(self, upload: Upload) -> Mapping[str, Any]:
        raise ValueError("cannot parse this file")


@pytest.mark.parametrize("path", ["/upload-blocking/", "/upload-nonblocking/"])
def test_pipeline_results_land_in_the_record(live_factory: Any, path: str) -> None:
    live = live_factory(pipeline=Pipeline([("recorder", Recorder(Options()))], timeout=30))
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
        pipeline=Pipeline(
            [("broken", Broken(Options())), ("recorder", Recorder(Options()))], timeout=30
        )
    )
    payload = b"data" * 100
    upload_id = live.http.post(path, files={"file": ("f", payload)}).json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "failed"
    assert "broken" in record["error"] and "cannot parse this file" in record["error"]
    assert record["results"] == {}
    assert stored_bytes(live.backend, upload_id) == payload
    assert live.http.get(record["url"]).status_code == 409


def _abandoned_record(live: Live, payload: bytes, attempts: int) -> str:
    """A background upload whose run died holding it: staged, `storing`, lease expired."""
    from datetime import UTC, datetime, timedelta

    from uploadsvc.models import Job, Status, StoredRecord, new_id, now

    service = live.app.state.service
    upload_id = new_id()
    record = StoredRecord(
        id=upload_id,
        filename="f",
        size=len(payload),
        content_type="application/octet-stream",
        sha256=hashlib.sha256(payload).hexdigest(),
        status=Status.storing,
        created_at=now(),
        url=f"/uploads/{upload_id}/content",
        attempts=attempts,
        job=Job(owner="dead-host/1/x/y", lease_until=datetime.now(UTC) - timedelta(seconds=1)),
    )

    async def write() -> None:
        async with service.staging.create(upload_id) as writer:
            await writer.write(payload)
            await writer.commit()
        await service.records.create(record)

    asyncio.run(write())
    return upload_id


def test_a_run_that_died_counts_as_an_attempt(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    """Taking over an expired lease counts the dead run's attempt; an upload that keeps
    killing its process ends `failed` instead of taking down instance after instance."""
    settings = make_settings(backend, tmp_path, {"attempts": 3, "lease_seconds": 0.6})
    live = live_factory(settings)
    recovers = _abandoned_record(live, b"fine", attempts=0)
    poison = _abandoned_record(live, b"poison", attempts=2)
    recovered = wait_for_status(live, recovers)
    assert (recovered["status"], recovered["attempts"]) == ("completed", 1)  # the dead run
    failed = wait_for_status(live, poison)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["error"].startswith("storing failed after 3 attempts: the instance working")
    assert (live.staging / poison).read_bytes() == b"poison"  # kept until deleted


def test_an_unreadable_record_does_not_stop_the_sweep(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    """A record this version cannot read (say, written by a newer one) is skipped; the
    sweep still resumes the others."""
    from uploadsvc.models import new_id
    from uploadsvc.records import active_key, record_key

    live = live_factory(make_settings(backend, tmp_path, {"lease_seconds": 0.6}))
    storage = live.app.state.service.storage
    odd = new_id()

    async def write_odd() -> None:
        await storage.put_small(active_key(odd), b"")
        await storage.put_small(record_key(odd), b'{"status": "from-the-future"}')

    asyncio.run(write_odd())
    resumed = _abandoned_record(live, b"resume me", attempts=0)
    assert wait_for_status(live, resumed)["status"] == "completed"
