"""storage/guarded.py: every backend call bounded in time, its failures counted by operation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from uploadsvc.errors import NotFound, StorageUnavailable
from uploadsvc.metrics import STORAGE_ERRORS
from uploadsvc.storage import Storage, open_storage
from uploadsvc.storage.guarded import guard


def errors(operation: str) -> float:
    return STORAGE_ERRORS.labels("memory", operation)._value.get()  # type: ignore[attr-defined]


def test_each_unavailable_call_counts_once_for_its_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = open_storage("memory://metered-unit", {})

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("storage memory://metered-unit failed: injected")

    monkeypatch.setattr(storage, "put_small", down)
    guard(storage, 5.0)
    before = {op: errors(op) for op in ("put_small", "get_small", "read", "commit")}

    async def scenario() -> None:
        with pytest.raises(StorageUnavailable):
            await storage.put_small("a", b"x")
        with pytest.raises(NotFound):  # a missing key is no failure of the store
            await storage.get_small("missing")
        async with storage.create("k") as writer:
            await writer.write(b"data")
            await writer.commit()
        assert b"".join([b async for b in storage.read("k")]) == b"data"

    asyncio.run(scenario())
    assert errors("put_small") == before["put_small"] + 1
    assert errors("get_small") == before["get_small"]
    assert errors("read") == before["read"] and errors("commit") == before["commit"]


def test_failed_reads_and_commits_count(monkeypatch: pytest.MonkeyPatch) -> None:
    storage: Storage = open_storage("memory://metered-unit-2", {})
    real_create = storage.create

    async def broken_read(key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        yield b"first"
        raise StorageUnavailable("storage memory://metered-unit-2 failed: cut")

    class BrokenCommit:
        def __init__(self, key: str) -> None:
            self.inner = real_create(key)

        async def write(self, block: bytes) -> None:
            await self.inner.write(block)

        async def commit(self) -> Any:
            raise StorageUnavailable("storage memory://metered-unit-2 failed: commit")

        async def abort(self) -> None:
            await self.inner.abort()

        async def idle(self) -> None:
            await self.inner.idle()

    monkeypatch.setattr(storage, "read", broken_read)
    monkeypatch.setattr(storage, "create", BrokenCommit)
    guard(storage, 5.0)
    reads, commits = errors("read"), errors("commit")

    async def scenario() -> None:
        with pytest.raises(StorageUnavailable):
            async for _ in storage.read("k"):
                pass
        with pytest.raises(StorageUnavailable):
            async with storage.create("k") as writer:
                await writer.write(b"x")
                await writer.commit()

    asyncio.run(scenario())
    assert errors("read") == reads + 1
    assert errors("commit") == commits + 1


def test_a_call_that_hangs_is_unavailable_at_the_deadline_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = open_storage("memory://guarded-hang", {})

    async def hang(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    async def slow_blocks(key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()
        yield b"never"

    monkeypatch.setattr(storage, "get_small", hang)
    monkeypatch.setattr(storage, "read", slow_blocks)
    guard(storage, 0.2)
    before_get, before_read = errors("get_small"), errors("read")
    seen: list[bytes] = []

    async def scenario() -> None:
        with pytest.raises(StorageUnavailable, match=r"did not answer in 0.2 s \(get_small\)"):
            await storage.get_small("k")
        with pytest.raises(StorageUnavailable, match=r"\(read\)"):
            async for block in storage.read("k"):
                seen.append(block)

    asyncio.run(scenario())
    assert seen == [b"first"], "blocks that came in time are delivered"
    assert errors("get_small") == before_get + 1
    assert errors("read") == before_read + 1
