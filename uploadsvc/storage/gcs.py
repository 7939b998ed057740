"""Storage on Google Cloud Storage, speaking its JSON API through gcsfs's session.

Layout under `gs://bucket/prefix` (or `gcs://`): `<prefix>/<id>` (the bytes)
and `<prefix>/<id>.json` (the record). Nothing else is ever an object: the
bytes of an upload in progress live in a resumable upload session, which GCS
keeps outside the bucket's objects (no listing shows it; GCS forgets sessions
left alone for a week).

Writes use GCS's own primitives, never a rename or copy:

- an object of up to one chunk is one multipart upload at commit;
- a larger one is a resumable upload session, started once more than a
  chunk has arrived, fed chunks of `CHUNK_SIZE` bytes (a multiple of 256 KiB,
  as GCS requires) and finalised at commit by the request that carries the
  last chunk (never an empty request after a full one). Until then no
  reader sees anything, not even under another name. The next chunk fills
  while the previous one uploads (a session takes its chunks in order, one at
  a time), so receiving and sending overlap in about two chunks of memory;
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
`session_kwargs`, `requests_timeout`, ...), never `gcsfs.GCSFileSystem`: with
`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT` on (gcsfs's default, read once when gcsfs
is imported) that name is gcsfs's experimental subclass, which first asks the
bucket's type over gRPC with TLS (hanging 60 s against any plain-HTTP endpoint)
and writes zonal buckets as appendable objects, readable before they are
finalised. This module speaks only the JSON API, so it always takes the plain
class, whatever the environment says and with or without `endpoint_url`; zonal
(Rapid) buckets are not supported. Building the client contacts no bucket;
with `token` unset, gcsfs looks for credentials then (gcloud's files, and on
Google's endpoint the GCE metadata server): set `token` to skip that search.

gcsfs supplies the HTTP session, the credentials (refreshed in a worker thread:
google-auth refreshes with blocking `requests`), the endpoint and the
requester-pays parameter; the requests are this module's. gcsfs's own calls
retry every failure 6 times with backoff (about 30 s against a dead endpoint)
and cannot be told otherwise per call. Here a call makes at most `retries`
attempts (an option of its own, default `RETRIES`, with backoff from
`BACKOFF` s); `check` makes one. A request that may have reached the store is
retried only if repeating it is harmless: never a conditional write, whose
repeat would lose to itself. A chunk that failed is resumed where the session
says it stopped, as GCS's protocol asks.

Everything runs on gcsfs's own event loop thread (fsspec's IO loop), awaited
from the server's loop through `run_coroutine_threadsafe`, as in s3.py: the
server's loop never waits on the network or on a token refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
from gcsfs.core import GCSFileSystem
from multidict import CIMultiDict
from yarl import URL

from ..errors import NotFound, PreconditionFailed, ServiceError, StorageUnavailable
from ..offload import outlast_cancellation
from .interface import BLOCK_SIZE, Ability, ObjectInfo, ObjectWriter, Storage, checked_key

#: Bytes per request of a resumable session (the `block_size` option, as for
#: gcsfs's own files); GCS wants a multiple of 256 KiB. A writer holds about
#: two chunks: one uploading, the next filling. Fewer, larger chunks cost
#: fewer round trips (and far less time on fake-gcs-server, which re-hashes
#: the whole upload at every chunk); memory sets the ceiling: with 24 MiB a
#: server's peak RSS stayed near 155 MiB through a 256 MiB upload here, about
#: 100 MiB of it the imports (gcsfs alone brings ~48 MiB: grpc, google-cloud-storage).
CHUNK_SIZE = 24 << 20
_CHUNK_UNIT = 256 << 10

#: Bodies go to aiohttp in slices this large, so the socket's buffer copies a
#: slice at a time, never a whole chunk (Python 3.11's transports copy what
#: they cannot send at once).
SEND_SLICE = 256 << 10

#: Attempts per call (the `retries` storage option), and the first pause
#: between them, doubling each time, with jitter.
RETRIES = 4
BACKOFF = 0.5

#: Answers that mean "try again": the store did not or may not have acted.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Of those, the ones where it certainly did not act.
_UNSERVED_STATUSES = frozenset({408, 429})
#: A resumable session's "more, please".
_RESUME = 308

T = TypeVar("T")
Piece = bytes | memoryview
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
        self.url = url
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.retries = retries
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

    def object_url(self, name: str) -> str:
        return f"{self.objects_url}/{quote(name, safe='')}"

    @property
    def objects_url(self) -> str:
        return f"{self.fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o"

    @property
    def upload_url(self) -> str:
        return f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

    # Running on gcsfs's loop, with errors translated at this boundary.

    async def on_fs_loop(
        self, coro: Coroutine[Any, Any, T], *, settle: bool = False, absent: str = "object"
    ) -> T:
        """Await a coroutine on gcsfs's loop thread, translating its errors.

        Cancelling the caller cancels the call, so timeouts hold. A call that
        may publish or open something is `settle`d instead: a cancelled caller
        waits for it to end, so the clean-up that follows knows what to undo.
        A 404 is a missing object (`NotFound`) where `absent` is "object", and
        a missing bucket (`StorageUnavailable`) where it is "bucket".
        """
        future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.fs.loop))
        try:
            return await (outlast_cancellation(future) if settle else future)
        except ServiceError:
            raise
        except _HTTPError as e:
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

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], _Body] | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
        ok: Iterable[int] = (),
    ) -> _Answer:
        """One call (on gcsfs's loop), retried as the module docstring says.

        A status >= 300 raises, unless it is in `ok`. `body` makes the body
        afresh for each attempt (a stream is read once).
        """

        async def attempt() -> _Answer:
            body_now = body() if body else None
            answer = await self.exchange(method, url, params=params, headers=headers, body=body_now)
            answer.raise_for_status(also_ok=ok)
            return answer

        return await self.retrying(attempt, idempotent=idempotent, attempts=attempts)

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], *, idempotent: bool, attempts: int | None = None
    ) -> T:
        tries = attempts or self.retries
        for n in range(tries):
            try:
                return await attempt()
            except (aiohttp.ClientError, TimeoutError, _HTTPError) as e:
                if n + 1 >= tries or not _may_retry(e, idempotent):
                    raise
                log.debug("retrying after %s", _describe(e))
            await asyncio.sleep(_backoff(n))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def start(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: _Body | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request; the response comes back with its headers read."""
        session = await self.fs._set_session()
        if self.fs.credentials.credentials is not None:
            # google-auth refreshes a token with blocking `requests`: not on a loop.
            await asyncio.to_thread(self.fs.credentials.maybe_refresh)
        extra: dict[str, Any] = {}
        if self.fs.requests_timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(total=self.fs.requests_timeout)
        response: aiohttp.ClientResponse = await session.request(
            method,
            # Already encoded: object names are quoted here, session URIs by GCS.
            URL(url, encoded=True),
            params=self.fs._get_params(dict(params or {})),
            headers=self.fs._get_headers({**(headers or {}), **(body.headers if body else {})}),
            data=body.stream() if body else None,
            # A session's 308 means "send more", not "go elsewhere".
            allow_redirects=False,
            **extra,
        )
        return response

    async def exchange(self, method: str, url: str, **kwargs: Any) -> _Answer:
        """One request with its whole answer; no status check, no retry."""
        response = await self.start(method, url, **kwargs)
        async with response:
            return _Answer(response.status, CIMultiDict(response.headers), await response.read())

    # The interface.

    def create(self, key: str) -> ObjectWriter:
        return _GCSWriter(self, self.object_name(key))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        url = self.object_url(self.object_name(key))
        # No Range header for a whole read: GCS answers 416 to "bytes=0-" on an empty object.
        wanted: dict[str, str] = {}
        if start or end is not None:
            wanted["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = await self.on_fs_loop(self._open_media(url, wanted))
        if response is None:
            return  # the range starts past the end: there are no such bytes
        try:
            while block := await self.on_fs_loop(_read_block(response)):
                yield block
        finally:
            self.fs.loop.call_soon_threadsafe(response.close)

    async def _open_media(
        self, url: str, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse | None:
        async def attempt() -> aiohttp.ClientResponse | None:
            response = await self.start("GET", url, params={"alt": "media"}, headers=headers)
            if response.status == 416:
                response.close()
                return None
            if response.status >= 400:
                async with response:
                    raise _HTTPError(response.status, _error_message(await response.read()))
            return response

        return await self.retrying(attempt, idempotent=True)

    async def size(self, key: str) -> int:
        url = self.object_url(self.object_name(key))
        answer = await self.on_fs_loop(self.request("GET", url, params={"fields": "size"}))
        return int(answer.json()["size"])

    async def delete(self, key: str) -> None:
        url = self.object_url(self.object_name(key))
        with contextlib.suppress(NotFound):  # absent is fine
            await self.on_fs_loop(self.request("DELETE", url))

    async def list(self, suffix: str = "") -> list[str]:
        keys: list[str] = []
        params = {"prefix": self.prefix, "delimiter": "/", "fields": "items(name),nextPageToken"}
        while True:
            answer = await self.on_fs_loop(
                self.request("GET", self.objects_url, params=params), absent="bucket"
            )
            page = answer.json()
            for item in page.get("items", []):
                key = str(item["name"])[len(self.prefix) :]
                if key.endswith(suffix):
                    keys.append(key)
            if not page.get("nextPageToken"):
                return keys
            params = {**params, "pageToken": str(page["nextPageToken"])}

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
            self.upload_whole(name, [data], conditions), settle=True, absent="bucket"
        )
        return str(resource["generation"])

    async def get_small(self, key: str) -> tuple[bytes, str]:
        url = self.object_url(self.object_name(key))
        answer = await self.on_fs_loop(self.request("GET", url, params={"alt": "media"}))
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
        try:
            await self.on_fs_loop(
                self.request("GET", self.objects_url, params=params, attempts=1), absent="bucket"
            )
        except StorageUnavailable as e:
            cause = e.__cause__ or e
            reason = (
                f"bucket {self.bucket!r} does not exist"
                if isinstance(cause, _HTTPError) and cause.status == 404
                else _describe(cause)
            )
            raise StorageUnavailable(f"storage {self.url} is not usable: {reason}") from e

    # GCS's upload primitives (each runs on gcsfs's loop).

    async def upload_whole(
        self, name: str, pieces: Sequence[Piece], conditions: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """One multipart upload: the object appears whole, or not at all."""
        answer = await self.request(
            "POST",
            self.upload_url,
            params={"uploadType": "multipart", **(conditions or {})},
            body=lambda: _multipart_body(name, pieces),
            # A conditional write that may have landed is not repeated: the
            # repeat would fail against it and report a race it had won.
            idempotent=not conditions,
        )
        return answer.json()

    async def start_session(self, name: str) -> str:
        """A resumable upload session for `name`; its URI takes the bytes."""
        metadata = {"name": name, "contentType": "application/octet-stream"}
        answer = await self.request(
            "POST",
            self.upload_url,
            params={"uploadType": "resumable", "name": name},
            body=lambda: _Body.of_json(metadata),
        )
        location = answer.headers.get("Location")
        if not location:
            raise StorageUnavailable(f"storage {self.url}: no session URI came for {name}")
        return location

    async def send_to_session(
        self, session: str, pieces: Sequence[Piece], offset: int, total: int | None
    ) -> dict[str, Any] | None:
        """Send `pieces` as bytes `offset...` of a session; with `total`, finalise it.

        GCS may keep less than it was sent, or lose a request: it then says
        how far it got (`Range`), and the rest is sent again from there.
        Returns the object's resource once finalised, None before.
        """
        end = offset + sum(len(p) for p in pieces)
        persisted = offset
        failures = 0
        while True:
            headers = {"Content-Range": _content_range(persisted, end, total)}
            body = _Body(_slices(pieces, persisted - offset), end - persisted)
            try:
                answer = await self.exchange("PUT", session, headers=headers, body=body)
                answer.raise_for_status(also_ok=(_RESUME,))
            except (aiohttp.ClientError, TimeoutError, _HTTPError) as e:
                failures += 1
                if failures >= self.retries or not _may_retry(e, idempotent=True):
                    raise
                await asyncio.sleep(_backoff(failures - 1))
                status = {"Content-Range": f"bytes */{'*' if total is None else total}"}
                answer = await self.request("PUT", session, headers=status, ok=(_RESUME,))
            if answer.status != _RESUME:
                if total is None:
                    # Only a request that names the total may finalise; this
                    # one published what came so far (fake-gcs-server does so
                    # on a status query). The writer's abort removes the key.
                    raise StorageUnavailable(f"storage {self.url}: a session finalised early")
                return answer.json()
            now = _persisted(answer.headers)
            if not persisted <= now <= end:
                raise StorageUnavailable(
                    f"storage {self.url}: a session holds {now} bytes where {end} were sent"
                )
            if now == end and total is None:
                return None
            if now == persisted:
                failures += 1  # no progress counts as a failure, so this loop ends
                if failures >= self.retries:
                    raise StorageUnavailable(f"storage {self.url}: a session takes no more bytes")
            persisted = now

    async def cancel_session(self, session: str) -> None:
        """Cancel a session: GCS answers 499. One already gone (404, 410) is fine."""
        try:
            await self.request("DELETE", session)
        except _HTTPError as e:
            if e.status not in (404, 410, 499):
                raise


class _GCSWriter(ObjectWriter):
    """One object: a multipart upload at commit, or a resumable session past one chunk.

    Bookkeeping is explicit because every way out but a commit must clean
    up: the session once started, the chunk in flight, and whether a request
    that may have published the key was sent.
    """

    def __init__(self, storage: GCSStorage, name: str) -> None:
        self._gcs = storage
        self._name = name
        self._pieces: deque[Piece] = deque()
        self._buffered = 0
        self._size = 0
        self._sent = 0  # bytes handed to the session: the next chunk's offset
        self._session: str | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._may_have_published = False
        self._done = False

    async def write(self, block: bytes) -> None:
        self._refuse_when_done()
        if not block:
            return
        self._pieces.append(block)
        self._buffered += len(block)
        self._size += len(block)
        # Strictly more than a chunk: the last one then goes with the request
        # that finalises, never alone before an empty one.
        while self._buffered > self._gcs.chunk_size:
            await self._send_chunk()

    async def commit(self) -> ObjectInfo:
        self._refuse_when_done()
        rest = self._take(self._buffered)
        if self._in_flight is None:
            self._may_have_published = True
            resource = await self._gcs.on_fs_loop(
                self._gcs.upload_whole(self._name, rest), settle=True, absent="bucket"
            )
        else:
            await self._in_flight
            assert self._session is not None
            self._may_have_published = True
            finished = await self._gcs.on_fs_loop(
                self._gcs.send_to_session(self._session, rest, self._sent, self._size),
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
        return ObjectInfo(self._name[len(self._gcs.prefix) :], self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pieces.clear()
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
            await self._gcs.on_fs_loop(self._gcs.cancel_session(self._session))
        if self._may_have_published or self._session is not None:
            # A commit that failed may still have published (its answer was
            # lost), and so may a session on a store that finalises early: the
            # key is this upload's own, so removing it is always safe.
            with contextlib.suppress(NotFound):
                url = self._gcs.object_url(self._name)
                await self._gcs.on_fs_loop(self._gcs.request("DELETE", url))

    def _refuse_when_done(self) -> None:
        if self._done:
            raise RuntimeError(f"the writer of {self._name} was already committed or aborted")

    def _take(self, size: int) -> list[Piece]:
        """The first `size` buffered bytes, as views of the caller's blocks (no copy)."""
        taken: list[Piece] = []
        wanted = size
        while wanted:
            piece = self._pieces[0]
            if len(piece) <= wanted:
                taken.append(self._pieces.popleft())
                wanted -= len(piece)
            else:
                view = memoryview(piece)
                taken.append(view[:wanted])
                self._pieces[0] = view[wanted:]
                wanted = 0
        self._buffered -= size
        return taken

    async def _send_chunk(self) -> None:
        chunk = self._take(self._gcs.chunk_size)
        if self._in_flight is not None:
            await self._in_flight  # a session takes its chunks one at a time, in order
        offset, self._sent = self._sent, self._sent + self._gcs.chunk_size
        self._in_flight = asyncio.ensure_future(self._upload_chunk(chunk, offset))

    async def _upload_chunk(self, chunk: list[Piece], offset: int) -> None:
        if self._session is None:
            # Settled: a start cancelled in flight would open a session no one
            # could name, so the cancellation waits until its URI is known.
            await self._gcs.on_fs_loop(self._start_session(), settle=True, absent="bucket")
        assert self._session is not None
        await self._gcs.on_fs_loop(
            self._gcs.send_to_session(self._session, chunk, offset, None), absent="bucket"
        )

    async def _start_session(self) -> None:
        # Kept as soon as it exists, here on gcsfs's loop: a cancelled caller
        # never sees a return value, but abort still finds the session.
        self._session = await self._gcs.start_session(self._name)


@dataclass
class _Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body) if self.body else {}
        if not isinstance(data, dict):
            raise _HTTPError(self.status, "the answer is not a JSON object")
        return data

    def raise_for_status(self, also_ok: Iterable[int] = ()) -> None:
        if self.status >= 300 and self.status not in also_ok:
            raise _HTTPError(self.status, _error_message(self.body))


class _Body:
    """A request body sent in slices, its length known up front (no chunked encoding)."""

    def __init__(
        self, parts: Iterable[Piece], length: int, headers: Mapping[str, str] | None = None
    ) -> None:
        self._parts = parts
        self.headers = {"Content-Length": str(length), **(headers or {})}

    @classmethod
    def of_json(cls, value: Mapping[str, Any]) -> _Body:
        data = json.dumps(value).encode()
        return cls([data], len(data), {"Content-Type": "application/json; charset=UTF-8"})

    async def stream(self) -> AsyncIterator[Piece]:
        for part in self._parts:
            yield part


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status


def _multipart_body(name: str, pieces: Sequence[Piece]) -> _Body:
    # A random boundary: the data is arbitrary bytes and must not contain it.
    boundary = f"uploadsvc-{secrets.token_hex(16)}"
    metadata = json.dumps({"name": name, "contentType": "application/octet-stream"})
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = len(head) + sum(len(p) for p in pieces) + len(tail)
    parts = [head, *_slices(pieces, 0), tail]
    return _Body(parts, size, {"Content-Type": f'multipart/related; boundary="{boundary}"'})


def _slices(pieces: Sequence[Piece], skip: int) -> Iterable[Piece]:
    """`pieces` from byte `skip` on, as views of at most SEND_SLICE bytes (no copies)."""
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        view = memoryview(piece)[skip:]
        skip = 0
        for i in range(0, len(view), SEND_SLICE):
            yield view[i : i + SEND_SLICE]


def _content_range(start: int, end: int, total: int | None) -> str:
    of = "*" if total is None else str(total)
    return f"bytes {start}-{end - 1}/{of}" if end > start else f"bytes */{of}"


def _persisted(headers: CIMultiDict[str]) -> int:
    """How many bytes a session holds, from its 308 answer's `Range: bytes=0-N`."""
    value = headers.get("Range")
    return int(value.rpartition("-")[2]) + 1 if value else 0


async def _read_block(response: aiohttp.ClientResponse) -> bytes:
    """Up to BLOCK_SIZE bytes of a response body (fewer only at its end)."""
    parts: list[bytes] = []
    have = 0
    while have < BLOCK_SIZE:
        part = await response.content.read(BLOCK_SIZE - have)
        if not part:
            break
        parts.append(part)
        have += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _may_retry(error: BaseException, idempotent: bool) -> bool:
    if isinstance(error, aiohttp.ClientConnectorError):
        return True  # never connected: nothing was sent
    if isinstance(error, _HTTPError):
        if error.status in _UNSERVED_STATUSES:
            return True
        return idempotent and error.status in _RETRY_STATUSES
    return idempotent  # the connection broke or timed out: the store may have acted


def _backoff(attempt: int) -> float:
    return BACKOFF * 2.0**attempt * (0.5 + random.random())


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return text[:200]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
