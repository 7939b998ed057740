"""Small helpers for the API tests: reading what the backend really holds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import Backend, Live


def stored_bytes(backend: Backend, key: str) -> bytes:
    """The bytes under `key`, read from the backend directly (not through the API)."""

    async def read() -> bytes:
        storage = backend.storage()
        return b"".join([b async for b in storage.read(key)])

    return asyncio.run(read())


def wait_for_status(live: Live, upload_id: str, *final: str, timeout: float = 30) -> dict[str, Any]:
    """Poll the record until its status is one of `final` (default: completed or failed)."""
    final = final or ("completed", "failed")
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = live.http.get(f"/uploads/{upload_id}").json()
        if record["status"] in final:
            return record
        assert time.monotonic() < deadline, f"still {record['status']} after {timeout} s"
        time.sleep(0.02)


def wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
