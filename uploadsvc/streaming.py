"""multipart/form-data body -> the bytes of field `file`, streamed into a writer.

The body is parsed as it arrives with python-multipart's streaming parser;
nothing is spooled. The parser's callbacks are synchronous, so they only
collect slices; after each feed the async loop cuts them into `BLOCK_SIZE`
blocks and hands each block to the sha256 `Lane` and to the writer, both of
which run beside the next receive.

Checked here, so no caller can forget: the size limit (at once from
`Content-Length`, else the moment the count passes it), the closing boundary
(python-multipart's `finalize()` accepts a body cut short, so the `on_end`
event is tracked), exactly one `file` field with a usable name. This module
knows no HTTP and no storage backend: it raises domain errors and writes to an
`ObjectWriter`.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .allocator import give_back_memory
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .filenames import safe_filename, safe_media_type
from .metrics import RECEIVED_BYTES
from .offload import Lane
from .storage import BLOCK_SIZE, ObjectWriter
from .watchdog import BodyWatch, watched

FILE_FIELD = "file"
#: Room for multipart framing and small fields on top of the file-size limit
#: when judging `Content-Length`; the file itself is held to the exact limit.
FRAMING_ALLOWANCE = 64 << 10
#: Below this a block is hashed inline: a thread hop would cost more.
_INLINE_HASH_BELOW = 256 << 10
#: Parts (form fields) a body may hold, the file's included, as Starlette's
#: `max_parts`. python-multipart spends ~8 us of the loop's CPU on each part
#: however small (170,000 empty parts in 9.5 MB: 1.4-1.7 s), so their number,
#: not the bytes, has to be bounded. Each part's header block is bounded by the
#: parser itself: 8 lines of at most ~4 KiB each (a `FormParserError`: 400).
MAX_PARTS = 1000


@dataclass(frozen=True)
class Received:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    is_file: bool = False


class _Collector:
    """Parser callbacks: note the structure, collect the file's slices."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.filename: str | None = None
        self.content_type = "application/octet-stream"
        self.size = 0
        self.pending: list[memoryview] = []
        self.pending_bytes = 0
        self.ended = False
        self.parts = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} parts in the multipart body")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        # Latin-1 keeps the raw bytes: parse_options_header re-encodes its
        # results as Latin-1, and browsers send file names as UTF-8 bytes.
        name = self.header_field.decode("latin-1").strip().lower()
        self.part.headers[name] = self.header_value.decode("latin-1")
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.part.headers.get("content-disposition"))
        if disposition != b"form-data" or params.get(b"name") != FILE_FIELD.encode():
            return
        if self.filename is not None:
            raise BadRequest(f"more than one {FILE_FIELD!r} field; send one file per upload")
        name = extended_filename(self.part.headers["content-disposition"])
        if name is None:
            raw_name = params.get(b"filename")
            if raw_name is None:
                raise BadRequest(f"field {FILE_FIELD!r} is not a file (no filename)")
            name = raw_name.decode("utf-8", "replace")
        self.filename = safe_filename(name)
        self.content_type = safe_media_type(self.part.headers.get("content-type"))
        self.part.is_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.part.is_file:
            return
        self.size += end - start
        if self.size > self.limit:
            raise PayloadTooLarge(f"file is larger than the limit of {self.limit} bytes")
        # A view, not a copy: the blocks are joined from these views.
        self.pending.append(memoryview(data)[start:end])
        self.pending_bytes += end - start

    def on_part_end(self) -> None:
        self.part.is_file = False

    def on_end(self) -> None:
        self.ended = True

    def take(self) -> bytes:
        block = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return block


def extended_filename(disposition: str) -> str | None:
    """The `filename*` parameter (RFC 8187: `UTF-8''r%C3%A9sum%C3%A9.txt`), decoded;
    it wins over `filename` (RFC 6266), which python-multipart alone reads."""
    found = _EXTENDED_FILENAME.search(disposition)
    if found is None:
        return None
    charset, _, encoded = found.group(1).strip().strip('"').partition("'")
    _, _, encoded = encoded.partition("'")  # the language tag, unused
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        raise BadRequest(f"unknown charset {charset!r} in filename*") from None
    return unquote(encoded, encoding=codec, errors="replace")


_EXTENDED_FILENAME = re.compile(r"(?:^|;)\s*filename\*\s*=\s*([^;]*)", re.IGNORECASE)


class _Preamble:
    """Skips what comes before the first boundary (RFC 2046 allows a preamble,
    python-multipart does not): bounded, so it cannot be a way to stream forever."""

    LIMIT = 64 << 10

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.seen = bytearray()
        self.done = False

    def skip(self, chunk: bytes) -> bytes:
        """The part of `chunk` (with what came before) the parser should see."""
        self.seen += chunk
        if self.seen.startswith(self.delimiter):
            start = 0
        else:
            start = self.seen.find(b"\r\n" + self.delimiter)
            # The limit holds however the body was cut into chunks: a delimiter
            # found beyond it (a long preamble that arrived in one chunk) is late too.
            if start > self.LIMIT or (start < 0 and len(self.seen) > self.LIMIT):
                raise BadRequest("malformed multipart body: no boundary in the first 64 KiB")
            if start < 0:
                return b""
            start += 2
        self.done = True
        rest = bytes(self.seen[start:])
        self.seen.clear()
        return rest


def multipart_parser(
    content_type: str | None, collector: _Collector
) -> tuple[MultipartParser, _Preamble]:
    """A parser for a multipart/form-data body, and what skips its preamble; 415 or
    400 otherwise."""
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType("send the file as multipart/form-data in field 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    except FormParserError as e:  # an overlong boundary, say
        raise BadRequest(f"malformed multipart body: {e}") from None
    return parser, _Preamble(boundary)


def check_body_length(length: int | None, limit: int) -> None:
    """Refuse a body longer than the file limit plus framing.

    Called once with `Content-Length` before anything is read, and again with
    the running count, so fields other than the file (and anything after the
    closing boundary, which the parser ignores) cannot stream without end.
    """
    if length is not None and length > limit + FRAMING_ALLOWANCE:
        raise PayloadTooLarge(
            f"body of {length} bytes or more is larger than the limit of {limit} bytes"
        )


async def receive_file(
    body: AsyncIterator[bytes],
    content_type: str | None,
    limit: int,
    writer: ObjectWriter,
    *,
    idle_timeout: float = 60.0,
) -> Received:
    """Stream the `file` field of `body` into `writer` (not committed), hashing it.

    A body that sends nothing for `idle_timeout` seconds ends in `RequestTimeout`;
    one that stalls for a second hands what it holds to the writer first (see
    `watchdog.py`), so a stalled upload keeps no block waiting in memory.
    """
    collector = _Collector(limit)
    parser, preamble = multipart_parser(content_type, collector)
    digest = hashlib.sha256()
    hashing = Lane()
    handover = _Handover(collector, digest.update, hashing, writer)
    watch: BodyWatch | None = None
    try:
        async with watched(idle_timeout, handover.start) as watch:
            async for chunk in body:
                watch.reading = False
                watch.received += len(chunk)
                check_body_length(watch.received, limit)
                if not preamble.done:
                    chunk = preamble.skip(chunk)
                try:
                    parser.write(chunk)
                except FormParserError as e:
                    raise BadRequest(f"malformed multipart body: {e}") from None
                if collector.pending_bytes >= BLOCK_SIZE:
                    await handover.wait()
                    block = collector.take()
                    await hashing.submit(digest.update, block)
                    await writer.write(block)
                    # Kept by the hand-over, not this frame: replaced by the next block
                    # (freed after the next one is made, which keeps glibc reusing
                    # the same pages: freed at once, each block took fresh ones and
                    # the join ran 3x slower), dropped when the body stalls.
                    handover.last = block
                    del block
                watch.reading = True
        await handover.wait()
        parser.finalize()
        if not collector.ended:
            raise BadRequest("truncated multipart body: the closing boundary never arrived")
        if collector.filename is None:
            raise BadRequest(f"no file in field {FILE_FIELD!r}")
        if collector.pending_bytes:
            block = collector.take()
            if len(block) >= _INLINE_HASH_BELOW:
                await hashing.submit(digest.update, block)
            else:
                await hashing.drain()
                digest.update(block)
            await writer.write(block)
        await hashing.drain()
    except BaseException:
        await handover.cancel()
        await hashing.cancel()
        raise
    finally:
        RECEIVED_BYTES.inc(watch.received if watch is not None else 0)
    return Received(collector.filename, collector.content_type, collector.size, digest.hexdigest())


class _Handover:
    """When the body stalls: the partial block goes to the hash and the writer, and
    the writer is told to let go of its own buffers (`ObjectWriter.idle`), in a
    task beside the receive loop, which waits for it before its next block."""

    def __init__(
        self,
        collector: _Collector,
        hash_update: Callable[[bytes], object],
        hashing: Lane,
        writer: ObjectWriter,
    ) -> None:
        self._collector = collector
        self._hash_update = hash_update
        self._hashing = hashing
        self._writer = writer
        self._task: asyncio.Task[None] | None = None
        #: The receive loop's last full block, until the next replaces it.
        self.last: bytes | None = None

    def start(self) -> None:
        self.last = None  # a stalled upload pins no block it already handed on
        task = self._task
        if task is not None and (not task.done() or task.cancelled() or task.exception()):
            return  # still running, or failed: `wait` re-raises its error
        # Taken now, on the loop: any later block follows it.
        block = self._collector.take() if self._collector.pending_bytes else b""
        self._task = asyncio.ensure_future(self._hand_over(block))

    async def _hand_over(self, block: bytes) -> None:
        if block:
            await self._hashing.submit(self._hash_update, block)
            await self._writer.write(block)
        await self._writer.idle()
        await self._hashing.drain()  # the block is freed once hashed and written
        del block
        give_back_memory()

    async def wait(self) -> None:
        """Let a hand-over in flight end (re-raising its error) before the next block."""
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def cancel(self) -> None:
        """Stop a hand-over in flight and wait for it: the writer aborts next."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: we are already failing
