"""Scan every upload with ClamAV's daemon (clamd); an infected file is rejected.

    [processing]
    pipeline = ["clamav"]

    [plugins.clamav]
    address = "unix:///run/clamav/clamd.ctl"   # or "tcp://127.0.0.1:3310"
    timeout_seconds = 60                        # the whole scan: connect, send, verdict
    chunk_bytes = 1048576                       # the largest INSTREAM chunk sent

The stored bytes go to clamd with INSTREAM, block by block as storage yields
them, so a file is never held in memory whole. A signature match rejects the
upload (`malware found: <signature>`); a clean file's result is
`{"clean": true, "engine": "ClamAV 1.4.3/27400/..."}`. Anything else (clamd
unreachable, an error reply, the deadline, `INSTREAM size limit exceeded`)
raises: the upload fails, because an unscanned file must never pass as clean.

Configure clamd so that it cannot answer OK for a file it did not scan: clamd
skips a file above `MaxFileSize` (Debian: 25M) and answers `stream: OK` for
it. Set `StreamMaxLength` to at least `[limits] max_upload_bytes` (uploads
above it fail with `INSTREAM size limit exceeded`), `MaxFileSize` and
`MaxScanSize` at least as large, and `AlertExceedsMax yes`, which turns any
skip into a `Heuristics.Limits.Exceeded.*` match, so a rejection.

The protocol is spoken here, not through `aioclamd` (1.1.0): its client
speaks TCP only (no unix socket, clamd's usual and Debian's default
address), and its `instream` takes a blocking file object that it reads
1 KiB at a time in a thread, while storage hands out an async iterator of
blocks; bridging the two would mean a thread per scan or reading the file
whole. INSTREAM itself is small: `zINSTREAM\\0`, chunks of `<4-byte big-endian
length><data>`, a zero-length chunk, and one reply up to `\\0`.

It runs on plain non-blocking sockets through the event loop (`sock_sendall`,
`sock_recv`), not on asyncio streams: when clamd refuses a stream it sends
its reason and closes, and a stream transport whose next write fails stops
reading at once, so the reason could be lost to a bare "connection reset".
A plain socket keeps it readable.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from uploadsvc import plugin

#: The longest reply read from clamd (a verdict, a version, an error line).
MAX_REPLY = 64 * 1024
#: INSTREAM's chunk length is an unsigned 32-bit number.
MAX_CHUNK = (1 << 32) - 1
#: How long to wait for clamd's reason after it closed the connection mid-stream.
REASON_GRACE = 2.0
#: How long a clean verdict waits for VERSION (asked at the same time) before
#: the result goes without `engine`.
VERSION_GRACE = 1.0


class ClamdError(Exception):
    """clamd could not give a verdict: the upload fails, it is not passed as clean."""


@dataclass(frozen=True)
class Endpoint:
    """Where clamd listens: a unix socket path, or a TCP host and port."""

    address: str
    path: str | None = None
    host: str = ""
    port: int = 0

    async def connect(self) -> socket.socket:
        """A connected non-blocking socket; `OSError` when clamd is not there."""
        loop = asyncio.get_running_loop()
        if self.path is not None:
            targets: list[tuple[int, Any]] = [(socket.AF_UNIX, self.path)]
        else:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            targets = [(family, where) for family, _, _, _, where in found]
        failure: OSError = OSError(f"no address for {self.host}")
        for family, where in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, where)
            except BaseException as e:
                sock.close()
                if not isinstance(e, OSError):
                    raise
                failure = e
            else:
                return sock
        raise failure


def parse_address(address: str) -> Endpoint:
    """`unix:///absolute/path` or `tcp://host:port`; `ValueError` saying what is wrong."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{address!r} is not a valid address: {e}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{address!r}: a clamd address has no query or fragment")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(
                f"{address!r}: a unix address needs an absolute path: unix:///run/clamav/clamd.ctl"
            )
        return Endpoint(address, path=parts.path)
    if parts.scheme == "tcp":
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"{address!r}: a tcp address is tcp://host:port")
        return Endpoint(address, host=parts.hostname, port=port)
    raise ValueError(
        f"{address!r}: use unix:///path/to/clamd.sock or tcp://host:port "
        f"(not {parts.scheme + '://' if parts.scheme else 'a bare path or host'})"
    )


class ClamAVOptions(plugin.Options):
    """`[plugins.clamav]`; see the module docstring."""

    address: str = "unix:///run/clamav/clamd.ctl"
    timeout_seconds: float = Field(default=60.0, gt=0)
    chunk_bytes: int = Field(default=1 << 20, gt=0, le=MAX_CHUNK)

    @field_validator("address")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        # A custom error: the message reaches the user as is, without
        # pydantic's "Value error, " in front of it.
        try:
            parse_address(value)
        except ValueError as e:
            raise PydanticCustomError("clamd_address", str(e)) from None
        return value


class ClamAV(plugin.Processor[ClamAVOptions]):
    """Stream each upload to clamd; reject what it finds, fail when it cannot say."""

    Options = ClamAVOptions

    def __init__(self, options: ClamAVOptions) -> None:
        super().__init__(options)
        self.endpoint = parse_address(options.address)

    async def process(self, upload: plugin.Upload) -> Mapping[str, Any]:
        # VERSION beside the scan, on its own connection: it costs no waiting,
        # and names the signature database that gave this verdict.
        version = asyncio.create_task(self._version())
        try:
            verdict = await self._scan(upload)
        except BaseException:
            await _drop(version)
            raise
        if verdict is not None:
            await _drop(version)
            upload.reject(f"malware found: {verdict}")
        # The verdict is in: the version is not worth waiting long for.
        await asyncio.wait({version}, timeout=VERSION_GRACE)
        engine = version.result() if version.done() else None
        await _drop(version)
        return {"clean": True} | ({"engine": engine} if engine else {})

    async def _scan(self, upload: plugin.Upload) -> str | None:
        """The signature clamd found, or None for a clean file; `ClamdError` otherwise."""
        deadline = asyncio.timeout(self.options.timeout_seconds)
        try:
            async with deadline:
                reply, whole = await self._instream(upload)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: from reading the upload
            raise self._error(
                f"no verdict within {self.options.timeout_seconds:g} s (timeout_seconds)"
            ) from None
        except ClamdError as e:
            raise self._error(str(e)) from None
        if reply.endswith(" FOUND"):
            return reply.removeprefix("stream: ").removesuffix(" FOUND")
        if reply == "stream: OK" and whole:
            return None
        if reply == "stream: OK":
            raise self._error("answered OK before the whole file was sent")
        raise self._error(f"no verdict: {reply.removesuffix(' ERROR')}")

    async def _instream(self, upload: plugin.Upload) -> tuple[str, bool]:
        """Send the upload with INSTREAM: clamd's reply (without its `\\0`), and
        whether the whole file was sent before it came."""
        sock = await _connect(self.endpoint)
        # The reply is read while sending: clamd answers early and closes when
        # it refuses the stream (size limit). On a plain socket its reason
        # stays readable after our next write meets the broken pipe (an
        # asyncio transport would drop it: it stops reading at a write error).
        reply = asyncio.create_task(_read_reply(sock))
        whole = False
        try:
            try:
                await _sendall(sock, b"zINSTREAM\0")
                size = self.options.chunk_bytes
                async for block in upload.read():
                    view = memoryview(block)
                    # Never a chunk of 0 bytes: that one ends the stream.
                    for start in range(0, len(view), size):
                        if reply.done():
                            break  # clamd refused the stream; its reply says why
                        chunk = view[start : start + size]
                        await _sendall(sock, struct.pack(">I", len(chunk)))
                        await _sendall(sock, chunk)
                    if reply.done():
                        break
                else:
                    await _sendall(sock, struct.pack(">I", 0))
                    whole = True
            except _SendFailed as e:
                # Closed on us mid-stream: its reason, if it gave one in time.
                await asyncio.wait({reply}, timeout=REASON_GRACE)
                if not reply.done():
                    raise ClamdError(f"closed the connection while receiving: {e}") from None
            return await reply, whole
        finally:
            # Its read unregistered first: the socket's number may be reused at once.
            await _drop(reply)
            # Closing a plain socket drops unsent bytes at once (the deadline
            # may have passed with clamd no longer reading).
            sock.close()

    async def _version(self) -> str | None:
        """clamd's VERSION (`ClamAV 1.4.3/27400/<database date>`), None if it is not had."""
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                with await _connect(self.endpoint) as sock:
                    await _sendall(sock, b"zVERSION\0")
                    return await _read_reply(sock)
        except (TimeoutError, ClamdError, _SendFailed):
            return None  # the scan's verdict is what matters; it reports its own failures

    def _error(self, reason: str) -> ClamdError:
        return ClamdError(f"clamd at {self.endpoint.address}: {reason}")


class _SendFailed(Exception):
    """Writing to clamd failed (it may have said why before closing)."""


async def _connect(endpoint: Endpoint) -> socket.socket:
    try:
        return await endpoint.connect()
    except OSError as e:
        raise ClamdError(f"connection failed: {e}") from None


async def _sendall(sock: socket.socket, data: bytes | memoryview) -> None:
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
    except OSError as e:
        raise _SendFailed(str(e)) from None


async def _read_reply(sock: socket.socket) -> str:
    """One `\\0`-terminated reply, at most `MAX_REPLY` bytes; `ClamdError` otherwise."""
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\0"):
        if len(data) > MAX_REPLY:
            raise ClamdError(f"sent a reply longer than {MAX_REPLY} bytes")
        try:
            more = await loop.sock_recv(sock, 4096)
        except OSError as e:
            raise ClamdError(f"connection failed while waiting for the reply: {e}") from None
        if not more:
            if not data:
                raise ClamdError("closed the connection without a reply")
            cut = data.decode("utf-8", "replace").strip()
            raise ClamdError(f"reply cut short: {cut!r}")
        data += more
    return data[:-1].decode("utf-8", "replace").strip()


async def _drop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has stopped (its socket closed), whatever it raised."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a failure of a dropped task is not news
