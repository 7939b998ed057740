"""The SSH side of the SFTP backend (sftp.py): connections made on first use
and again after they close, and the sync, fsspec-shaped calls `RenamingStorage`
and the lock make over them, on worker threads.

Each connection is an sshfs `SSHFileSystem` (it receives `[storage.options]` as
sshfs users write them) plus SFTP channels of our own on it. Listing, stat and
remove use sshfs's fsspec methods; the rest uses asyncssh's SFTP client: the
OpenSSH extensions and exclusive create, which sshfs lacks, and small reads and
writes in fewer round trips than sshfs's (they are most of what a conditional
write waits for). The coroutines run on fsspec's IO loop, where sshfs keeps the
connection; errors become the OSErrors files.py translates at the storage
boundary.

Two paths per storage: the bytes of uploads (`open(path, "wb")`, which only
object writers use) travel on one of their own, so small calls (records, the
lock) never queue behind megabytes in the same TCP stream, and a connection
lost with an upload takes no record with it. That path is OpenSSH's `ssh`
(sftppipe.py) when the options allow, else an asyncssh connection of its own
(`AsyncSSHBulk`, `PartFile`).

On the asyncssh path, writes are pipelined: `write` hands a block to the IO
loop and returns while up to `WRITE_WINDOW` bytes of write requests are in
flight. `start_writeback` starts an fsync on a second handle on another
channel, so the disk writes while the upload goes on and the fsync at commit
only waits for the tail (OpenSSH answers a channel's requests one at a time:
an fsync on the writing channel would stop the writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar, cast

import asyncssh
from sshfs import SSHFileSystem

from ..errors import PreconditionFailed, ServiceError, StorageUnavailable
from .sftplock import LOCK_FILE
from .sftppipe import PipeBulk, Window, openssh_command

#: Write requests in flight per object writer: OpenSSH's channel window (2 MiB)
#: is what can be on the wire anyway, and more only queued in asyncssh's send
#: buffer (4 and 8 MiB measured slower and bigger here). The writer holds about
#: twice this in memory (the blocks, and asyncssh's packets of them).
WRITE_WINDOW = 2 << 20

#: The largest write request when the server does not say (limits@openssh.com).
SAFE_WRITE = 16 << 10

#: Reads of small files ask for this much with their first request (OpenSSH
#: answers up to 255 KiB at once; records are a few hundred bytes).
SMALL_READ = 64 << 10

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Session:
    """One SSH connection: sshfs's filesystem on it and our own SFTP channels.

    OpenSSH's SFTP server answers one channel's requests one at a time, so a
    long fsync would hold up every call behind it: the writeback of large
    files gets a channel of its own (`flusher`), opened on first need.
    """

    fs: Any  # SSHFileSystem (untyped)
    sftp: asyncssh.SFTPClient
    sftp_options: dict[str, Any]
    _flusher: asyncio.Future[asyncssh.SFTPClient] | None = None

    @classmethod
    def open(cls, host: str, connect: dict[str, Any]) -> _Session:
        options = dict(connect)
        sftp_options = options.get("sftp_client_kwargs") or {}
        fs = SSHFileSystem(host, skip_instance_cache=True, **options)
        try:
            sftp = _wait(fs.loop, fs.client.start_sftp_client(**sftp_options))
            session = cls(fs, sftp, sftp_options)
            session.run(_require_extensions(sftp))
        except BaseException:
            fs.loop.call_soon_threadsafe(fs.client.close)
            raise
        return session

    @property
    def closed(self) -> bool:
        return bool(self.fs.client.is_closed())

    def run(self, awaitable: Awaitable[T]) -> T:
        return _wait(self.fs.loop, awaitable)

    def close(self) -> None:
        self.fs.loop.call_soon_threadsafe(self.fs.client.close)

    async def flusher(self) -> asyncssh.SFTPClient:
        """The writeback channel (on the IO loop, which serialises the first opening)."""
        failed = (
            self._flusher is not None
            and self._flusher.done()
            and (self._flusher.cancelled() or self._flusher.exception() is not None)
        )
        if self._flusher is None or failed:  # a failed start is tried again

            async def start() -> asyncssh.SFTPClient:
                client: asyncssh.SSHClientConnection = self.fs.client
                return await client.start_sftp_client(**self.sftp_options)

            self._flusher = asyncio.ensure_future(start())
        return await asyncio.shield(self._flusher)


class _Unsupported(Exception):
    """The server lacks an SFTP extension a guarantee rests on."""


async def _require_extensions(sftp: asyncssh.SFTPClient) -> None:
    """Probe the two extensions the guarantees cannot do without.

    asyncssh refuses an unadvertised extension before sending anything; an
    advertised one answers "no such file" for a name that does not exist.
    """
    missing = "/.uploadsvc-probe-that-does-not-exist"
    for name, probe in (
        ("posix-rename@openssh.com (atomic commit)", sftp.posix_rename),
        ("hardlink@openssh.com (create if absent)", sftp.link),
    ):
        try:
            await probe(missing, missing + "-too")
        except asyncssh.SFTPOpUnsupported:
            raise _Unsupported(f"the SFTP server lacks {name}") from None
        except asyncssh.SFTPError:
            pass  # supported: the server looked for the file


class _Connection:
    """One SSH connection, made on first use and again after it closed (by either
    side, or by keepalive after a silence); the calls on it translate errors
    into the OSErrors files.py turns into `StorageUnavailable` / `NotFound`."""

    def __init__(self, url: str, host: str, connect: dict[str, Any]) -> None:
        self.url = url
        self._host = host
        self._connect = connect
        self._session: _Session | None = None
        self._connecting = threading.Lock()

    def session(self) -> _Session:
        with self._connecting:  # one connection at a time, shared by all threads
            session = self._session
            if session is None or session.closed:
                self._session = None
                try:
                    session = _Session.open(self._host, self._connect)
                except _Unsupported as e:
                    raise StorageUnavailable(f"storage {self.url}: {e}") from None
                except Exception as e:
                    raise StorageUnavailable(
                        f"storage {self.url}: cannot connect: {reason(e)}"
                    ) from e
                self._session = session
            return session

    def call(self, fn: Callable[[_Session], T]) -> T:
        """`fn(session)` on the current connection, made when needed."""
        session = self.session()
        return self.on(session, lambda: fn(session))

    def on(self, session: _Session, fn: Callable[[], T]) -> T:
        """`fn()`, a call on `session`, with its errors translated; a call that finds
        the connection gone makes the next `call` reconnect."""
        try:
            return fn()
        except Exception as e:
            if _connection_lost(e) or session.closed:
                self._forget(session)
            translated = _os_error(e)
            if translated is e:
                raise
            raise translated from e

    def _forget(self, session: _Session) -> None:
        with self._connecting:
            if self._session is session:
                self._session = None
        session.close()


class Remote:
    """The filesystem calls RenamingStorage and the lock make, sync, for worker threads.

    Two connections: the bytes of uploads (`open(path, "wb")`, only object
    writers use it) go over one of their own, everything else over the other.
    Small calls then never queue behind megabytes of upload data in the same
    TCP stream, and a connection lost with an upload (a server or proxy
    refusing large writes) takes no record read or lock with it.
    """

    def __init__(self, url: str, host: str, connect: dict[str, Any]) -> None:
        self.url = url
        self.control = _Connection(url, host, connect)
        self.bulk: PartOpener
        argv, why_not = openssh_command(host, connect)
        if argv is None:
            log.info("storage %s: the bytes of uploads go over asyncssh: %s", url, why_not)
            self.bulk = AsyncSSHBulk(_Connection(url, host, connect))
        else:
            timeout = float(connect.get("connect_timeout") or 0)  # 0: none set
            self.bulk = PipeBulk(url, argv, WRITE_WINDOW, timeout, self.makedirs)
        #: Called before every rename; the lock uses it to refuse a late one.
        self.before_rename: Callable[[], None] = lambda: None

    def call(self, fn: Callable[[_Session], T]) -> T:
        return self.control.call(fn)

    # What RenamingStorage uses of an fsspec filesystem.

    def open(self, path: str, mode: str = "rb") -> Part | _Reader:
        if mode == "wb":
            return self.bulk.open(path)
        if mode == "rb":
            return self.call(lambda s: _Reader(self.control, s, s.run(s.sftp.open(path, "rb"))))
        raise ValueError(f"unsupported mode {mode!r}")

    def size(self, path: str) -> int:
        return self.call(lambda s: int(s.fs.size(path)))

    def ls(self, path: str, detail: bool = False) -> list[Any]:
        """Names, or with `detail` sshfs's entries (`name`, `size`, `mtime`, ...)."""
        return self.call(lambda s: list(s.fs.ls(path, detail=detail)))

    def cat_file(self, path: str) -> bytes:
        """A whole small file in two round trips (sshfs's takes four): records are
        read this way, and so is the compare of every conditional write."""

        async def cat(sftp: asyncssh.SFTPClient) -> bytes:
            f = await sftp.open(path, "rb")
            try:
                attrs, data = await asyncio.gather(f.stat(), f.read(SMALL_READ, 0))
                assert isinstance(data, bytes)  # opened in binary mode
                if attrs.size is not None and attrs.size > len(data):  # not that small
                    rest = await f.read(attrs.size - len(data), len(data))
                    assert isinstance(rest, bytes)
                    data += rest
            finally:
                _close_behind(f)
            return data

        return self.call(lambda s: s.run(cat(s.sftp)))

    def rm_file(self, path: str) -> None:
        """Remove a file, but never the lock file: only `ServerLock` removes that (by
        `remove`), with the care its docstring describes. The sweep of old part
        files (`remove_incomplete`) takes every `.part` name, and removing the
        lock by a name read earlier could remove a newer holder's lock."""
        if path.rsplit("/", 1)[-1] != LOCK_FILE:
            self.remove(path)

    def remove(self, path: str) -> None:
        self.call(lambda s: s.fs.rm_file(path))

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        """One stat when the folder exists (asyncssh's and sshfs's `makedirs` try a
        mkdir and a stat per level of the path, and /healthz calls this)."""

        async def makedirs(sftp: asyncssh.SFTPClient) -> None:
            if not await sftp.isdir(path):
                await sftp.makedirs(path, exist_ok=exist_ok)

        self.call(lambda s: s.run(makedirs(s.sftp)))

    def mv(self, src: str, dst: str) -> None:
        """rename(2) on the server, replacing `dst`; never a copy."""
        self.before_rename()
        self.call(lambda s: s.run(s.sftp.posix_rename(src, dst)))

    # The primitives sshfs lacks.

    def write_small(self, path: str, data: bytes) -> None:
        """A new small file, written and made durable."""

        async def write(sftp: asyncssh.SFTPClient) -> None:
            async with await _new_file(sftp, path, "wb") as f:
                await f.write(data, 0)
                await _fsync(f)

        self.call(lambda s: s.run(write(s.sftp)))

    def link(self, src: str, dst: str) -> bool:
        """Hard-link `src` as `dst`; False if `dst` exists (atomically, on the server)."""

        async def link(sftp: asyncssh.SFTPClient) -> bool:
            try:
                await _unless_exists(sftp, dst, lambda: sftp.link(src, dst))
            except FileExistsError:
                return False
            return True

        return self.call(lambda s: s.run(link(s.sftp)))

    def create(self, path: str, data: bytes) -> int | None:
        """Write a new file, created exclusively (`FileExistsError` if `path` exists);
        its mtime on the server's clock, None if the server does not say."""

        async def create(sftp: asyncssh.SFTPClient) -> int | None:
            # block_size=0: the write is one request, sent at once, so the stat
            # behind it in the same round trip sees it (a channel's requests
            # are answered in order).
            f = await _unless_exists(sftp, path, lambda: _new_file(sftp, path, "xb", block_size=0))
            async with f:
                _, attrs = await asyncio.gather(f.write(data, 0), f.stat())
            return attrs.mtime

        return self.call(lambda s: s.run(create(s.sftp)))

    def read_stamped(self, path: str) -> tuple[bytes, int | None] | None:
        """The bytes of a small file and its mtime (server clock); None if absent."""

        async def read(sftp: asyncssh.SFTPClient) -> tuple[bytes, int | None] | None:
            try:
                async with sftp.open(path, "rb") as f:
                    attrs = await f.stat()
                    return await f.read(), attrs.mtime
            except asyncssh.SFTPNoSuchFile:
                return None

        return self.call(lambda s: s.run(read(s.sftp)))

    def stamp(self, path: str) -> float | None:
        """A file's mtime on the server's clock (infinity if the server gives
        none: such a file never looks old); None if it is absent."""

        async def stamp(sftp: asyncssh.SFTPClient) -> float | None:
            try:
                mtime = (await sftp.stat(path)).mtime
            except asyncssh.SFTPNoSuchFile:
                return None
            return math.inf if mtime is None else mtime

        return self.call(lambda s: s.run(stamp(s.sftp)))

    def fsync_folder(self, folder: str) -> None:
        """Make renames in `folder` durable, where the server allows it."""

        async def fsync(sftp: asyncssh.SFTPClient) -> None:
            try:
                f = await sftp.open(folder, "rb")
            except (asyncssh.SFTPFailure, asyncssh.SFTPPermissionDenied):
                return  # a server that does not open folders: its own pace then
            async with f:
                await _fsync(f)  # a failing fsync is an error, not a shrug

        self.call(lambda s: s.run(fsync(s.sftp)))


class Part(Protocol):
    """A part file being written: `PartFile` here, or `sftppipe.PipeFile` over `ssh`."""

    def write(self, block: bytes) -> int: ...

    def flush(self) -> None:
        """Wait for the writes in flight; an error of one surfaces here."""

    def start_writeback(self) -> bool:
        """Start an fsync of the bytes the server has; False while the last one runs."""
        ...

    def fsync(self) -> None:
        """Make every byte written durable."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class PartOpener(Protocol):
    """Where the bytes of uploads go: `sftppipe.PipeBulk` (OpenSSH's `ssh`) when
    the options allow, else `AsyncSSHBulk`."""

    def open(self, path: str) -> Part:
        """A part file at `path`: truncated if it exists, its folder made if missing."""
        ...

    def check(self) -> None:
        """Connect if need be: start-up and /healthz see a path that cannot work."""


class AsyncSSHBulk:
    """Part files on an asyncssh connection of their own, in this process."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def open(self, path: str) -> PartFile:
        def part(s: _Session) -> PartFile:
            return PartFile(
                self._connection, s, path, s.run(_new_file(s.sftp, path, "wb", block_size=0))
            )

        return self._connection.call(part)

    def check(self) -> None:
        self._connection.session()


class PartFile:
    """A remote file being written, with up to `WRITE_WINDOW` bytes of writes in flight.

    An error of a write in flight surfaces at a later `write` or at `flush`
    (which `finish_part` calls before every commit); `close` after an error
    only cleans up, so an abort can go on to remove the part file.

    Writeback of a large file runs beside the writes, on the session's
    flusher channel through a second handle (fsync flushes the file, whichever
    handle asks), so neither the writes nor other calls wait for the disk.
    """

    def __init__(
        self, connection: _Connection, session: _Session, path: str, f: asyncssh.SFTPClientFile
    ) -> None:
        self._connection = connection
        self._session = session
        self._path = path
        self._file = f
        self._offset = 0
        self._in_flight: Window[int] = Window(
            lambda write: self._connection.on(self._session, write.result)
        )
        self._writeback: Future[None] | None = None
        self._behind: asyncssh.SFTPClientFile | None = None  # the flusher's handle
        self._closed = False

    def write(self, block: bytes) -> int:
        self._in_flight.settle(WRITE_WINDOW - len(block))
        piece = self._session.sftp.limits.max_write_len or SAFE_WRITE
        write = _write_pieces(self._file, block, self._offset, piece)
        self._in_flight.add(
            asyncio.run_coroutine_threadsafe(write, self._session.fs.loop), len(block)
        )
        self._offset += len(block)
        return len(block)

    def flush(self) -> None:
        self._in_flight.settle(0)

    def start_writeback(self) -> bool:
        """Start an fsync of the bytes the server has; False while the last one runs."""
        if self._writeback is not None:
            if not self._writeback.done():
                return False
            self._connection.on(self._session, self._writeback.result)  # its error, if any
        self._writeback = asyncio.run_coroutine_threadsafe(
            self._fsync_behind(), self._session.fs.loop
        )
        return True

    def fsync(self) -> None:
        """Make every byte written durable; waits for the writes and the writeback."""
        if self._writeback is not None:
            self._connection.on(self._session, self._writeback.result)
            self._writeback = None
            self._connection.on(self._session, lambda: self._session.run(self._fsync_behind()))
        else:
            self._connection.on(self._session, lambda: self._session.run(_fsync(self._file)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._in_flight.settle(0)  # reported by flush already, or we are aborting
            if self._writeback is not None:
                self._writeback.result()
        self._connection.on(self._session, lambda: self._session.run(self._close_all()))

    async def _fsync_behind(self) -> None:
        if self._behind is None:
            flusher = await self._session.flusher()
            self._behind = await flusher.open(self._path, "rb")
        await _fsync(self._behind)

    async def _close_all(self) -> None:
        try:
            if self._behind is not None:
                await self._behind.close()
        finally:
            await self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _write_pieces(f: asyncssh.SFTPClientFile, block: bytes, offset: int, most: int) -> int:
    """Write `block` at `offset` as requests of at most `most` bytes, all in flight
    at once. The file is opened with `block_size=0`, so each `write` is one
    request, and its data is a view of the block: asyncssh's own splitting
    copies every piece first and drives a task per piece through
    `asyncio.wait`, which cost measurable CPU per byte here."""
    view = memoryview(block)
    pieces = [
        f.write(cast(bytes, view[at : at + most]), offset + at) for at in range(0, len(view), most)
    ]
    if len(pieces) == 1:
        return await pieces[0]
    return sum(await asyncio.gather(*pieces))


async def _fsync(f: asyncssh.SFTPClientFile) -> None:
    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
        await f.fsync()  # fsync@openssh.com; without it, the server's own pace


class _Reader:
    """A remote file being read; `read(n)` issues asyncssh's parallel reads."""

    def __init__(
        self, connection: _Connection, session: _Session, f: asyncssh.SFTPClientFile
    ) -> None:
        self._connection = connection
        self._session = session
        self._file = f
        self._offset = 0

    def seek(self, offset: int) -> int:
        self._offset = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        read = self._file.read(size, self._offset)
        data = self._connection.on(self._session, lambda: self._session.run(read))
        assert isinstance(data, bytes)  # opened in binary mode
        self._offset += len(data)
        return data

    def close(self) -> None:
        self._connection.on(self._session, lambda: self._session.run(self._file.close()))


def _close_behind(f: asyncssh.SFTPClientFile) -> None:
    """Close a read handle without waiting for the answer (on the IO loop): the
    server answers a channel's requests in order, so nothing later can miss it."""
    closing = asyncio.ensure_future(f.close())
    closing.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _new_file(
    sftp: asyncssh.SFTPClient, path: str, mode: str, block_size: int = -1
) -> asyncssh.SFTPClientFile:
    """Open a file for writing, making its folder first if it is missing (as
    `auto_mkdir` does on the local disk: nothing else needs `check` first)."""
    try:
        return await sftp.open(path, mode, block_size=block_size)
    except asyncssh.SFTPNoSuchFile:
        await sftp.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return await sftp.open(path, mode, block_size=block_size)


async def _unless_exists(
    sftp: asyncssh.SFTPClient, path: str, make: Callable[[], Awaitable[T]]
) -> T:
    """`await make()`, which creates `path` and fails if it exists: `FileExistsError` then.

    SFTP v3 has no "exists" status: OpenSSH answers "Failure" for EEXIST and
    for other errors alike, so look. `path` may be gone again by then (another
    process released its lock): then try again, a few times.
    """
    for _ in range(3):
        try:
            return await make()
        except asyncssh.SFTPFailure:
            if await sftp.exists(path):
                raise FileExistsError(17, "File exists", path) from None
    return await make()


def _wait(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` on `loop` (fsspec's IO loop) and wait for it, from a worker thread.

    Wrapped in a coroutine: some of asyncssh's "coroutines" (`open`,
    `start_sftp_client`) are awaitable context managers.
    """

    async def awaited() -> T:
        return await awaitable

    return asyncio.run_coroutine_threadsafe(awaited(), loop).result()


def _connection_lost(e: BaseException) -> bool:
    """Whether `e` means the connection or our channel is gone (so reconnect next time)."""
    if isinstance(e, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
        return True
    if isinstance(e, asyncssh.SFTPError):
        return False  # a status the server sent: the channel works
    return isinstance(e, (asyncssh.Error, ConnectionError, TimeoutError, EOFError))


def _os_error(e: Exception) -> Exception:
    """asyncssh's and sshfs's errors as the OSErrors files.py translates."""
    if isinstance(e, (OSError, ServiceError, PreconditionFailed)):
        return e
    if isinstance(e, asyncssh.SFTPNoSuchFile):
        return FileNotFoundError(2, e.reason)
    if isinstance(e, asyncssh.SFTPPermissionDenied):
        return PermissionError(13, e.reason)
    if isinstance(e, (asyncssh.Error, ValueError, EOFError)):
        # ValueError: asyncssh's "I/O operation on closed file", or sshfs's
        # "Can't create any SFTP connections!" on a closing connection.
        return OSError(reason(e))
    return e


def reason(e: BaseException) -> str:
    if isinstance(e, asyncssh.Error):
        return e.reason or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
