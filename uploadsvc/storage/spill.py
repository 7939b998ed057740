"""Where an object-store writer keeps its part buffer while the client is stalled: on disk.

The S3, Azure and GCS writers buffer a whole part before they send it (8, 8
and 24 MiB by default); a client that stalls just short of a part would pin
that much memory for as long as it stalls (100 stalled S3 uploads: 87 -> 892
MiB). When the body stalls (`ObjectWriter.idle`), such a writer moves its
buffer into a `Spill`, an unnamed temporary file (`tempfile.TemporaryFile`:
gone with the process, whatever happens); blocks written while it is spilled
go there too, and the whole is read back only when the part is sent. A
writer that never stalls never touches it: its cost on the streaming path is
one check per block.

File calls run in a thread, and a cancelled caller waits for the call to end
(`outlast_cancellation`), so an abort never closes a file a write still uses.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Sequence
from typing import IO, TypeVar

from ..offload import outlast_cancellation

T = TypeVar("T")


class Spill:
    """Blocks in a temporary file, in order; empty (and no file) until `add`."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None

    def __bool__(self) -> bool:
        return self._file is not None

    async def add(self, blocks: Sequence[bytes | memoryview]) -> None:
        """Append `blocks` (the file is made on first use)."""

        def write() -> None:
            if self._file is None:
                # Open across calls: `take` or `discard` closes it.
                self._file = tempfile.TemporaryFile(prefix="uploadsvc-spill-")  # noqa: SIM115
            for block in blocks:
                self._file.write(block)

        await _in_thread(write)

    async def take(self) -> bytes:
        """Everything added, read back; the file is closed (and gone)."""

        def read() -> bytes:
            f, self._file = self._file, None
            if f is None:
                return b""
            with f:
                f.seek(0)
                return f.read()

        return await _in_thread(read)

    def discard(self) -> None:
        """Drop what was added (closing an unnamed temporary file removes it)."""
        f, self._file = self._file, None
        if f is not None:
            f.close()


async def _in_thread(fn: Callable[[], T]) -> T:
    return await outlast_cancellation(asyncio.ensure_future(asyncio.to_thread(fn)))
