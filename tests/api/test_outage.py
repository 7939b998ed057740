"""A store that goes away while the service runs, on every backend on the network.

The store is reached through a proxy (tests/faults.py) that the test cuts,
or limits so that records (small) get through and the bytes do not: /healthz
says so and recovers; an outage that outlasts the retries fails the upload
saying why and keeps its staged bytes; a shorter one ends completed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import stored_bytes, wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live, make_settings
from tests.faults import Proxy, proxy_to
from uploadsvc.leftovers import remove_leftovers
from uploadsvc.offload import SETTLE_LIMIT
from uploadsvc.storage import sftplock


def test_healthz_is_503_while_the_store_is_down_and_200_when_it_is_back(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path
) -> None:
    if backend.endpoint is None:
        pytest.skip(f"{backend.name} is not on the network: it cannot go down")
    with proxy_to(backend.endpoint) as proxy:
        through = backend.via(proxy.address)
        assert through is not None
        live = live_factory(make_settings(through, tmp_path, max_upload_bytes=1 << 20))
        assert live.http.get("/healthz").status_code == 200
        proxy.cut()
        down = live.http.get("/healthz")
        assert (down.status_code, down.json()["code"]) == (503, "storage_unavailable")
        proxy.restore()
        assert live.http.get("/healthz").status_code == 200
        assert live.http.post("/upload-blocking/", files={"file": ("a", b"abc")}).status_code == 201


def _through_limited_proxy(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path, **jobs: Any
) -> tuple[Live, Proxy]:
    """A live app whose store is reached through a proxy that can refuse large writes."""
    if backend.endpoint is None:
        pytest.skip(f"{backend.name} is not on the network: it cannot go down")
    proxy = Proxy(backend.endpoint)
    through = backend.via(proxy.address)
    assert through is not None
    jobs = {"backoff_seconds": 0.05, **jobs}
    return live_factory(make_settings(through, tmp_path, jobs, max_upload_bytes=8 << 20)), proxy


def test_an_outage_longer_than_the_retries_fails_the_upload_saying_why(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path
) -> None:
    """Records still get through (small), the bytes never do: every attempt fails."""
    live, proxy = _through_limited_proxy(backend, live_factory, tmp_path, attempts=3)
    try:
        proxy.limit(256 << 10)
        payload = os.urandom(2 << 20)
        answer = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)})
        assert answer.status_code == 202
        record = wait_for_status(live, answer.json()["id"], timeout=90)
        assert record["status"] == "failed" and record["attempts"] == 3
        assert record["error"].startswith("storing failed after 3 attempts: "), record["error"]
        assert (live.staging / record["id"]).read_bytes() == payload  # kept until deleted
        proxy.restore()
        assert live.http.delete(f"/uploads/{record['id']}").status_code == 204
        assert not any(live.staging.iterdir())
        wait_until(lambda: backend.leftovers() == [])
    finally:
        proxy.close()


def test_an_outage_shorter_than_the_retries_ends_completed(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path
) -> None:
    live, proxy = _through_limited_proxy(
        backend, live_factory, tmp_path, attempts=10, backoff_seconds=0.5
    )
    try:
        proxy.limit(256 << 10)
        payload = os.urandom(2 << 20)
        upload_id = live.http.post("/upload-nonblocking/", files={"file": ("f", payload)}).json()[
            "id"
        ]
        wait_until(lambda: live.http.get(f"/uploads/{upload_id}").json()["attempts"] >= 1, 60)
        proxy.restore()
        record = wait_for_status(live, upload_id, timeout=90)
        assert record["status"] == "completed" and record["attempts"] >= 1
        assert stored_bytes(backend, upload_id) == payload
    finally:
        proxy.close()


@pytest.mark.parametrize("path", ["/upload-blocking/", "/upload-nonblocking/"])
def test_a_store_that_hangs_gets_a_503_in_bounded_time_and_keeps_nothing(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path, path: str
) -> None:
    """Every storage call has a deadline ([storage] timeout_seconds): a frozen store
    turns a blocking upload into a 503 in about that time, never a hang, while the
    service keeps answering everything that does not need the store."""
    if backend.endpoint is None:
        pytest.skip(f"{backend.name} is not on the network: it cannot hang")
    with proxy_to(backend.endpoint) as proxy:
        through = backend.via(proxy.address)
        assert through is not None
        settings = make_settings(through, tmp_path, max_upload_bytes=4 << 20)
        timeout = 1.0
        settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"timeout_seconds": timeout})}
        )
        live = live_factory(settings)
        proxy.freeze()
        started = time.monotonic()
        answer = live.http.post(path, files={"file": ("f", os.urandom(3 << 20))})
        took = time.monotonic() - started
        # The background path stages on the local disk, but its record goes to the
        # store: it cannot accept either.
        assert (answer.status_code, answer.json()["code"]) == (503, "storage_unavailable")
        assert "did not answer in 1 s" in answer.json()["detail"]
        # A deadline per call on the way (a block, the commit or record, the abort).
        # SFTP's calls run in threads that end on their own: one that held the
        # server-side lock when the server froze keeps it until its lease ends (and
        # a waiter may be behind others for the lock's contention time).
        lock = sftplock.LEASE + sftplock.CONTENDED_FOR if backend.name == "sftp" else 0
        # A commit in flight is let finish for a while (offload.SETTLE_LIMIT), so
        # it never lands after the clean-up.
        bound = timeout * 6 + SETTLE_LIMIT + lock
        assert took < bound, took
        page = time.monotonic()
        assert live.http.get("/").status_code == 200
        assert time.monotonic() - page < 0.5
        proxy.restore()
        assert not live.staging.exists() or not any(live.staging.iterdir())
        assert live.http.get("/uploads").json()["items"] == []

        # What the frozen store kept (a multipart upload it never heard aborted, a
        # marker whose write arrives once the store wakes up) is the sweep's.
        def swept() -> bool:
            asyncio.run(remove_leftovers(live.app.state.service, grace=0))
            return backend.leftovers() == []

        wait_until(swept)
        assert live.http.post(path, files={"file": ("g", b"back")}).status_code in (201, 202)
