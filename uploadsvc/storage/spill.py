"""Object-store writers' bytes on disk: a part while the client is stalled, or a chunk.

The S3 and Azure writers buffer a whole part before they send it (8 MiB by
default); a client that stalls just short of a part would pin that much
memory for as long as it stalls (100 stalled S3 uploads: 87 -> 892 MiB).
Each keeps its buffer in a `PartBuffer`: when the body stalls
(`ObjectWriter.idle`), the buffer moves into a `Spill`, an unnamed temporary
file (`tempfile.TemporaryFile`: gone with the process, whatever happens);
blocks written while it is spilled go there too, and the whole is read back
only when the part is sent. A writer that never stalls never touches the
file: its cost on the streaming path is one check per block. The GCS writer
keeps every chunk in a `Spill` and sends it from there (gcs.py).

File calls run in a thread, and a cancelled caller waits for the call to end
(`outlast_cancellation`), so an abort never closes a file a write still uses.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, TypeVar

from ..offload import BULK, outlast_cancellation

T = TypeVar("T")
#: A buffered block, or a view of part of one.
Piece = bytes | memoryview


class PartBuffer:
    """A writer's buffered blocks, in order: in memory (`pieces`), or, from the
    client's stall (`idle`) until `restore`, on disk."""

    def __init__(self) -> None:
        self.pieces: deque[Piece] = deque()
        self._spill = Spill()

    async def add(self, block: Piece) -> None:
        """Append `block`: after the others on disk while they are there."""
        if self._spill:
            await self._spill.add([block])
        else:
            self.pieces.append(block)

    async def idle(self) -> None:
        """The client stalled: what is in memory goes to disk."""
        if self.pieces:
            pieces = list(self.pieces)
            self.pieces.clear()
            await self._spill.add(pieces)

    async def restore(self) -> deque[Piece]:
        """Everything in memory again, in order (what was on disk first), to be sent."""
        if self._spill:
            self.pieces.appendleft(await self._spill.take())
        return self.pieces

    def discard(self) -> None:
        self.pieces.clear()
        self._spill.discard()


class Spill:
    """Blocks in a temporary file, in order; empty (and no file) until `add`.

    `add`, `take` and `discard` come from one event loop, one at a time;
    `read` may come from another (gcsfs's, sending a GCS chunk) while this
    one discards the file: the file then stays open until that read ends,
    and the read closes it, so no read ever uses a closed (or reused) file
    descriptor.
    """

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.size = 0  # bytes added
        self._lock = threading.Lock()  # `read`'s thread against `discard`
        self._reading = 0
        self._closing: IO[bytes] | None = None  # discarded while read

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
            self._file.flush()  # for `read`, which reads the file, not its buffer

        await _in_thread(write)
        self.size += sum(len(block) for block in blocks)

    async def read(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset`, of what was added (the file stays)."""

        def read() -> bytes:
            with self._lock:
                f = self._file
                if f is None:
                    raise ValueError("the spill file was taken or discarded")
                self._reading += 1
            try:
                data = os.pread(f.fileno(), size, offset)
            finally:
                with self._lock:
                    self._reading -= 1
                    orphan = self._closing if not self._reading else None
                    if orphan is not None:
                        self._closing = None
                if orphan is not None:
                    orphan.close()  # `discard` left it to the last read
            if len(data) < size and offset + len(data) < self.size:
                raise OSError(f"the spill file ends at {offset + len(data)}, not {self.size}")
            return data

        return await _in_thread(read)

    async def take(self) -> bytes:
        """Everything added, read back; the file is closed (and gone)."""

        def read() -> bytes:
            f, self._file = self._file, None
            self.size = 0
            if f is None:
                return b""
            with f:
                f.seek(0)
                return f.read()

        return await _in_thread(read)

    def discard(self) -> None:
        """Drop what was added (closing an unnamed temporary file removes it); a
        read still running closes it when it ends."""
        with self._lock:
            f, self._file = self._file, None
            self.size = 0
            if f is not None and self._reading:
                self._closing, f = f, None
        if f is not None:
            f.close()


async def _in_thread(fn: Callable[[], T]) -> T:
    """`fn()` in the BULK pool (file calls of every upload: not the default pool,
    which short calls need), outlasting a cancelled caller."""
    call = asyncio.get_running_loop().run_in_executor(BULK, fn)
    return await outlast_cancellation(call)
