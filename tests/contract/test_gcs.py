"""What the shared contract cannot see on Google Cloud Storage.

The shared suites run over GCS with small chunks (tests/backends/gcs.py); here:
the default chunk size end to end, the session's requests (abort cancels it,
a commit whose answer was lost is undone, the next chunk fills while one
uploads, a chunk is resumed where the session says it stopped), how retries
treat conditional writes, bounded time against a dead endpoint with the
default options, and what fake-gcs-server itself checks (a canary: if it
starts checking preconditions on other paths, the docstrings should say so).

Against fake-gcs-server (see tests/backends/gcs.py), except where a test
scripts the store's answers itself to show what the emulator cannot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict

import uploadsvc.storage.gcsapi as gcsapi
from tests.backends.gcs import GCSBackend, make
from uploadsvc.errors import NotFound, PreconditionFailed, StorageUnavailable
from uploadsvc.storage import BLOCK_SIZE, Storage, open_storage
from uploadsvc.storage.gcs import CHUNK_SIZE, GCSStorage
from uploadsvc.storage.gcsapi import JSONAPI, InMemory
from uploadsvc.storage.spill import Spill

DEAD = "http://127.0.0.1:9"


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GCSBackend]:
    for made in make(request, tmp_path):
        assert isinstance(made, GCSBackend)
        yield made


@pytest.fixture
def defaults(backend: GCSBackend) -> GCSBackend:
    """The same bucket with the default chunk size."""
    options = {k: v for k, v in backend.options.items() if k != "block_size"}
    return replace(backend, options=options)


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    status: int


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every request the backend sends, with the status it got back."""
    log: list[Sent] = []
    original = JSONAPI.exchange

    async def recording(self: JSONAPI, method: str, url: str, **kwargs: Any) -> gcsapi.Answer:
        headers = dict(kwargs.get("headers") or {})
        answer = await original(self, method, url, **kwargs)
        params = "&".join(f"{k}={v}" for k, v in (kwargs.get("params") or {}).items())
        log.append(Sent(method, f"{url}?{params}" if params else url, headers, answer.status))
        return answer

    monkeypatch.setattr(JSONAPI, "exchange", recording)
    return log


def blocks(total: int) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]


async def read_all(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([b async for b in storage.read(key, start, end)])


async def written_and_read(backend: GCSBackend, parts: list[bytes]) -> bytes:
    """`parts` written as "obj" (nothing visible before the commit) and read back."""
    storage = backend.storage()
    async with storage.create("obj") as writer:
        for part in parts:
            await writer.write(part)
        assert backend.contents() == []
        assert (await writer.commit()).size == sum(len(p) for p in parts)
    return await read_all(storage, "obj")


def sessions_started(log: list[Sent]) -> int:
    return sum(1 for s in log if s.method == "POST" and "uploadType=resumable" in s.url)


# With the default chunk size: exactly one chunk is one multipart upload; one
# byte more is a session of one chunk plus a final request carrying the rest.
@pytest.mark.parametrize(
    ("size", "sessions"), [(CHUNK_SIZE, 0), (CHUNK_SIZE + 1, 1), (2 * CHUNK_SIZE + 3, 1)]
)
def test_default_chunks_publish_exact_bytes(
    defaults: GCSBackend, sent: list[Sent], size: int, sessions: int
) -> None:
    parts = blocks(size)
    stored = asyncio.run(written_and_read(defaults, parts))
    assert hashlib.sha256(stored).digest() == hashlib.sha256(b"".join(parts)).digest()
    assert sessions_started(sent) == sessions
    assert defaults.contents() == ["obj"]


MIB = 1 << 20


@pytest.mark.parametrize(
    "sizes",
    [
        [3 * MIB + 17] * 5,  # blocks that straddle the chunks' edges
        [9 * MIB],  # one block over more than two chunks
        [4 * MIB, 0, 4 * MIB],  # exactly two chunks, an empty write between
        [8 * MIB, 1],  # two whole chunks in one block, then one byte
    ],
    ids=["straddling", "spanning", "exact-with-empty", "exact-then-one"],
)
def test_chunks_cut_blocks_at_their_edges_and_the_last_request_is_never_empty(
    backend: GCSBackend, sent: list[Sent], sizes: list[int]
) -> None:
    """Every chunk is `block_size` bytes at the offset the ones before it reached,
    and the request that finalises carries bytes (GCS refuses an empty one after
    a full chunk)."""
    chunk = backend.options["block_size"]
    parts = [os.urandom(n) for n in sizes]
    total = sum(sizes)
    assert asyncio.run(written_and_read(backend, parts)) == b"".join(parts)
    ranges = [s.headers["Content-Range"] for s in sent if s.method == "PUT"]
    full, last = divmod(total, chunk)
    if not last:
        full, last = full - 1, chunk
    expected = [f"bytes {i * chunk}-{(i + 1) * chunk - 1}/*" for i in range(full)]
    expected.append(f"bytes {full * chunk}-{total - 1}/{total}")
    assert ranges == expected


def test_abort_cancels_the_session(backend: GCSBackend, sent: list[Sent]) -> None:
    chunk = backend.options["block_size"]

    async def scenario() -> None:
        storage = backend.storage()
        with pytest.raises(RuntimeError):
            async with storage.create("obj") as writer:
                for block in blocks(2 * chunk + 5):
                    await writer.write(block)
                raise RuntimeError("client went away")

    asyncio.run(scenario())
    session = next(s.url for s in sent if s.method == "PUT")
    assert [s.status for s in sent if s.method == "DELETE" and s.url == session] == [499]
    assert backend.leftovers() == []


@pytest.mark.parametrize("size", [10, 3 * (4 << 20)])
def test_a_commit_whose_answer_was_lost_is_undone(
    backend: GCSBackend, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The store finalised, the answer never came: the key is this upload's own, so it goes."""
    finish_session = JSONAPI.send_to_session
    upload_whole = JSONAPI.upload_whole

    async def lost_finish(self: JSONAPI, *args: Any) -> Any:
        answer = await finish_session(self, *args)
        if args[-1] is not None:  # the request that finalises
            raise aiohttp.ServerDisconnectedError()
        return answer

    async def lost_whole(self: JSONAPI, *args: Any) -> Any:
        await upload_whole(self, *args)
        raise aiohttp.ServerDisconnectedError()

    monkeypatch.setattr(JSONAPI, "send_to_session", lost_finish)
    monkeypatch.setattr(JSONAPI, "upload_whole", lost_whole)

    async def scenario() -> None:
        storage = backend.storage()
        with pytest.raises(StorageUnavailable):
            async with storage.create("obj") as writer:
                for block in blocks(size):
                    await writer.write(block)
                await writer.commit()

    asyncio.run(scenario())
    assert backend.leftovers() == []


def test_the_next_chunk_fills_while_one_uploads(
    backend: GCSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receiving overlaps sending: a whole chunk is accepted while the previous one is
    still on its way, and only the chunk after that waits for it."""
    chunk = backend.options["block_size"]
    original = JSONAPI.send_to_session
    release = threading.Event()  # set on the test's loop, read on gcsfs's
    entered: list[int] = []

    async def held(self: JSONAPI, session: str, pieces: Any, offset: int, total: Any) -> Any:
        entered.append(offset)
        if total is None and offset == 0:
            while not release.is_set():
                await asyncio.sleep(0.01)
        return await original(self, session, pieces, offset, total)

    monkeypatch.setattr(JSONAPI, "send_to_session", held)
    data = blocks(3 * chunk + 7)
    per_chunk = chunk // BLOCK_SIZE

    async def scenario() -> bytes:
        storage = backend.storage()
        async with storage.create("obj") as writer:
            # The first chunk, and one block more: the first chunk leaves.
            for block in data[: per_chunk + 1]:
                await writer.write(block)
            # The next chunk fills up while the first is held...
            for block in data[per_chunk + 1 : 2 * per_chunk]:
                await asyncio.wait_for(writer.write(block), 10)
            # ...and the block past it waits for the first chunk to be sent.
            waiting = asyncio.ensure_future(writer.write(data[2 * per_chunk]))
            await asyncio.sleep(0.3)
            assert not waiting.done() and entered == [0]
            release.set()
            await asyncio.wait_for(waiting, 30)
            for block in data[2 * per_chunk + 1 :]:
                await writer.write(block)
            await writer.commit()
        return await read_all(storage, "obj")

    assert asyncio.run(scenario()) == b"".join(data)


def test_writer_memory_holds_no_chunk(defaults: GCSBackend) -> None:
    """Python allocations for a 4.5-chunk object with the default chunk size: a
    block and the slices on their way, not the object, nor any chunk (on disk)."""
    size = 4 * CHUNK_SIZE + CHUNK_SIZE // 2

    async def scenario() -> int:
        storage = defaults.storage()
        await storage.check()  # the session and its imports, before counting
        tracemalloc.start()
        try:
            async with storage.create("obj") as writer:
                for _ in range(size // BLOCK_SIZE):
                    await writer.write(os.urandom(BLOCK_SIZE))
                await writer.commit()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak = asyncio.run(scenario())
    assert peak < 8 << 20 < CHUNK_SIZE, f"peak {peak / 2**20:.1f} MiB"
    assert defaults.contents() == ["obj"]


def test_a_range_past_the_end_is_empty(backend: GCSBackend) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        storage = backend.storage()
        await storage.put_small("r.json", b"0123456789")
        return await read_all(storage, "r.json", 20), await read_all(storage, "r.json", 8, 50)

    assert asyncio.run(scenario()) == (b"", b"89")


# The session protocol against scripted answers: what fake-gcs-server cannot
# show (it keeps whatever it is sent, and finalises on a status query).


class Script:
    """Plays a store: answers each request in turn, and keeps what it was sent."""

    def __init__(self, *answers: int | tuple[int, dict[str, str]] | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str], int]] = []
        self.bodies: list[bytes] = []

    async def exchange(self, method: str, url: str, **kwargs: Any) -> gcsapi.Answer:
        body = kwargs.get("body")
        parts: list[bytes] = []
        if body is not None:
            async for part in body.stream():
                parts.append(bytes(part))
        self.bodies.append(b"".join(parts))
        self.requests.append((method, dict(kwargs.get("headers") or {}), len(self.bodies[-1])))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return gcsapi.Answer(status, CIMultiDict(headers), b'{"size": "0", "generation": "1"}')


def scripted(script: Script, monkeypatch: pytest.MonkeyPatch) -> GCSStorage:
    monkeypatch.setattr(gcsapi, "BACKOFF", 0.0)
    storage = GCSStorage.from_url("gs://bucket/p", {"endpoint_url": DEAD, "token": "anon"})
    monkeypatch.setattr(storage.api, "exchange", script.exchange)
    return storage


MIB = 1 << 20


async def in_a_file(data: bytes) -> Spill:
    """A chunk as the writer keeps it: in a file, read a slice at a time."""
    chunk = Spill()
    await chunk.add([data])
    return chunk


def test_a_chunk_the_store_kept_part_of_is_sent_again_from_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GCS may persist less than a request carried; its `Range` says how much."""
    script = Script(
        (308, {"Range": f"bytes=0-{MIB + MIB // 2 - 1}"}),  # half of the chunk kept
        (308, {"Range": f"bytes=0-{3 * MIB - 1}"}),
    )
    storage = scripted(script, monkeypatch)
    data = os.urandom(2 * MIB)

    async def scenario() -> None:
        chunk = await in_a_file(data)
        try:
            await storage.api.send_to_session("uri", chunk, MIB, None)
        finally:
            chunk.discard()

    asyncio.run(scenario())
    assert [(h["Content-Range"], n) for _, h, n in script.requests] == [
        (f"bytes {MIB}-{3 * MIB - 1}/*", 2 * MIB),
        (f"bytes {MIB + MIB // 2}-{3 * MIB - 1}/*", MIB + MIB // 2),
    ]
    assert script.bodies == [data, data[MIB // 2 :]]


def test_a_lost_chunk_is_resumed_where_the_session_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script(
        aiohttp.ServerDisconnectedError(),  # the chunk's request broke
        (308, {"Range": "bytes=0-99"}),  # the status query: 100 bytes arrived
        200,  # the rest, with the total: finalised
    )
    storage = scripted(script, monkeypatch)
    data = os.urandom(1000)
    asyncio.run(storage.api.send_to_session("uri", InMemory(data), 0, 1000))
    assert [(h["Content-Range"], n) for _, h, n in script.requests] == [
        ("bytes 0-999/1000", 1000),
        ("bytes */1000", 0),
        ("bytes 100-999/1000", 900),
    ]
    assert script.bodies[2] == data[100:]


@pytest.mark.parametrize(("conditions", "attempts"), [({}, 2), ({"ifGenerationMatch": "0"}, 1)])
def test_a_conditional_write_that_may_have_landed_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch, conditions: dict[str, str], attempts: int
) -> None:
    """Repeated, it would fail against itself and report a race it had won."""
    script = Script(aiohttp.ServerDisconnectedError(), 200)
    storage = scripted(script, monkeypatch)

    async def scenario() -> None:
        await storage.on_fs_loop(storage.api.upload_whole("p/k", InMemory(b"x"), conditions))

    if attempts == 1:
        with pytest.raises(StorageUnavailable):
            asyncio.run(scenario())
    else:
        asyncio.run(scenario())
    assert len(script.requests) == attempts


def test_a_refused_connection_is_retried_even_for_a_conditional_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing was sent, so nothing can have landed."""
    key = ConnectionKey("127.0.0.1", 9, False, True, None, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    script = Script(refused, 200)
    storage = scripted(script, monkeypatch)
    asyncio.run(
        storage.on_fs_loop(
            storage.api.upload_whole("p/k", InMemory(b"x"), {"ifGenerationMatch": "0"})
        )
    )
    assert len(script.requests) == 2


# Options and time bounds.


def test_from_url_contacts_nothing_and_never_takes_gcsfs_experimental_class() -> None:
    """gcsfs's default (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on) makes `gcsfs.GCSFileSystem`
    a subclass that probes buckets over gRPC; the plain class is used regardless."""
    import gcsfs.core

    started = time.monotonic()
    storage = open_storage("gs://bucket/x", {"endpoint_url": DEAD, "token": "anon"})
    assert time.monotonic() - started < 2
    assert isinstance(storage, GCSStorage)
    assert type(storage.fs) is gcsfs.core.GCSFileSystem


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("gs://", {}, "no bucket"),
        ("gs://b/x", {"retries": 0}, "retries"),
        ("gs://b/x", {"block_size": 1000}, "256 KiB"),
        ("gs://b/x", {"access": "everything"}, "access"),
    ],
)
def test_bad_options_are_refused_at_once(url: str, options: dict[str, Any], says: str) -> None:
    with pytest.raises(StorageUnavailable, match=says):
        open_storage(url, {"endpoint_url": DEAD, "token": "anon", **options})


def test_the_defaults_give_up_on_a_dead_endpoint_in_seconds() -> None:
    """One attempt for a health check; a few quick ones for the rest (gcsfs's own calls
    would take about 30 s each)."""
    storage = open_storage("gs://bucket/x", {"endpoint_url": DEAD, "token": "anon"})

    async def timed(coro: Any) -> float:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await coro
        return time.monotonic() - started

    async def scenario() -> tuple[float, float]:
        return await timed(storage.check()), await timed(storage.put_small("k", b"x"))

    check, put = asyncio.run(scenario())
    assert check < 1
    assert put < 10


def test_missing_objects_and_buckets_are_told_apart(backend: GCSBackend) -> None:
    missing = backend.missing_root()

    async def scenario() -> None:
        with pytest.raises(NotFound):
            await backend.storage().size("nope")
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await missing.storage().put_small("r.json", b"{}")
        with pytest.raises(StorageUnavailable, match="does not exist"):
            await missing.storage().list()

    asyncio.run(scenario())


def test_a_foreign_etag_is_a_lost_race(backend: GCSBackend) -> None:
    async def scenario() -> None:
        storage = backend.storage()
        await storage.put_small("r.json", b"1")
        with pytest.raises(PreconditionFailed):
            await storage.put_small("r.json", b"2", if_match='"d41d8cd98f00b204"')

    asyncio.run(scenario())


def test_fake_gcs_server_checks_generations_on_multipart_uploads_only(
    backend: GCSBackend,
) -> None:
    """Why `put_small` is a multipart upload: the one path where the emulator (like
    GCS) answers 412; it ignores ifGenerationMatch on media and resumable uploads."""
    base = f"{backend.server}/upload/storage/v1/b/{backend.bucket}/o"

    def status(url: str, data: bytes, content_type: str) -> int:
        request = urllib.request.Request(url, data=data, method="POST")
        request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    def multipart(name: str) -> int:
        body = (
            f'--B\r\nContent-Type: application/json\r\n\r\n{{"name": "{name}"}}\r\n'
            "--B\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--B--\r\n"
        ).encode()
        url = f"{base}?uploadType=multipart&ifGenerationMatch=0"
        return status(url, body, "multipart/related; boundary=B")

    def media(name: str) -> int:
        url = f"{base}?uploadType=media&name={name}&ifGenerationMatch=0"
        return status(url, b"x", "application/octet-stream")

    def resumable(name: str) -> int:
        url = f"{base}?uploadType=resumable&ifGenerationMatch=0"
        request = urllib.request.Request(
            url, data=json.dumps({"name": name}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            session = response.headers["Location"]
        finish = urllib.request.Request(session, data=b"x", method="PUT")
        finish.add_header("Content-Range", "bytes 0-0/1")
        try:
            with urllib.request.urlopen(finish, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    assert [multipart("m"), multipart("m")] == [200, 412]
    assert [media("d"), media("d")] == [200, 200]
    assert [resumable("r"), resumable("r")] == [200, 200]
