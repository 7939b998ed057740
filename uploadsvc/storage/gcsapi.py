"""GCS's JSON API for one bucket, over a gcsfs instance's HTTP session and credentials.

The requests gcs.py needs, and only those: object metadata, media reads,
deletes, listings, multipart uploads and the three calls of a resumable
upload session (start, send bytes, cancel). gcsfs supplies the aiohttp
session, the credentials, the endpoint and the requester-pays parameter
(through its internals `_set_session`, `_get_headers`, `_get_params` and
`_location`, as of gcsfs 2026.10); its own calls are not used, because each
retries every failure 6 times with backoff (about 30 s against a dead
endpoint) and cannot be told otherwise.

Here a call makes at most `retries` attempts, pausing `BACKOFF` s and
doubling, with jitter. A request that may have reached the store is repeated
only if repeating it is harmless: never a conditional write, whose repeat
would fail against itself and report a race it had won. A session's bytes
that failed are resumed where the session says it stopped, as GCS asks.

Every coroutine here runs on gcsfs's event loop thread (gcs.py sends them
there); errors are raw (`HTTPError`, aiohttp's, `ProtocolError`), for gcs.py
to translate at the storage boundary.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .interface import BLOCK_SIZE
from .spill import Piece

#: Bodies go to aiohttp in slices this large, so the socket's buffer copies a
#: slice at a time, never a whole chunk (Python 3.11's transports copy what
#: they cannot send at once).
SEND_SLICE = 256 << 10

#: The first pause between attempts, doubling each time, with jitter.
BACKOFF = 0.5

#: Answers that mean "try again": the store did not or may not have acted.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Of those, the ones where it certainly did not act.
_UNSERVED_STATUSES = frozenset({408, 429})
#: A resumable session's "more, please".
RESUME = 308

T = TypeVar("T")


class Source(Protocol):
    """Bytes to send, read from any offset, as often as a retry needs them: a
    small object in memory (`InMemory`), or a chunk in a file (spill.Spill)."""

    @property
    def size(self) -> int: ...

    async def read(self, offset: int, size: int) -> Piece:
        """`size` bytes from `offset`, fewer only at the end."""
        ...


class InMemory:
    """A `Source` over bytes already in memory: views, never copies."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.size = len(data)

    async def read(self, offset: int, size: int) -> Piece:
        return self._data[offset : offset + size]


class HTTPError(Exception):
    """The store answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status


class ProtocolError(Exception):
    """The store answered, but not as its protocol says it would."""


class JSONAPI:
    """Requests for one bucket; see the module docstring for retries."""

    def __init__(self, fs: Any, bucket: str, retries: int) -> None:
        self.fs = fs
        self.bucket = bucket
        self.retries = retries

    @property
    def objects_url(self) -> str:
        return f"{self.fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o"

    @property
    def upload_url(self) -> str:
        return f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

    def object_url(self, name: str) -> str:
        return f"{self.objects_url}/{quote(name, safe='')}"

    # Sending, retrying.

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], Body] | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
        ok: Iterable[int] = (),
    ) -> Answer:
        """One call, retried as the module docstring says; a status >= 300 not in `ok`
        raises. `body` makes the body afresh for each attempt (a stream is read once)."""

        async def attempt() -> Answer:
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
            except (aiohttp.ClientError, TimeoutError, HTTPError) as e:
                if n + 1 >= tries or not may_retry(e, idempotent):
                    raise
            await asyncio.sleep(backoff(n))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def start(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
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

    async def exchange(self, method: str, url: str, **kwargs: Any) -> Answer:
        """One request with its whole answer; no status check, no retry."""
        response = await self.start(method, url, **kwargs)
        async with response:
            return Answer(response.status, CIMultiDict(response.headers), await response.read())

    # Reading.

    async def open_media(
        self, name: str, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse | None:
        """A response streaming the object's bytes; None for a range past its end (416)."""

        async def attempt() -> aiohttp.ClientResponse | None:
            url = self.object_url(name)
            response = await self.start("GET", url, params={"alt": "media"}, headers=headers)
            if response.status == 416:
                response.close()
                return None
            if response.status >= 300:
                async with response:
                    raise HTTPError(response.status, error_message(await response.read()))
            return response

        return await self.retrying(attempt, idempotent=True)

    # Uploading.

    async def upload_whole(
        self, name: str, source: Source, conditions: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """One multipart upload: the object appears whole, or not at all."""
        answer = await self.request(
            "POST",
            self.upload_url,
            params={"uploadType": "multipart", **(conditions or {})},
            body=lambda: multipart_body(name, source),
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
            body=lambda: Body.of_json(metadata),
        )
        location = answer.headers.get("Location")
        if not location:
            raise ProtocolError(f"no session URI came for {name}")
        return location

    async def send_to_session(
        self, session: str, source: Source, offset: int, total: int | None
    ) -> dict[str, Any] | None:
        """Send `source` as bytes `offset...` of a session; with `total`, finalise it.

        GCS may keep less than it was sent, or lose a request: it then says
        how far it got (`Range`), and the rest is sent again from there.
        Returns the object's resource once finalised, None before.
        """
        end = offset + source.size
        persisted = offset
        failures = 0
        while True:
            headers = {"Content-Range": content_range(persisted, end, total)}
            body = Body(slices(source, persisted - offset), end - persisted)
            try:
                answer = await self.exchange("PUT", session, headers=headers, body=body)
                answer.raise_for_status(also_ok=(RESUME,))
            except (aiohttp.ClientError, TimeoutError, HTTPError) as e:
                failures += 1
                if failures >= self.retries or not may_retry(e, idempotent=True):
                    raise
                await asyncio.sleep(backoff(failures - 1))
                query = {"Content-Range": f"bytes */{'*' if total is None else total}"}
                answer = await self.request("PUT", session, headers=query, ok=(RESUME,))
            if answer.status != RESUME:
                if total is None:
                    # Only a request that names the total may finalise; this
                    # one published what came so far (fake-gcs-server does so
                    # on a status query). The writer's abort removes the key.
                    raise ProtocolError("a session was finalised before its last request")
                return answer.json()
            now = persisted_bytes(answer.headers)
            if not persisted <= now <= end:
                raise ProtocolError(f"a session holds {now} bytes where {end} were sent")
            if now == end and total is None:
                return None
            if now == persisted:
                failures += 1  # no progress counts as a failure, so this loop ends
                if failures >= self.retries:
                    raise ProtocolError(f"a session takes no more bytes after {now}")
            persisted = now

    async def cancel_session(self, session: str) -> None:
        """Cancel a session: GCS answers 499. One already gone (404, 410) is fine."""
        try:
            await self.request("DELETE", session)
        except HTTPError as e:
            if e.status not in (404, 410, 499):
                raise


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body) if self.body else {}
        if not isinstance(data, dict):
            raise ProtocolError(f"an answer ({self.status}) is not a JSON object")
        return data

    def raise_for_status(self, also_ok: Iterable[int] = ()) -> None:
        if self.status >= 300 and self.status not in also_ok:
            raise HTTPError(self.status, error_message(self.body))


class Body:
    """A request body sent in slices, its length known up front (no chunked encoding)."""

    def __init__(
        self, parts: AsyncIterator[Piece], length: int, headers: Mapping[str, str] | None = None
    ) -> None:
        self._parts = parts
        self.headers = {"Content-Length": str(length), **(headers or {})}

    @classmethod
    def of_json(cls, value: Mapping[str, Any]) -> Body:
        data = json.dumps(value).encode()
        parts = slices(InMemory(data), 0)
        return cls(parts, len(data), {"Content-Type": "application/json; charset=UTF-8"})

    def stream(self) -> AsyncIterator[Piece]:
        return self._parts


def multipart_body(name: str, source: Source) -> Body:
    # A random boundary: the data is arbitrary bytes and must not contain it.
    boundary = f"uploadsvc-{secrets.token_hex(16)}"
    metadata = json.dumps({"name": name, "contentType": "application/octet-stream"})
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def parts() -> AsyncIterator[Piece]:
        yield head
        async for piece in slices(source, 0):
            yield piece
        yield tail

    size = len(head) + source.size + len(tail)
    return Body(parts(), size, {"Content-Type": f'multipart/related; boundary="{boundary}"'})


async def slices(source: Source, skip: int) -> AsyncIterator[Piece]:
    """`source` from byte `skip` on, read a block at a time (a file's chunk is never
    in memory whole; one thread hop per block, not per slice) and sent as views of
    SEND_SLICE bytes (bytes in memory are views, never copies)."""
    for offset in range(skip, source.size, BLOCK_SIZE):
        block = memoryview(await source.read(offset, min(BLOCK_SIZE, source.size - offset)))
        for at in range(0, len(block), SEND_SLICE):
            yield block[at : at + SEND_SLICE]


def content_range(start: int, end: int, total: int | None) -> str:
    of = "*" if total is None else str(total)
    return f"bytes {start}-{end - 1}/{of}" if end > start else f"bytes */{of}"


def persisted_bytes(headers: CIMultiDict[str]) -> int:
    """How many bytes a session holds, from its 308 answer's `Range: bytes=0-N`."""
    value = headers.get("Range")
    return int(value.rpartition("-")[2]) + 1 if value else 0


async def read_block(response: aiohttp.ClientResponse) -> bytes:
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


def may_retry(error: BaseException, idempotent: bool) -> bool:
    if isinstance(error, aiohttp.ClientConnectorError):
        return True  # never connected: nothing was sent
    if isinstance(error, HTTPError):
        if error.status in _UNSERVED_STATUSES:
            return True
        return idempotent and error.status in _RETRY_STATUSES
    return idempotent  # the connection broke or timed out: the store may have acted


def backoff(attempt: int) -> float:
    return BACKOFF * 2.0**attempt * (0.5 + random.random())


def error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return text[:200]
