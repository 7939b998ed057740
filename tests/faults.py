"""A TCP proxy between the service and a store's server, to make the store fail.

`Proxy(target)` listens on a free 127.0.0.1 port and forwards every
connection to `target` ("127.0.0.1:PORT"). `cut()` drops every open
connection and resets new ones at once (the store is down); `limit(n)`
resets any connection once it has sent more than `n` bytes towards the store
(small requests pass, large writes fail: a store refusing big uploads);
`freeze()` holds every byte in both directions and keeps connections open (a
store that hangs: nothing fails, nothing answers); `restore()` forwards
everything again. It runs on an event loop of its own in
a thread, so tests stay synchronous, as toxiproxy would, without another
program.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Proxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._down = False
        self._frozen = False
        self._limit: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.address = f"127.0.0.1:{self._port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)  # from now on, `cut` and `close` reach it
        await self._thawed()  # a frozen store accepts connections and says nothing
        if self._down:
            _reset(writer)
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            self._writers.discard(writer)
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, writer),
            self._answer(up_reader, writer),
            return_exceptions=True,
        )
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        """Reset every open connection, and every new one until `restore`."""

        def cut() -> None:
            self._down = True
            for writer in list(self._writers):
                _reset(writer)

        self._loop.call_soon_threadsafe(cut)

    def limit(self, upstream_bytes: int) -> None:
        """Reset connections that send more than `upstream_bytes` towards the store."""
        self._loop.call_soon_threadsafe(setattr, self, "_limit", upstream_bytes)

    def freeze(self) -> None:
        """Forward nothing more, either way, until `restore`; close nothing."""
        self._loop.call_soon_threadsafe(setattr, self, "_frozen", True)

    def restore(self) -> None:
        def restore() -> None:
            self._down = False
            self._frozen = False
            self._limit = None

        self._loop.call_soon_threadsafe(restore)

    async def _pump(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        """Client -> store, counting bytes against `limit`."""
        sent = 0
        try:
            while data := await reader.read(1 << 16):
                sent += len(data)
                if self._limit is not None and sent > self._limit:
                    _reset(client)
                    _reset(up)
                    return
                await self._thawed()
                up.write(data)
                await up.drain()
        finally:
            with contextlib.suppress(Exception):
                up.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Store -> client."""
        try:
            while data := await reader.read(1 << 16):
                await self._thawed()
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _thawed(self) -> None:
        while self._frozen and not self._down:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextmanager
def proxy_to(target: str) -> Iterator[Proxy]:
    proxy = Proxy(target)
    try:
        yield proxy
    finally:
        proxy.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, as a crashed server or a dropped route looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket
        import struct

        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
