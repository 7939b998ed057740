"""Storage on Azure Blob Storage, through adlfs's credentials and its async SDK clients.

Layout under `az://container/prefix` (or `abfs://`): `<prefix>/<id>` (the
bytes) and `<prefix>/<id>.json` (the record), both block blobs. Nothing else
is ever left behind, not even uncommitted blocks.

`[storage.options]` go to adlfs's `AzureBlobFileSystem` as its users write them
(`account_name`, `account_key`, `connection_string`, `sas_token`, `credential`,
service principal or the default credential chain, `timeout`,
`connection_timeout`, `read_timeout`), so a configuration that works with
adlfs works here; this module uses adlfs's async SDK client
(`fs.service_client`), not its file API. Two settings are forced:
`skip_instance_cache` (no sharing of clients between apps) and
`use_listings_cache=False` (several instances must never see a stale
listing; this module lists through the service anyway). adlfs does not
forward the SDK's retry settings to its client, so `retry_total`,
`retry_connect`, `retry_read` and `retry_status` are taken out of the options
here and applied to every call (with the SDK's defaults, an endpoint that
refuses connections is retried for about a minute).

Why not `fs.open(path, "wb")`: closing it commits, even on an error or an
abort, publishing a partial blob, and it buffers 50 MiB per writer. Instead
the writer stages blocks itself (`Put Block`): blocks of `BLOCK_BYTES`, up to
`BLOCKS_IN_FLIGHT` uploading at once while the next one fills, then one
`Put Block List` at commit. An object of at most `SINGLE_PUT_BYTES` is a
single `Put Blob` at commit. Uncommitted blocks are never visible to readers
or listings, so nothing is published before commit, and nothing under another
name either. Abort waits for the blocks in flight, then deletes the blob
name: on a name with only uncommitted blocks, `Delete Blob` discards them
(one request, and it never creates a blob). What a crash leaves, Azure
discards 7 days after the last block was staged.

A commit that failed or was cancelled (it is waited for, never abandoned on
the wire) is undone by deleting the key: keys are fresh, so nothing older
can live there.

Every SDK call runs on fsspec's IO loop thread (the loop adlfs's clients
live on), awaited from the server's loop through `run_coroutine_threadsafe`,
as in s3.py: request signing, XML parsing and the copying of block bodies
stay off the server's loop, which never waits on a blocking call.

Conditional writes (`If-None-Match: *`, `If-Match: etag`) are checked by the
service, so records and locks are safe for several instances sharing one
container. As with any retried request, a conditional write whose answer was
lost and which the SDK then retried can report a race it actually won.

SDK errors are translated here, once: a missing blob is `NotFound`, a lost
condition `PreconditionFailed`, everything else (a missing container, refused
credentials, an unreachable endpoint) `StorageUnavailable` naming the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Self, TypeVar

import aiohttp
import fsspec
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobBlock, BlobProperties
from azure.storage.blob.aio import BlobClient, ContainerClient

from ..errors import NotFound, PreconditionFailed, ServiceError, StorageUnavailable
from ..offload import on_loop
from .interface import BLOCK_SIZE, Ability, ObjectInfo, ObjectWriter, Storage, checked_key
from .spill import PartBuffer, Piece

#: Bytes per staged block. Memory per upload is about BLOCK_BYTES *
#: (BLOCKS_IN_FLIGHT + 2): the blocks in flight, one filling and one being
#: copied into its body (the copy, like every SDK call, on the loop thread);
#: the filling one waits on disk while the client stalls (spill.py).
#: Azure allows 50,000 blocks per blob: objects up to ~390 GiB. Blocks over
#: 4 MiB also get Azure's high-throughput path on standard accounts.
BLOCK_BYTES = 8 << 20
BLOCKS_IN_FLIGHT = 3

#: Objects up to this size are one Put Blob at commit. The SDK sends a Put
#: Blob body as `bytes`, which aiohttp copies whole into the socket's buffer
#: (and warns about past 1 MiB); larger objects go as blocks, streamed.
SINGLE_PUT_BYTES = 1 << 20

#: Bytes per ranged GET when reading; each is held whole while it is handed out.
READ_BYTES = 4 << 20

#: The SDK's per-call retry settings, which adlfs does not pass to its client.
RETRY_OPTIONS = ("retry_total", "retry_connect", "retry_read", "retry_status")

T = TypeVar("T")
log = logging.getLogger(__name__)


class AzureStorage(Storage):
    """Keys are block blobs under `az://container/prefix/`, reached through adlfs's client."""

    # Blob writes and listings are strongly consistent; conditions are checked
    # by the service; a committed blob is stored durably before the answer.
    abilities = frozenset(Ability) - {Ability.local_files}

    def __init__(
        self, fs: Any, root: str, url: str, call_options: dict[str, Any] | None = None
    ) -> None:
        self.fs = fs
        self.url = url
        container, _, prefix = root.strip("/").partition("/")
        self.container_name = container
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        # Building a client contacts nothing; requests go out on fs.loop only.
        self.container: ContainerClient = fs.service_client.get_container_client(container)
        # adlfs's own timeouts (timeout, connection_timeout, read_timeout), then ours.
        self.call_options = {**getattr(fs, "_timeout_kwargs", {}), **(call_options or {})}

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        call_options = {k: options.pop(k) for k in RETRY_OPTIONS if k in options}
        options["skip_instance_cache"] = True
        options["use_listings_cache"] = False
        try:
            fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise StorageUnavailable(f"storage {url}: {e}") from e
        if not root.strip("/"):
            raise StorageUnavailable(f"storage {url}: the URL names no container")
        return cls(fs, root, url, call_options)

    def blob_name(self, key: str) -> str:
        return f"{self.prefix}{checked_key(key)}"

    async def on_fs_loop(self, coro: Coroutine[Any, Any, T], *, settle: bool = False) -> T:
        """Await a coroutine on adlfs's loop thread (`on_loop`: `settle` a call that
        changes a blob), translating its errors."""
        try:
            return await on_loop(coro, self.fs.loop, settle=settle)
        except ServiceError:
            raise
        except ResourceNotFoundError as e:
            if _code(e) == "ContainerNotFound":
                raise StorageUnavailable(
                    f"storage {self.url}: container {self.container_name!r} does not exist"
                ) from e
            raise NotFound("no such object") from e
        except ResourceModifiedError as e:  # 412: an If-Match or If-None-Match lost
            raise PreconditionFailed(str(e)) from e
        except ResourceExistsError as e:
            # Put Blob with If-None-Match: * answers 409 BlobAlreadyExists.
            if _code(e) == "BlobAlreadyExists":
                raise PreconditionFailed(str(e)) from e
            raise StorageUnavailable(f"storage {self.url} failed: {_reason(e)}") from e
        except (AzureError, aiohttp.ClientError, OSError) as e:
            raise StorageUnavailable(f"storage {self.url} failed: {_reason(e)}") from e

    async def call(
        self, key: str, use: Callable[[BlobClient], Awaitable[T]], *, settle: bool = False
    ) -> T:
        """`use(client of the blob for key)`, on the loop thread (even building the client)."""
        name = self.blob_name(key)

        async def run() -> T:
            return await use(self.container.get_blob_client(name))

        return await self.on_fs_loop(run(), settle=settle)

    def create(self, key: str) -> ObjectWriter:
        return _AzureWriter(self, checked_key(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        position = start
        while end is None or position < end:
            length = READ_BYTES if end is None else min(READ_BYTES, end - position)
            data = await self.call(key, partial(self._range, offset=position, length=length))
            for i in range(0, len(data), BLOCK_SIZE):
                yield data[i : i + BLOCK_SIZE]
            if len(data) < length:
                return
            position += length

    async def _range(self, blob: BlobClient, *, offset: int, length: int) -> bytes:
        try:
            download = await blob.download_blob(
                offset=offset, length=length, max_concurrency=1, **self.call_options
            )
        except HttpResponseError as e:
            if e.status_code == 416:  # starts at or past the end (or the blob is empty)
                return b""
            raise
        data: bytes = await download.readall()
        return data

    async def size(self, key: str) -> int:
        properties = await self.call(
            key, lambda blob: blob.get_blob_properties(**self.call_options)
        )
        return int(properties.size)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(key, lambda blob: blob.delete_blob(**self.call_options))

    async def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        """Blob listings have no "start after": names up to `start_after` are read and
        skipped, 5000 a request, which keeps a page cheap until a prefix holds millions."""

        async def names() -> list[str]:
            # With a delimiter, blobs below a further "/" come back as one
            # prefix each: nothing of ours lives there (keys have no "/").
            listing = self.container.walk_blobs(
                name_starts_with=f"{self.prefix}{prefix}", delimiter="/", **self.call_options
            )
            keys: list[str] = []
            async for item in listing:
                key = item.name[len(self.prefix) :]
                if isinstance(item, BlobProperties) and key > start_after:
                    keys.append(key)
                    if len(keys) == limit:
                        break
            return keys

        return await self.on_fs_loop(names())

    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        if if_match is not None and if_none_match:
            raise ValueError("put_small: if_match and if_none_match exclude each other")
        conditions: dict[str, Any] = {}
        if if_none_match:
            conditions["match_condition"] = MatchConditions.IfMissing
        elif if_match is not None:
            conditions = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
        response = await self.call(
            key,
            lambda blob: blob.upload_blob(
                data, length=len(data), overwrite=True, **conditions, **self.call_options
            ),
        )
        return str(response["etag"])

    async def get_small(self, key: str) -> tuple[bytes, str]:
        async def whole(blob: BlobClient) -> tuple[bytes, str]:
            download = await blob.download_blob(max_concurrency=1, **self.call_options)
            data: bytes = await download.readall()
            return data, str(download.properties.etag)

        return await self.call(key, whole)

    async def check(self) -> None:
        async def first_name() -> None:
            # One listing request: it needs the container and working
            # credentials, and only the permission `list` needs anyway (a
            # container-scoped SAS may not read the container's properties).
            names = self.container.list_blob_names(
                name_starts_with=self.prefix, results_per_page=1, **self.call_options
            )
            async for _ in names:
                break

        try:
            await self.on_fs_loop(first_name())
        except StorageUnavailable as e:
            cause = e.__cause__ or e
            raise StorageUnavailable(
                f"storage {self.url}: container {self.container_name!r} is not reachable: "
                f"{_reason(cause)}"
            ) from e


class _AzureWriter(ObjectWriter):
    """One blob as staged blocks and a block list (or one Put Blob when small).

    Bookkeeping is explicit because every failure path must clean up: the
    blocks staged or in flight, and whether a commit began.
    """

    def __init__(self, storage: AzureStorage, key: str) -> None:
        self._azure = storage
        self._key = key
        self._buffer = PartBuffer()
        self._buffered = 0
        self._size = 0
        self._block_ids: list[str] = []
        self._in_flight: deque[asyncio.Future[None]] = deque()
        self._committing = False
        self._done = False

    async def write(self, block: bytes) -> None:
        self._check_open()
        await self._buffer.add(block)
        self._buffered += len(block)
        self._size += len(block)
        if self._buffered >= BLOCK_BYTES:
            await self._stage_block()

    async def idle(self) -> None:
        if not self._done:
            await self._buffer.idle()

    async def commit(self) -> ObjectInfo:
        self._check_open()
        self._committing = True
        options = self._azure.call_options
        blocks = await self._buffer.restore()
        if not self._block_ids and self._buffered <= SINGLE_PUT_BYTES:
            body = b"".join(blocks)
            blocks.clear()
            await self._azure.call(
                self._key,
                lambda blob: blob.upload_blob(
                    body, length=len(body), overwrite=True, max_concurrency=1, **options
                ),
                settle=True,
            )
        else:
            if self._buffered:
                await self._stage_block()
            while self._in_flight:
                await self._in_flight.popleft()
            block_list = [BlobBlock(block_id) for block_id in self._block_ids]
            await self._azure.call(
                self._key, lambda blob: blob.commit_block_list(block_list, **options), settle=True
            )
        self._done = True
        return ObjectInfo(self._key, self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.discard()
        for future in self._in_flight:
            future.cancel()  # each waits for its request to end (settled)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._in_flight.clear()
        if not (self._block_ids or self._committing):
            return  # nothing ever reached the service
        try:
            # Discards the uncommitted blocks and, after a commit that failed
            # or was cancelled but may have landed, the blob: the key is this
            # upload's own, so removing it is always safe.
            await self._azure.delete(self._key)
        except ServiceError as e:
            # Abort runs while another error is propagating: report, don't mask it.
            log.warning("could not clean up after %s: %s", self._key, e.detail)

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError(f"writer for {self._key} already committed or aborted")

    async def _stage_block(self) -> None:
        pieces = await self._buffer.restore()
        if len(self._in_flight) >= BLOCKS_IN_FLIGHT:
            await self._in_flight.popleft()
        # Block ids are base64 of a fixed-width number: Azure wants them all
        # the same length within a blob, and the order is the commit's.
        block_id = f"{len(self._block_ids):06d}"
        self._block_ids.append(block_id)
        blocks, self._buffered = list(pieces), 0
        pieces.clear()
        self._in_flight.append(asyncio.ensure_future(self._send(block_id, blocks)))

    async def _send(self, block_id: str, blocks: list[Piece]) -> None:
        options = self._azure.call_options

        async def stage(blob: BlobClient) -> None:
            body, length = _joined(blocks)
            blocks.clear()
            await blob.stage_block(block_id, body, length=length, **options)

        await self._azure.call(self._key, stage, settle=True)


def _joined(blocks: list[Piece]) -> tuple[io.BytesIO, int]:
    """The blocks as one body, copied once into a buffer of its own (on the loop thread).

    A BytesIO rather than `bytes`: aiohttp streams it to the socket in 64 KiB
    pieces, where `bytes` would be copied whole into the transport's buffer,
    holding every block in flight twice. Its buffer is sized once, up front:
    growing it block by block would reallocate it at every size from 1 MiB
    up, which fragments the heap and raises the process's resident memory.
    """
    length = sum(len(block) for block in blocks)
    body = io.BytesIO()
    if length:
        body.seek(length - 1)
        body.write(b"\0")  # one allocation of the whole length
        body.seek(0)
    for block in blocks:
        body.write(block)
    body.seek(0)
    return body, length


def _code(error: AzureError) -> object:
    """The service's error code, set by the SDK on its errors: a plain string or a
    `StorageErrorCode` (a str enum, so both compare equal to "BlobNotFound")."""
    return getattr(error, "error_code", None)


def _reason(error: BaseException) -> str:
    """The first line of an SDK error: the rest repeats request ids and the XML body."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
