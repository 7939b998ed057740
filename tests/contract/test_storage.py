"""The storage interface's guarantees, once, against every backend.

Each test breaks if its guarantee does: whole objects or nothing, abort on
every way out, no part files or pending multipart uploads left, conditional
small writes, ranges, and backend errors translated at the boundary.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.backends import Backend
from uploadsvc.errors import NotFound, PreconditionFailed, StorageUnavailable
from uploadsvc.storage import BLOCK_SIZE, Storage, open_storage
from uploadsvc.storage.s3 import PART_SIZE

T = TypeVar("T")


def run(fn: Callable[[Storage], Awaitable[T]], backend: Backend) -> T:
    async def main() -> T:
        return await fn(backend.storage())

    return asyncio.run(main())


def blocks(total: int) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]


async def read_all(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([b async for b in storage.read(key, start, end)])


# Multipart on S3 starts past one part: cover both the single-PUT and the multipart path.
SIZES = [0, 1, BLOCK_SIZE + 3, PART_SIZE * 2 + 5]


@pytest.mark.parametrize("size", SIZES)
def test_commit_publishes_exact_bytes_and_nothing_before(backend: Backend, size: int) -> None:
    parts = blocks(size)

    async def scenario(storage: Storage) -> None:
        async with storage.create("obj") as writer:
            for block in parts:
                await writer.write(block)
            assert "obj" not in await storage.list()
            with pytest.raises(NotFound):
                await storage.size("obj")
            info = await writer.commit()
        assert info.size == size
        assert await storage.size("obj") == size
        assert (
            hashlib.sha256(await read_all(storage, "obj")).digest()
            == hashlib.sha256(b"".join(parts)).digest()
        )

    run(scenario, backend)
    assert backend.leftovers() == ["obj"]


@pytest.mark.parametrize("size", [10, PART_SIZE * 2 + 5])
def test_exception_inside_writer_aborts_and_leaves_nothing(backend: Backend, size: int) -> None:
    """Unlike fsspec's `open(..., "wb")`, an error must not publish a partial object."""

    async def scenario(storage: Storage) -> None:
        with pytest.raises(RuntimeError):
            async with storage.create("obj") as writer:
                for block in blocks(size):
                    await writer.write(block)
                raise RuntimeError("client went away")
        assert await storage.list() == []

    run(scenario, backend)
    assert backend.leftovers() == []


def test_leaving_without_commit_aborts(backend: Backend) -> None:
    async def scenario(storage: Storage) -> None:
        async with storage.create("obj") as writer:
            await writer.write(b"x" * (PART_SIZE + 1))

    run(scenario, backend)
    assert backend.leftovers() == []


def test_abort_is_idempotent_and_commit_after_abort_is_not_possible(backend: Backend) -> None:
    async def scenario(storage: Storage) -> None:
        writer = storage.create("obj")
        await writer.write(b"abc")
        await writer.abort()
        await writer.abort()

    run(scenario, backend)
    assert backend.leftovers() == []


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_failure_mid_upload_aborts_the_multipart_upload(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend error in the middle of a multipart upload leaves no pending upload."""
    from uploadsvc.storage.s3 import S3Storage

    original = S3Storage.call
    calls = {"upload_part": 0}

    async def flaky(self: S3Storage, method: str, **kwargs: Any) -> Any:
        if method == "upload_part":
            calls["upload_part"] += 1
            if calls["upload_part"] == 2:
                raise StorageUnavailable("injected: connection reset")
        return await original(self, method, **kwargs)

    monkeypatch.setattr(S3Storage, "call", flaky)

    async def scenario(storage: Storage) -> None:
        with pytest.raises(StorageUnavailable):
            async with storage.create("obj") as writer:
                for block in blocks(PART_SIZE * 4):
                    await writer.write(block)
                await writer.commit()

    run(scenario, backend)
    assert calls["upload_part"] >= 2
    assert backend.leftovers() == []


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, None)),
        (5, 10, slice(5, 10)),
        (0, 1, slice(0, 1)),
        (99, None, slice(99, None)),
        (BLOCK_SIZE - 1, BLOCK_SIZE + 2, slice(BLOCK_SIZE - 1, BLOCK_SIZE + 2)),
        (7, 7, slice(7, 7)),
    ],
)
def test_read_byte_ranges(backend: Backend, start: int, end: int | None, expected: slice) -> None:
    data = os.urandom(BLOCK_SIZE + 100)

    async def scenario(storage: Storage) -> bytes:
        async with storage.create("obj") as writer:
            await writer.write(data)
            await writer.commit()
        return await read_all(storage, "obj", start, end)

    assert run(scenario, backend) == data[expected]


def test_missing_objects(backend: Backend) -> None:
    async def scenario(storage: Storage) -> None:
        with pytest.raises(NotFound):
            await storage.size("nope")
        with pytest.raises(NotFound):
            await storage.get_small("nope.json")
        with pytest.raises(NotFound):
            await read_all(storage, "nope")
        await storage.delete("nope")  # absent is not an error

    run(scenario, backend)


def test_delete_and_list(backend: Backend) -> None:
    async def scenario(storage: Storage) -> tuple[list[str], list[str], list[str]]:
        for key in ("a", "b"):
            async with storage.create(key) as writer:
                await writer.write(key.encode())
                await writer.commit()
        await storage.put_small("a.json", b"{}")
        everything = await storage.list()
        only_a = await storage.list("a")
        await storage.delete("a")
        return everything, only_a, await storage.list()

    everything, only_a, after = run(scenario, backend)
    assert everything == ["a", "a.json", "b"]
    assert only_a == ["a", "a.json"]
    assert after == ["a.json", "b"]


def test_a_marker_is_an_empty_object_listed_like_any_other(backend: Backend) -> None:
    async def scenario(storage: Storage) -> tuple[list[str], bytes, list[str]]:
        await storage.put_marker("index.f0")
        await storage.put_marker("index.f0")  # again: still one, still empty
        listed = await storage.list("index.")
        data, _ = await storage.get_small("index.f0")
        return listed, data, backend.leftovers()

    listed, data, everything = run(scenario, backend)
    assert listed == ["index.f0"]
    assert data == b""
    assert everything == ["index.f0"], "no part file or pending write left behind"


def test_list_pages_in_order_after_a_key(backend: Backend) -> None:
    """What a page of the upload list needs: a prefix, a start after the last key seen,
    and a limit, in key order, without part files or other prefixes."""
    names = [f"index.{i:03x}" for i in range(0, 40, 3)]

    async def scenario(storage: Storage) -> list[list[str]]:
        await asyncio.gather(*(storage.put_small(n, b"") for n in [*names, "other.1", "z"]))
        dead = storage.create("index.zzz")  # a write in flight shows in no listing
        await dead.write(b"x")
        pages = [
            await storage.list("index.", limit=4),
            await storage.list("index.", start_after="index.009", limit=4),
            await storage.list("index.", start_after="index.00a", limit=100),
            await storage.list("index.", start_after="index.027"),
            await storage.list("index.", start_after="index.zz"),
        ]
        await dead.abort()
        return pages

    assert run(scenario, backend) == [
        names[:4],
        names[4:8],
        names[4:],
        [],
        [],
    ]


def test_conditional_small_writes(backend: Backend) -> None:
    """Create-if-absent and replace-if-unchanged: what records need to be shared safely."""

    async def scenario(storage: Storage) -> None:
        first = await storage.put_small("r.json", b"1", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await storage.put_small("r.json", b"2", if_none_match=True)
        data, etag = await storage.get_small("r.json")
        assert (data, etag) == (b"1", first)
        second = await storage.put_small("r.json", b"3", if_match=etag)
        assert second != first
        with pytest.raises(PreconditionFailed):
            await storage.put_small("r.json", b"4", if_match=first)
        assert (await storage.get_small("r.json"))[0] == b"3"
        await storage.put_small("r.json", b"5")  # unconditional replace
        assert (await storage.get_small("r.json"))[0] == b"5"

    run(scenario, backend)
    assert backend.leftovers() == ["r.json"]


@pytest.mark.parametrize("source_url", ["local", "memory"])
@pytest.mark.parametrize("size", [0, 3, PART_SIZE + 17])
def test_adopt_copies_another_storages_object(
    backend: Backend, tmp_path: Path, size: int, source_url: str
) -> None:
    """Staged bytes move into storage: linked from a local folder when the backend can,
    streamed otherwise; the source keeps its object (the caller removes it)."""
    data = os.urandom(size)
    url = f"file://{tmp_path / 'staging'}" if source_url == "local" else f"memory://s-{os.getpid()}"

    async def scenario(storage: Storage) -> tuple[bytes, bytes]:
        source = open_storage(url)
        async with source.create("obj") as writer:
            await writer.write(data)
            await writer.commit()
        info = await storage.adopt("obj", source)
        assert info.size == size
        kept = await read_all(source, "obj")
        await source.delete("obj")
        return await read_all(storage, "obj"), kept

    assert run(scenario, backend) == (data, data)
    assert backend.leftovers() == ["obj"]


def test_check_passes_on_a_working_backend(backend: Backend) -> None:
    run(lambda storage: storage.check(), backend)


def test_unreachable_backend_is_storage_unavailable(backend: Backend) -> None:
    broken = backend.unreachable()
    if broken is None:
        pytest.skip(f"{backend.name} lives in this process: it cannot be unreachable")

    async def scenario(storage: Storage) -> None:
        with pytest.raises(StorageUnavailable):
            await storage.check()
        with pytest.raises(StorageUnavailable):
            async with storage.create("obj") as writer:
                await writer.write(b"abc")
                await writer.commit()

    run(scenario, broken)


def test_missing_bucket_is_storage_unavailable(backend: Backend) -> None:
    missing = backend.missing_root()
    if missing is None:
        pytest.skip(f"{backend.name} has no buckets or containers: check() creates its folder")

    async def scenario(storage: Storage) -> None:
        with pytest.raises(StorageUnavailable, match="no-such-"):
            await storage.check()

    run(scenario, missing)


def test_conditional_writes_have_exactly_one_winner(backend: Backend) -> None:
    """Two instances racing on one record: one create and one swap succeed, the rest lose."""

    async def race(storage: Storage) -> tuple[int, int]:
        async def attempt(coro: Awaitable[str]) -> bool:
            try:
                await coro
            except PreconditionFailed:
                return False
            return True

        created = await asyncio.gather(
            *(attempt(storage.put_small("r.json", b"%d" % i, if_none_match=True)) for i in range(8))
        )
        _, etag = await storage.get_small("r.json")
        swapped = await asyncio.gather(
            *(attempt(storage.put_small("r.json", b"s%d" % i, if_match=etag)) for i in range(8))
        )
        return sum(created), sum(swapped)

    assert run(race, backend) == (1, 1)
    assert backend.leftovers() == ["r.json"]


@pytest.mark.parametrize("cancel_after", [1, 3, 2 * PART_SIZE // BLOCK_SIZE + 1, "commit"])
def test_cancelled_writer_leaves_nothing(backend: Backend, cancel_after: int | str) -> None:
    """A task cancelled mid-write or mid-commit (shutdown, a timeout) leaves no trace.

    The write or S3 call in flight is waited for, then aborted; a commit that
    was cancelled is undone even if the backend finished it.
    """
    block = os.urandom(BLOCK_SIZE)

    async def scenario(storage: Storage) -> None:
        reached = asyncio.Event()

        async def upload() -> None:
            async with storage.create("obj") as writer:
                for written in range(1, 10_000):
                    if written == cancel_after:
                        reached.set()
                    await writer.write(block)
                    if cancel_after == "commit" and written == 3:
                        reached.set()  # the cancellation lands inside the commit
                        await writer.commit()

        task = asyncio.create_task(upload())
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario, backend)
    assert backend.leftovers() == []


@pytest.mark.parametrize("key", ["", ".", "..", "../x", "a/b", "a\\b", "a\0b"])
def test_keys_that_are_paths_are_refused(backend: Backend, key: str) -> None:
    async def scenario(storage: Storage) -> None:
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.size(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.create(key)

    run(scenario, backend)


def test_a_silent_endpoint_cannot_outlast_a_check_timeout(backend: Backend) -> None:
    """A health or start-up check gives up on time even when the store accepts and never answers."""
    import socket
    import threading

    from uploadsvc.storage import check_in_time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    outcome: list[BaseException] = []
    quiet = backend.via(f"127.0.0.1:{port}")
    if quiet is None:
        silent.close()
        pytest.skip(f"{backend.name} is not on the network: it cannot stay silent")

    def probe() -> None:
        storage = quiet.storage()
        try:
            asyncio.run(check_in_time(storage, 0.5))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout=20)  # botocore alone would wait 60 s per attempt
    silent.close()
    assert not worker.is_alive(), "the check outlived its timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable)
    assert "did not answer" in str(outcome[0])


def test_remove_incomplete_takes_only_writes_whose_writer_died(backend: Backend) -> None:
    """A writer that neither commits nor aborts (its process died) leaves a part file or
    a pending multipart upload; the sweep's call removes it once it has shown no sign
    of life for long enough, and never a slow writer's or a committed object."""

    async def scenario(storage: Storage) -> tuple[int, int, int]:
        if type(storage).remove_incomplete is Storage.remove_incomplete:
            pytest.skip(f"{backend.name} leaves incomplete writes for its store to expire")
        async with storage.create("kept") as writer:
            await writer.write(b"committed")
            await writer.commit()
        dead = storage.create("dead")
        for block in blocks(PART_SIZE + BLOCK_SIZE):  # past one part: a multipart upload
            await dead.write(block)
        began = time.time()
        young = await storage.remove_incomplete(3600, lambda key: began)
        await asyncio.sleep(1.1)  # mtimes may have a resolution of a second
        # A slow writer, but alive. Three more parts: S3 keeps two in flight, so by
        # the last write at least one new part has landed (and dated itself).
        for block in blocks(PART_SIZE * 3):
            await dead.write(block)
        alive = await storage.remove_incomplete(1, lambda key: began)
        await asyncio.sleep(2.1)
        old = await storage.remove_incomplete(1, lambda key: began)
        return young, alive, old

    assert run(scenario, backend) == (0, 0, 1)
    assert backend.leftovers() == ["kept"]


def test_a_write_in_flight_and_its_abort_publish_nothing_anywhere(backend: Backend) -> None:
    """Not even briefly under a temporary name: while a write is in flight (past one S3
    part or Azure block) the store holds no readable object at all, only a part file
    where the store renames, and after the abort not even that."""
    seen: list[list[str]] = []

    async def scenario(storage: Storage) -> None:
        writer = storage.create("obj")
        for block in blocks(PART_SIZE * 2 + BLOCK_SIZE):
            await writer.write(block)
            seen.append([k for k in backend.contents() if not k.endswith(".part")])
        await writer.abort()

    run(scenario, backend)
    assert seen and all(visible == [] for visible in seen), seen
    assert backend.leftovers() == []
