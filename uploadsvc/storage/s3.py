"""Storage on S3 and S3-compatible object stores, through s3fs's async client.

Layout under `s3://bucket/prefix`: `<prefix>/<id>` (the bytes) and
`<prefix>/<id>.json` (the record). Nothing else is ever left behind.

Why not `fs.open(path, "wb")`: leaving that block by an exception *completes*
the multipart upload, publishing a partial object, and it buffers a whole
block per writer. Instead this module drives the multipart upload itself:
parts of `PART_SIZE` bytes, up to `PARTS_IN_FLIGHT` uploading at once while the
next part fills, `complete_multipart_upload` at commit, and
`abort_multipart_upload` on every other way out. An object smaller than one
part is a single PUT at commit. Either way nothing is visible until commit.

Every call runs on s3fs's own event loop thread (fsspec's IO loop), awaited
from the server's loop through `run_coroutine_threadsafe`. s3fs's sync wrappers
would block the server's loop; running its coroutines on the server's loop
would put botocore's per-part signing and checksums (CPU work) there too.

Conditional writes (`IfNoneMatch="*"`, `IfMatch=etag`) make records and locks
safe for several instances sharing one bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Self, TypeVar

import fsspec
from s3fs import S3FileSystem

from ..errors import NotFound, PreconditionFailed, ServiceError, StorageUnavailable
from ..offload import on_loop
from .interface import BLOCK_SIZE, Ability, ObjectInfo, ObjectWriter, Storage, checked_key
from .spill import PartBuffer

#: S3 parts must be at least 5 MiB (but the last). Memory per upload is about
#: part size * (PARTS_IN_FLIGHT + 2): the parts in flight, one filling and one
#: being copied into its body; the filling one waits on disk while the client
#: stalls (spill.py). The part size starts at PART_SIZE and grows (see `part_size`).
PART_SIZE = 8 << 20
PARTS_IN_FLIGHT = 2

#: S3 allows 10,000 parts; growing the part size by PART_SIZE every 1,000
#: parts lifts the largest object from 80 GiB to about 430 GiB while small
#: uploads keep small parts (and memory).
PARTS_PER_STEP = 1000

T = TypeVar("T")
log = logging.getLogger(__name__)


class S3Storage(Storage):
    """Keys are objects under `s3://bucket/prefix/`, reached through one s3fs instance."""

    # S3 has been strongly consistent for reads after writes and for listings
    # since 2020; every listing here goes to the store (no s3fs dircache).
    abilities = frozenset(Ability) - {Ability.local_files}

    def __init__(self, fs: S3FileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.url = url
        bucket, _, prefix = root.strip("/").partition("/")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        # A private instance: s3fs's instance cache would share sessions (and
        # their state) between apps and between tests.
        options.setdefault("skip_instance_cache", True)
        try:
            fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise StorageUnavailable(f"storage {url}: {e}") from e
        return cls(fs, root, url)

    def object_key(self, key: str) -> str:
        return f"{self.prefix}{checked_key(key)}"

    async def on_fs_loop(self, coro: Coroutine[Any, Any, T], *, settle: bool = False) -> T:
        """Await a coroutine on s3fs's loop thread (`on_loop`: `settle` a call that
        changes an upload's state), translating its errors."""
        try:
            return await on_loop(coro, self.fs.loop, settle=settle)
        except ServiceError:
            raise
        except FileNotFoundError as e:
            raise NotFound("no such object") from e
        except FileExistsError as e:
            raise PreconditionFailed(str(e)) from e
        except Exception as e:
            # 409 ConditionalRequestConflict: a concurrent conditional write won.
            if _s3_code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise PreconditionFailed(str(e)) from e
            raise StorageUnavailable(f"storage {self.url} failed: {e}") from e

    async def call(self, method: str, *, settle: bool = False, **kwargs: Any) -> Any:
        coro = self.fs._call_s3(method, Bucket=self.bucket, **kwargs)
        return await self.on_fs_loop(coro, settle=settle)

    def create(self, key: str) -> ObjectWriter:
        return _S3Writer(self, self.object_key(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        # No Range header for a whole read: S3 answers 416 to "bytes=0-" on an empty object.
        wanted: dict[str, Any] = {}
        if start or end is not None:
            wanted["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = await self.call("get_object", Key=self.object_key(key), **wanted)
        body = response["Body"]
        try:
            while block := await self.on_fs_loop(body.read(BLOCK_SIZE)):
                yield block
        finally:
            self.fs.loop.call_soon_threadsafe(body.close)

    async def size(self, key: str) -> int:
        response = await self.call("head_object", Key=self.object_key(key))
        return int(response["ContentLength"])

    async def delete(self, key: str) -> None:
        await self.call("delete_object", Key=self.object_key(key))

    async def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        keys: list[str] = []
        token: dict[str, Any] = {}
        if start_after:
            token["StartAfter"] = f"{self.prefix}{start_after}"
        while limit is None or len(keys) < limit:
            wanted = 1000 if limit is None else min(1000, limit - len(keys))
            page = await self.call(
                "list_objects_v2",
                Prefix=f"{self.prefix}{prefix}",
                Delimiter="/",
                MaxKeys=wanted,
                **token,
            )
            keys += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return keys

    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        conditions: dict[str, Any] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        response = await self.call("put_object", Key=self.object_key(key), Body=data, **conditions)
        return str(response["ETag"])

    async def get_small(self, key: str) -> tuple[bytes, str]:
        response = await self.call("get_object", Key=self.object_key(key))
        body = response["Body"]
        try:
            data = await self.on_fs_loop(body.read())
        finally:
            self.fs.loop.call_soon_threadsafe(body.close)
        return data, str(response["ETag"])

    async def remove_incomplete(
        self, older_than: float, began: Callable[[str], float | None] = lambda key: None
    ) -> int:
        """Abort multipart uploads under the prefix with no sign of life for `older_than` s:
        begun before, and no part uploaded since (a slow client is not a dead one)."""
        cutoff = time.time() - older_than
        removed = 0
        markers: dict[str, Any] = {}
        while True:
            page = await self.call("list_multipart_uploads", Prefix=self.prefix, **markers)
            for upload in page.get("Uploads", []):
                key = upload["Key"][len(self.prefix) :]
                started = max(upload["Initiated"].timestamp(), began(key) or 0)
                if started < cutoff and await self._last_part_time(upload) < cutoff:
                    with contextlib.suppress(NotFound):
                        await self.call(
                            "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    removed += 1
            if not page.get("IsTruncated"):
                return removed
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    async def _last_part_time(self, upload: dict[str, Any]) -> float:
        """When the newest part of a multipart upload arrived (0: none has)."""
        latest, marker = 0.0, 0
        while True:
            page = await self.call(
                "list_parts",
                Key=upload["Key"],
                UploadId=upload["UploadId"],
                PartNumberMarker=marker,
            )
            for part in page.get("Parts", []):
                latest = max(latest, part["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return latest
            marker = int(page["NextPartNumberMarker"])

    async def check(self) -> None:
        try:
            await self.call("head_bucket")
        except (NotFound, StorageUnavailable) as e:
            cause = e.__cause__ or e
            raise StorageUnavailable(
                f"storage {self.url}: bucket {self.bucket!r} is not reachable: {cause}"
            ) from e


class _S3Writer(ObjectWriter):
    """One object as a multipart upload (or one PUT when it stays under a part).

    Bookkeeping is explicit because every failure path must abort: the
    upload id once started, the parts in flight, and whether a commit began.
    """

    def __init__(self, storage: S3Storage, object_key: str) -> None:
        self._s3 = storage
        self._key = object_key
        self._buffer = PartBuffer()
        self._buffered = 0
        self._size = 0
        self._upload_id: str | None = None
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._parts: list[dict[str, Any]] = []
        self._multipart = False  # a multipart upload was asked for (its id may be lost)
        self._committing = False
        self._done = False

    async def write(self, block: bytes) -> None:
        await self._buffer.add(block)
        self._buffered += len(block)
        self._size += len(block)
        if self._buffered >= part_size(len(self._parts) + 1):
            await self._send_part()

    async def idle(self) -> None:
        if not self._done:
            await self._buffer.idle()

    async def commit(self) -> ObjectInfo:
        self._committing = True
        if self._upload_id is None:
            body = await self._take_buffer()
            await self._s3.call("put_object", Key=self._key, Body=body, settle=True)
        else:
            if self._buffered:
                await self._send_part()
            while self._in_flight:
                await self._in_flight.popleft()
            await self._s3.call(
                "complete_multipart_upload",
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
                settle=True,
            )
        self._done = True
        return ObjectInfo(self._key[len(self._s3.prefix) :], self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.discard()
        for future in self._in_flight:
            future.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        try:
            await self._clean_up()
        except ServiceError as e:
            # Abort runs while another error is propagating: report, don't mask it.
            log.warning("could not clean up after %s: %s", self._key, e.detail)

    async def _clean_up(self) -> None:
        if self._upload_id is not None:
            with contextlib.suppress(NotFound):  # already gone
                await self._s3.call(
                    "abort_multipart_upload", Key=self._key, UploadId=self._upload_id
                )
        elif self._multipart:
            # The start was cancelled in flight, so its id never reached us:
            # find it by listing (this needs s3:ListBucketMultipartUploads).
            listing = await self._s3.call("list_multipart_uploads", Prefix=self._key)
            for upload in listing.get("Uploads", []):
                if upload["Key"] == self._key:
                    with contextlib.suppress(NotFound):
                        await self._s3.call(
                            "abort_multipart_upload", Key=self._key, UploadId=upload["UploadId"]
                        )
        if self._committing:
            # A commit that failed may still have published (a lost answer):
            # the key is this upload's own, so removing it is always safe.
            await self._s3.call("delete_object", Key=self._key)

    async def _take_buffer(self) -> io.BytesIO:
        """The buffered blocks as one body, copied once into a buffer of its own.

        Not `bytes`: botocore would wrap them in a BytesIO that shares their
        memory, and aiohttp's `getbuffer()` on it would copy the part again,
        holding every part in flight twice.
        """
        blocks = await self._buffer.restore()
        body = io.BytesIO()
        for block in blocks:
            body.write(block)
        body.seek(0)
        blocks.clear()
        self._buffered = 0
        return body

    async def _send_part(self) -> None:
        if self._upload_id is None:
            self._multipart = True
            started = await self._s3.call("create_multipart_upload", Key=self._key, settle=True)
            self._upload_id = str(started["UploadId"])
        if len(self._in_flight) >= PARTS_IN_FLIGHT:
            await self._in_flight.popleft()
        number = len(self._parts) + 1
        part: dict[str, Any] = {"PartNumber": number}
        self._parts.append(part)
        body = await self._take_buffer()
        self._in_flight.append(asyncio.ensure_future(self._upload_part(part, body)))

    async def _upload_part(self, part: dict[str, Any], body: io.BytesIO) -> None:
        response = await self._s3.call(
            "upload_part",
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=part["PartNumber"],
            Body=body,
            settle=True,
        )
        part["ETag"] = response["ETag"]


def part_size(number: int) -> int:
    """Bytes in part `number` (1-based); parts need not be equal, only >= 5 MiB."""
    return PART_SIZE * (1 + (number - 1) // PARTS_PER_STEP)


def _s3_code(error: BaseException) -> str | None:
    """The S3 error code of a botocore error, or of the one s3fs wrapped."""
    for e in (error, error.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
    return None
