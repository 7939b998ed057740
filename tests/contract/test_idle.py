"""`ObjectWriter.idle`: what a writer does when the client stalls, on every backend.

The writer lets go of the memory it buffers for its next part (object stores
keep it on disk meanwhile, see storage/spill.py) and loses nothing: the
object is exact however often it went idle, and an abort after idling leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import tracemalloc

import pytest

from tests.backends import Backend
from tests.contract.test_storage import read_all
from uploadsvc.storage import BLOCK_SIZE, Storage
from uploadsvc.storage.s3 import PART_SIZE


def run(backend: Backend, scenario: object) -> None:
    async def main() -> None:
        await scenario(backend.storage())  # type: ignore[operator]

    asyncio.run(main())


@pytest.mark.parametrize("size", [BLOCK_SIZE // 2, 3 * BLOCK_SIZE + 5, 2 * PART_SIZE + 7])
def test_a_writer_that_goes_idle_keeps_every_byte(backend: Backend, size: int) -> None:
    data = os.urandom(size)
    pieces = [data[i : i + BLOCK_SIZE // 2] for i in range(0, size, BLOCK_SIZE // 2)]

    async def scenario(storage: Storage) -> None:
        async with storage.create("obj") as writer:
            for n, piece in enumerate(pieces):
                await writer.write(piece)
                for _ in range(2 if n == 3 else 1 if n % 3 == 0 else 0):
                    await writer.idle()  # now and then, twice in a row once
            await writer.idle()
            info = await writer.commit()
        assert info.size == size
        assert (
            hashlib.sha256(await read_all(storage, "obj")).digest() == hashlib.sha256(data).digest()
        )

    run(backend, scenario)
    assert backend.leftovers() == ["obj"]


def test_abort_after_idle_leaves_nothing(backend: Backend) -> None:
    async def scenario(storage: Storage) -> None:
        writer = storage.create("obj")
        await writer.write(os.urandom(BLOCK_SIZE))
        await writer.idle()
        await writer.write(os.urandom(BLOCK_SIZE))
        await writer.abort()

    run(backend, scenario)
    assert backend.leftovers() == []


def test_an_idle_writer_holds_no_part_in_memory(backend: Backend) -> None:
    """Seven blocks, just short of a part on every object store: after `idle` the
    writer holds less than one block of them."""
    if backend.writer_memory is None:
        pytest.skip(f"{backend.name} keeps the file in memory by design")

    async def scenario(storage: Storage) -> None:
        writer = storage.create("obj")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(7):
                await writer.write(os.urandom(BLOCK_SIZE))
            await writer.idle()
            await asyncio.sleep(0.2)  # let pipelined writes (SFTP) land
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            await writer.abort()
        assert held < BLOCK_SIZE, f"{held / 2**20:.1f} MiB held by an idle writer"

    run(backend, scenario)
