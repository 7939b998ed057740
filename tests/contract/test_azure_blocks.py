"""What the Azure backend promises beyond the shared contract, on Azurite.

Staged blocks never become visible and never stay behind: a failure in the
middle of an upload, or an abort, deletes them without ever committing a
block list or putting a blob; and the options reach adlfs as its users write
them, with the two settings that keep instances apart forced.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob.aio import BlobClient

from tests.backends import Backend
from uploadsvc.errors import StorageUnavailable
from uploadsvc.storage import BLOCK_SIZE, Storage, open_storage
from uploadsvc.storage.azure import BLOCK_BYTES, AzureStorage

T = TypeVar("T")

azure_only = pytest.mark.parametrize("backend", ["azure"], indirect=True)


def run(fn: Callable[[Storage], Awaitable[T]], backend: Backend) -> T:
    async def main() -> T:
        return await fn(backend.storage())

    return asyncio.run(main())


def spy(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[str]:
    """Record every call of these BlobClient methods (they run on adlfs's loop thread)."""
    calls: list[str] = []
    for name in names:
        original = getattr(BlobClient, name)

        def recorded(
            self: BlobClient, *args: Any, _n: str = name, _o: Any = original, **kw: Any
        ) -> Any:
            calls.append(_n)
            return _o(self, *args, **kw)

        monkeypatch.setattr(BlobClient, name, recorded)
    return calls


async def until_staged(backend: Backend, timeout: float = 10) -> None:
    """Wait until the service holds uncommitted blocks (the uploads run on another thread)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while backend.pending() != ["blocks:obj"]:
        assert asyncio.get_running_loop().time() < deadline, "no block was staged"
        await asyncio.sleep(0.02)


@azure_only
def test_abort_deletes_staged_blocks_without_publishing(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, "stage_block", "commit_block_list", "upload_blob", "delete_blob")
    block = os.urandom(BLOCK_SIZE)

    async def scenario(storage: Storage) -> None:
        writer = storage.create("obj")
        for _ in range(3 * BLOCK_BYTES // BLOCK_SIZE):
            await writer.write(block)
        await until_staged(backend)
        assert await storage.list() == []
        await writer.abort()

    run(scenario, backend)
    assert backend.leftovers() == []
    assert "stage_block" in calls
    assert "commit_block_list" not in calls and "upload_blob" not in calls
    assert calls[-1] == "delete_blob"


@azure_only
def test_failure_mid_upload_leaves_no_blocks(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = BlobClient.stage_block
    staged = {"n": 0}

    async def flaky(self: BlobClient, *args: Any, **kwargs: Any) -> Any:
        staged["n"] += 1
        if staged["n"] == 2:
            raise ServiceResponseError("injected: connection reset")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "stage_block", flaky)
    block = os.urandom(BLOCK_SIZE)

    async def scenario(storage: Storage) -> None:
        with pytest.raises(StorageUnavailable, match="injected"):
            async with storage.create("obj") as writer:
                for _ in range(4 * BLOCK_BYTES // BLOCK_SIZE):
                    await writer.write(block)
                await writer.commit()

    run(scenario, backend)
    assert staged["n"] >= 2
    assert backend.leftovers() == []


@azure_only
def test_small_objects_are_one_put_and_large_ones_blocks(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, "stage_block", "commit_block_list", "upload_blob")
    sizes = {"small": 1000, "large": BLOCK_BYTES + BLOCK_SIZE}
    seen: dict[str, list[str]] = {}

    async def scenario(storage: Storage) -> None:
        for key, size in sizes.items():
            calls.clear()
            async with storage.create(key) as writer:
                await writer.write(os.urandom(size))
                await writer.commit()
            seen[key] = sorted(set(calls))

    run(scenario, backend)
    assert seen == {"small": ["upload_blob"], "large": ["commit_block_list", "stage_block"]}
    assert backend.leftovers() == ["large", "small"]


@azure_only
def test_reads_past_the_end_and_of_empty_objects_are_empty(backend: Backend) -> None:
    async def scenario(storage: Storage) -> list[bytes]:
        await storage.put_small("empty", b"")
        await storage.put_small("ten", b"0123456789")
        return [
            b"".join([b async for b in storage.read(key, start, end)])
            for key, start, end in [("empty", 0, None), ("ten", 10, None), ("ten", 8, 99)]
        ]

    assert run(scenario, backend) == [b"", b"", b"89"]


def test_options_reach_adlfs_and_nothing_is_contacted() -> None:
    """Built against a closed port: from_url must not contact the store."""
    options = {
        "connection_string": (
            "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=AAAA;"
            "BlobEndpoint=http://127.0.0.1:9/a;"
        ),
        "retry_total": 0,
        "read_timeout": 7,
        "use_listings_cache": True,  # refused: several instances must list alike
    }
    first = open_storage("az://box/some/prefix", dict(options))
    second = open_storage("az://box/some/prefix", dict(options))
    assert isinstance(first, AzureStorage) and isinstance(second, AzureStorage)
    assert first.fs is not second.fs  # no instance cache
    assert first.fs.dircache.use_listings_cache is False
    assert (first.container_name, first.prefix) == ("box", "some/prefix/")
    assert first.call_options == {"read_timeout": 7, "retry_total": 0}
    assert "retry_total" not in first.fs.storage_options


def test_a_url_without_a_container_is_refused() -> None:
    with pytest.raises(StorageUnavailable, match="names no container"):
        open_storage("az://", {"connection_string": "UseDevelopmentStorage=true"})
