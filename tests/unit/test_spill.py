"""spill.Spill: a file read from another thread while its owner discards it."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from uploadsvc.storage import spill
from uploadsvc.storage.spill import Spill


def test_reads_see_what_was_added_at_any_offset() -> None:
    data = os.urandom(3 << 20)

    async def scenario() -> list[bytes]:
        chunk = Spill()
        await chunk.add([data[: 1 << 20], memoryview(data)[1 << 20 :]])
        try:
            return [await chunk.read(at, 100_000) for at in (0, 1 << 20, len(data) - 10)]
        finally:
            chunk.discard()

    assert asyncio.run(scenario()) == [
        data[:100_000],
        data[1 << 20 : (1 << 20) + 100_000],
        data[-10:],
    ]


def test_a_discard_during_a_read_closes_the_file_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read ends with the right bytes (never a closed or reused descriptor), and
    the file is closed by it; a read after the discard is refused."""
    reading = threading.Event()
    release = threading.Event()
    real_pread: Callable[..., bytes] = os.pread
    closed_during_read: list[bool] = []

    def slow_pread(fd: int, size: int, offset: int) -> bytes:
        reading.set()
        release.wait(5)
        closed_during_read.append(_closed(fd))
        return real_pread(fd, size, offset)

    data = os.urandom(1 << 20)

    async def scenario() -> tuple[bytes, Any]:
        chunk = Spill()
        await chunk.add([data])
        file = chunk._file
        monkeypatch.setattr(spill.os, "pread", slow_pread)
        read = asyncio.ensure_future(chunk.read(1000, 5000))
        await asyncio.to_thread(reading.wait, 5)
        chunk.discard()
        assert file is not None and not file.closed  # the read still uses it
        release.set()
        got = await read
        with pytest.raises(ValueError, match="discarded"):
            await chunk.read(0, 10)
        return got, file

    got, file = asyncio.run(scenario())
    assert got == data[1000:6000]
    assert closed_during_read == [False]
    assert file.closed


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
