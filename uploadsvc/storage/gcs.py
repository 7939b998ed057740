"""Storage on Google Cloud Storage, through its JSON API (gcsapi.py) over gcsfs's session.

Layout under `gs://bucket/prefix` (or `gcs://`): `<prefix>/<id>` (the bytes)
and `<prefix>/<id>.json` (the record). Nothing else is ever an object: the
bytes of an upload in progress live in a resumable upload session, which GCS
keeps outside the bucket's objects (no listing shows it; GCS forgets sessions
left alone for a week, so there is nothing for `remove_incomplete` to do).

Writes use GCS's own primitives, never a rename or copy:

- an object of up to one chunk is one multipart upload at commit;
- a larger one is a resumable upload session, started once more than a
  chunk has arrived, fed chunks of `CHUNK_SIZE` bytes (a multiple of 256 KiB,
  as GCS requires) and finalised at commit by the request that carries the
  last chunk (never an empty request after a full one). Until then no
  reader sees anything, not even under another name. The next chunk fills
  while the previous one uploads (a session takes its chunks in order, one at
  a time), so receiving and sending overlap. Chunks are kept in files and
  sent from there (`_GCSWriter`), so memory stays flat whatever their size;
- abort cancels the session (`DELETE` on its URI), on every way out that is
  not a commit; a commit that failed or was cancelled deletes the key too, as
  s3.py does: the key is always fresh, so nothing older can live there.

`put_small`/`get_small` use generations as etags: `ifGenerationMatch=0`
creates only if absent, `ifGenerationMatch=<generation read>` replaces only
if unchanged, and GCS answers 412 to the loser, which becomes
`PreconditionFailed`. Small writes are multipart uploads, the one path where
GCS and fake-gcs-server (the test emulator) both check preconditions.

The client is `gcsfs.core.GCSFileSystem`, built from `[storage.options]` as
gcsfs users know them (`project`, `token`, `endpoint_url`, `requester_pays`,
`session_kwargs`, `requests_timeout`, `block_size` for the chunk size, ...),
never `gcsfs.GCSFileSystem`: with `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT` on
(gcsfs's default, read once when gcsfs is imported) that name is gcsfs's
experimental subclass, which first asks the bucket's type over gRPC with TLS
(hanging 60 s against any plain-HTTP endpoint) and writes zonal buckets as
appendable objects, readable before they are finalised. This backend speaks
only the JSON API, so it always takes the plain class, whatever the
environment says and with or without `endpoint_url`, and no user has to set
the variable; zonal (Rapid) buckets are not supported. Building the client
contacts no bucket; with `token` unset, gcsfs looks for credentials then
(gcloud's files, and on Google's endpoint the GCE metadata server): set
`token` to skip that search. `retries` (ours; default `RETRIES`) bounds the
attempts per call, see gcsapi.py; `check` makes one.

Every request runs on gcsfs's own event loop thread (fsspec's IO loop),
awaited from the server's loop through `run_coroutine_threadsafe`, as in
s3.py: the server's loop never waits on the network or on a token refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Self, TypeVar

from gcsfs.core import GCSFileSystem

from ..errors import NotFound, PreconditionFailed, ServiceError, StorageUnavailable
from ..offload import on_loop
from .gcsapi import JSONAPI, HTTPError, InMemory, read_block
from .interface import Ability, ObjectInfo, ObjectWriter, Storage, checked_key
from .spill import Spill

#: Bytes per request of a resumable session (the `block_size` option, as for
#: gcsfs's own files); GCS wants a multiple of 256 KiB. Chunks live on disk
#: (`TMPDIR`: two per upload in flight at most), not in memory. Fewer, larger
#: chunks cost fewer round trips, and far less time on fake-gcs-server, which
#: re-hashes the whole upload at every chunk. 50 MiB is gcsfs's own chunk, so
#: the emulator does for an upload here what it does for gcsfs's put_file:
#: over seven runs in rounds, 0.83-1.38x put_file, median 1.12x (40 MiB:
#: 0.81-1.33x, median 0.92x; 24 MiB chunks, in memory then: 0.69-0.97x).
CHUNK_SIZE = 50 << 20
_CHUNK_UNIT = 256 << 10

#: Attempts per call (the `retries` storage option): a few seconds against a
#: dead endpoint, where gcsfs's own calls take about 30.
RETRIES = 4

T = TypeVar("T")
log = logging.getLogger(__name__)


class GCSStorage(Storage):
    """Keys are objects under `gs://bucket/prefix/`, reached through one gcsfs instance."""

    # Objects appear whole at finalisation; preconditions are checked by the
    # store itself, so they hold between processes and hosts; GCS listings are
    # strongly consistent and every listing here goes to the store.
    abilities = frozenset(Ability) - {Ability.local_files}

    def __init__(
        self,
        fs: Any,
        bucket: str,
        prefix: str,
        url: str,
        *,
        retries: int = RETRIES,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.fs = fs
        self.api = JSONAPI(fs, bucket, retries)
        self.url = url
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.chunk_size = chunk_size

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        bucket, _, prefix = url.split("://", 1)[-1].partition("/")
        if not bucket:
            raise StorageUnavailable(f"storage {url}: no bucket in the URL")
        # Ours, not gcsfs's: gcsfs would take it silently and ignore it.
        retries = options.pop("retries", RETRIES)
        if not _whole(retries) or retries < 1:
            raise StorageUnavailable(f"storage {url}: retries must be a whole number >= 1")
        # gcsfs's own knob for the chunks of its resumable uploads.
        chunk_size = options.get("block_size") or CHUNK_SIZE
        if not _whole(chunk_size) or chunk_size <= 0 or chunk_size % _CHUNK_UNIT:
            raise StorageUnavailable(f"storage {url}: block_size must be a multiple of 256 KiB")
        # A private instance (gcsfs caches instances, and their sessions);
        # listings never go through gcsfs's cache here, but none is kept either.
        options.setdefault("skip_instance_cache", True)
        options.setdefault("use_listings_cache", False)
        try:
            fs = GCSFileSystem(**options)
        except Exception as e:  # gcsfs refuses options with ValueError, TypeError, auth errors
            raise StorageUnavailable(f"storage {url}: {_describe(e)}") from e
        return cls(fs, bucket, prefix, url, retries=retries, chunk_size=chunk_size)

    def object_name(self, key: str) -> str:
        return f"{self.prefix}{checked_key(key)}"

    async def on_fs_loop(
        self, coro: Coroutine[Any, Any, T], *, settle: bool = False, absent: str = "object"
    ) -> T:
        """Await a coroutine on gcsfs's loop thread (`on_loop`: `settle` a call that may
        publish or open something), translating its errors. A 404 is a missing
        object (`NotFound`) where `absent` is "object", and a missing bucket
        (`StorageUnavailable`) where it is "bucket"."""
        try:
            return await on_loop(coro, self.fs.loop, settle=settle)
        except ServiceError:
            raise
        except HTTPError as e:
            if e.status == 404 and absent == "object":
                raise NotFound("no such object") from e
            if e.status == 404:
                raise StorageUnavailable(
                    f"storage {self.url}: bucket {self.bucket!r} does not exist ({e})"
                ) from e
            if e.status == 412:
                raise PreconditionFailed(str(e)) from e
            raise StorageUnavailable(f"storage {self.url} failed: {e}") from e
        except Exception as e:
            raise StorageUnavailable(f"storage {self.url} failed: {_describe(e)}") from e

    def create(self, key: str) -> ObjectWriter:
        return _GCSWriter(self, self.object_name(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        name = self.object_name(key)
        # No Range header for a whole read: GCS answers 416 to "bytes=0-" on an empty object.
        wanted: dict[str, str] = {}
        if start or end is not None:
            wanted["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = await self.on_fs_loop(self.api.open_media(name, wanted))
        if response is None:
            return  # the range starts past the end: there are no such bytes
        try:
            while block := await self.on_fs_loop(read_block(response)):
                yield block
        finally:
            self.fs.loop.call_soon_threadsafe(response.close)

    async def size(self, key: str) -> int:
        url = self.api.object_url(self.object_name(key))
        answer = await self.on_fs_loop(self.api.request("GET", url, params={"fields": "size"}))
        return int(answer.json()["size"])

    async def delete(self, key: str) -> None:
        url = self.api.object_url(self.object_name(key))
        with contextlib.suppress(NotFound):  # absent is fine
            await self.on_fs_loop(self.api.request("DELETE", url))

    async def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> list[str]:
        keys: list[str] = []
        params = {
            "prefix": f"{self.prefix}{prefix}",
            "delimiter": "/",
            "fields": "items(name),nextPageToken",
        }
        if start_after:  # startOffset includes its own name: asked for, then dropped
            params["startOffset"] = f"{self.prefix}{start_after}"
        while limit is None or len(keys) < limit:
            if limit is not None:
                params["maxResults"] = str(min(1000, limit - len(keys) + 1))
            answer = await self.on_fs_loop(
                self.api.request("GET", self.api.objects_url, params=params), absent="bucket"
            )
            page = answer.json()
            for item in page.get("items", []):
                key = str(item["name"])[len(self.prefix) :]
                if key > start_after:
                    keys.append(key)
            if not page.get("nextPageToken"):
                break
            params = {**params, "pageToken": str(page["nextPageToken"])}
        return keys[:limit]

    async def put_small(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        name = self.object_name(key)
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["ifGenerationMatch"] = "0"
        if if_match is not None:
            if not if_match.isdigit():
                raise PreconditionFailed(f"{key}: {if_match!r} is no generation of this store")
            conditions["ifGenerationMatch"] = if_match
        resource = await self.on_fs_loop(
            self.api.upload_whole(name, InMemory(data), conditions), settle=True, absent="bucket"
        )
        return str(resource["generation"])

    async def get_small(self, key: str) -> tuple[bytes, str]:
        url = self.api.object_url(self.object_name(key))
        answer = await self.on_fs_loop(self.api.request("GET", url, params={"alt": "media"}))
        generation = answer.headers.get("X-Goog-Generation")
        if not generation:
            raise StorageUnavailable(f"storage {self.url}: {key} came without its generation")
        return answer.body, generation

    async def check(self) -> None:
        # Listing (one name at most) proves that the bucket exists and that
        # these credentials may list it, which the service needs anyway;
        # buckets.get would need a permission that object-only roles lack. One
        # attempt: a health check tells how things are now, and is asked again.
        params = {"prefix": self.prefix, "maxResults": "1", "fields": "items(name)"}
        listing = self.api.request("GET", self.api.objects_url, params=params, attempts=1)
        try:
            await self.on_fs_loop(listing, absent="bucket")
        except StorageUnavailable as e:
            cause = e.__cause__ or e
            reason = (
                f"bucket {self.bucket!r} does not exist"
                if isinstance(cause, HTTPError) and cause.status == 404
                else _describe(cause)
            )
            raise StorageUnavailable(f"storage {self.url} is not usable: {reason}") from e


class _GCSWriter(ObjectWriter):
    """One object: a multipart upload at commit, or a resumable session past one chunk.

    The bytes go to a file (`Spill`) a chunk at a time, and each chunk is sent
    from its file, a slice at a time: a writer holds no chunk in memory, so
    chunks can be large (fewer requests) and a stalled client pins nothing
    (`idle` has nothing to do). Disk holds two chunks at most, the one
    uploading and the one filling.

    Bookkeeping is explicit because every way out but a commit must clean
    up: the session once started, the chunk in flight, and whether a request
    that may have published the key was sent.
    """

    def __init__(self, storage: GCSStorage, name: str) -> None:
        self._gcs = storage
        self._api = storage.api
        self._name = name
        self._filling = Spill()
        self._size = 0
        self._sent = 0  # bytes handed to the session: the next chunk's offset
        self._session: str | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._may_have_published = False
        self._done = False

    async def write(self, block: bytes) -> None:
        self._refuse_when_done()
        view = memoryview(block)
        while view:
            if self._filling.size == self._gcs.chunk_size:
                # Full, and more bytes follow: a chunk, never the request that
                # finalises (so that is never an empty one after a full one).
                await self._send_chunk()
            room = self._gcs.chunk_size - self._filling.size
            await self._filling.add([view[:room]])
            self._size += min(room, len(view))
            view = view[room:]

    async def commit(self) -> ObjectInfo:
        self._refuse_when_done()
        last = self._filling
        if self._in_flight is None:
            self._may_have_published = True
            resource = await self._gcs.on_fs_loop(
                self._api.upload_whole(self._name, last), settle=True, absent="bucket"
            )
        else:
            await self._in_flight
            assert self._session is not None
            self._may_have_published = True
            finished = await self._gcs.on_fs_loop(
                self._api.send_to_session(self._session, last, self._sent, self._size),
                settle=True,
                absent="bucket",
            )
            assert finished is not None  # a request that names the total finalises
            resource = finished
        if int(resource["size"]) != self._size:
            raise StorageUnavailable(
                f"storage {self._gcs.url}: {self._name} holds {resource['size']} bytes, "
                f"not {self._size}"
            )
        self._done = True
        last.discard()
        return ObjectInfo(self._name[len(self._gcs.prefix) :], self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._filling.discard()
        if self._in_flight is not None:
            # A chunk publishes nothing, so it is interrupted, not waited for
            # (a session's start is settled: see `_upload_chunk`).
            self._in_flight.cancel()
            await asyncio.gather(self._in_flight, return_exceptions=True)
        try:
            await self._clean_up()
        except ServiceError as e:
            # Abort runs while another error is propagating: report, don't mask it.
            log.warning("could not clean up after %s: %s", self._name, e.detail)

    async def _clean_up(self) -> None:
        if self._session is not None:
            await self._gcs.on_fs_loop(self._api.cancel_session(self._session))
        if self._may_have_published or self._session is not None:
            # A commit that failed may still have published (its answer was
            # lost), and so may a session on a store that finalises early: the
            # key is this upload's own, so removing it is always safe.
            with contextlib.suppress(NotFound):
                url = self._api.object_url(self._name)
                await self._gcs.on_fs_loop(self._api.request("DELETE", url))

    def _refuse_when_done(self) -> None:
        if self._done:
            raise RuntimeError(f"the writer of {self._name} was already committed or aborted")

    async def _send_chunk(self) -> None:
        if self._in_flight is not None:
            await self._in_flight  # a session takes its chunks one at a time, in order
        chunk, self._filling = self._filling, Spill()
        offset, self._sent = self._sent, self._sent + chunk.size
        self._in_flight = asyncio.ensure_future(self._upload_chunk(chunk, offset))

    async def _upload_chunk(self, chunk: Spill, offset: int) -> None:
        try:
            if self._session is None:
                # Settled: a start cancelled in flight would open a session no one
                # could name, so the cancellation waits until its URI is known.
                await self._gcs.on_fs_loop(self._start_session(), settle=True, absent="bucket")
            assert self._session is not None
            await self._gcs.on_fs_loop(
                self._api.send_to_session(self._session, chunk, offset, None), absent="bucket"
            )
        finally:
            chunk.discard()  # a read still running on gcsfs's loop closes it (spill.py)

    async def _start_session(self) -> None:
        # Kept as soon as it exists, here on gcsfs's loop: a cancelled caller
        # never sees a return value, but abort still finds the session.
        self._session = await self._api.start_session(self._name)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
