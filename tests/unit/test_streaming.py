"""streaming.receive_file: multipart body -> exact bytes in a writer, or a domain error.

The writer is an in-memory fake, so these tests pin the parser's behaviour
(bytes, hash, limit, truncation, field rules) without any storage backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uploadsvc.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from uploadsvc.storage import BLOCK_SIZE, ObjectInfo, ObjectWriter
from uploadsvc.streaming import (
    FRAMING_ALLOWANCE,
    Received,
    check_body_length,
    receive_file,
)

BOUNDARY = "----uploadsvcTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMIT = 10 * BLOCK_SIZE
T = TypeVar("T")


class FakeWriter(ObjectWriter):
    """Records every block handed over, and whether it was committed or aborted."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.committed = False
        self.aborted = False

    async def write(self, block: bytes) -> None:
        assert isinstance(block, bytes), "writers are promised immutable bytes"
        assert not (self.committed or self.aborted)
        self.blocks.append(block)

    async def commit(self) -> ObjectInfo:
        self.committed = True
        return ObjectInfo("fake", len(self.data))

    async def abort(self) -> None:
        self.aborted = True

    @property
    def data(self) -> bytes:
        return b"".join(self.blocks)


class Source:
    """An async body that counts how many chunks the receiver pulled."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = list(chunks)
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk

    @property
    def exhausted(self) -> bool:
        return self.pulled == len(self.chunks)


def part(
    name: str,
    data: bytes,
    filename: str | None = None,
    content_type: str | None = None,
) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    headers = f"Content-Disposition: {disposition}\r\n"
    if content_type is not None:
        headers += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def form(*parts: bytes, closed: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


def file_form(data: bytes, filename: str = "data.bin", content_type: str | None = None) -> bytes:
    return form(part("file", data, filename, content_type))


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


def receive(
    chunks: Sequence[bytes] | Source,
    content_type: str | None = CONTENT_TYPE,
    limit: int = LIMIT,
    writer: FakeWriter | None = None,
) -> Received:
    source = chunks if isinstance(chunks, Source) else Source(chunks)
    return asyncio.run(receive_file(aiter(source), content_type, limit, writer or FakeWriter()))


def payload(size: int) -> bytes:
    """Bytes that are not a repeating pattern, so a dropped or doubled slice shows."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


# -- exact bytes and hash ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, 3 * BLOCK_SIZE + 7])
@pytest.mark.parametrize("chunk_size", [64 << 10, 4 * BLOCK_SIZE], ids=["64KiB", "4MiB"])
def test_bytes_and_sha256_are_exact(size: int, chunk_size: int) -> None:
    data = payload(size)
    writer = FakeWriter()
    received = receive(split(file_form(data), chunk_size), writer=writer)
    assert writer.data == data
    assert received.size == size
    assert received.sha256 == hashlib.sha256(data).hexdigest()
    assert received.filename == "data.bin"
    assert not writer.committed and not writer.aborted, "committing is the caller's job"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 13, len(BOUNDARY) + 3])
def test_tiny_chunks_that_split_headers_and_boundaries(chunk_size: int) -> None:
    """Every split point, including inside `\\r\\n--boundary`, yields the same bytes."""
    # The data holds near-misses of the boundary that must stay file content.
    data = b"a\r\n--" + BOUNDARY[:-1].encode() + b"X\r\n-\r\r\n--z" + payload(300)
    writer = FakeWriter()
    received = receive(split(file_form(data), chunk_size), writer=writer)
    assert writer.data == data
    assert received.sha256 == hashlib.sha256(data).hexdigest()


def test_chunk_boundary_at_every_offset_of_the_delimiter() -> None:
    """A chunk edge anywhere inside the closing delimiter must not leak or lose bytes."""
    data = payload(200)
    body = file_form(data)
    delimiter_at = body.index(f"\r\n--{BOUNDARY}--".encode())
    for cut in range(delimiter_at - 2, len(body)):
        writer = FakeWriter()
        receive([body[:cut], body[cut:]], writer=writer)
        assert writer.data == data, f"cut at {cut}"


def test_blocks_are_handed_over_while_streaming() -> None:
    """Memory stays flat: full blocks reach the writer before the body ends."""
    data = payload(3 * BLOCK_SIZE)
    body = file_form(data)
    written_before_end: list[int] = []
    writer = FakeWriter()

    async def body_watching_writer() -> AsyncIterator[bytes]:
        for chunk in split(body, 64 << 10):
            yield chunk
        written_before_end.append(len(writer.data))

    asyncio.run(receive_file(body_watching_writer(), CONTENT_TYPE, LIMIT, writer))
    assert written_before_end[0] >= 2 * BLOCK_SIZE
    assert writer.data == data


# -- form fields ---------------------------------------------------------------


def test_other_fields_before_and_after_the_file_are_ignored() -> None:
    data = b"the file"
    body = form(
        part("description", b"before"),
        part("other", b"x" * 5000),
        part("file", data, "a.txt", "text/plain"),
        part("note", b"after"),
    )
    writer = FakeWriter()
    received = receive(split(body, 17), writer=writer)
    assert writer.data == data
    assert received == Received("a.txt", "text/plain", len(data), hashlib.sha256(data).hexdigest())


def test_a_non_file_upload_field_with_a_filename_is_ignored() -> None:
    body = form(part("attachment", b"nope", "x.txt"), part("file", b"yes", "y.txt"))
    writer = FakeWriter()
    received = receive([body], writer=writer)
    assert (writer.data, received.filename) == (b"yes", "y.txt")


def test_filename_is_sanitised() -> None:
    received = receive([file_form(b"x", filename="../../etc/passwd")])
    assert received.filename == "passwd"


@pytest.mark.parametrize("name", ["résumé.pdf", "文件.txt", "€ 2026.txt"])
def test_utf8_filename_is_kept(name: str) -> None:
    """Browsers send form-data file names as raw UTF-8 (HTML spec); the record keeps them."""
    assert receive([file_form(b"x", filename=name)]).filename == name


def test_part_content_type_is_recorded_without_parameters() -> None:
    received = receive([file_form(b"x", content_type="Text/Plain; charset=utf-8")])
    assert received.content_type == "text/plain"


@pytest.mark.parametrize("declared", [None, "not a type", "text/", "<script>/x", ""])
def test_missing_or_malformed_part_content_type_is_octet_stream(declared: str | None) -> None:
    received = receive([file_form(b"x", content_type=declared)])
    assert received.content_type == "application/octet-stream"


def test_missing_file_field_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="no file"):
        receive([form(part("other", b"x", "x.txt"))])


def test_empty_form_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        receive([f"--{BOUNDARY}--\r\n".encode()])


def test_file_field_without_filename_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="no filename"):
        receive([form(part("file", b"just a text field"))])


@pytest.mark.parametrize("name", ["", "   ", ".", "..", "dir/", "\x01\x02"])
def test_unusable_filename_is_bad_request(name: str) -> None:
    with pytest.raises(BadRequest):
        receive([file_form(b"x", filename=name)])


def test_two_file_fields_are_bad_request() -> None:
    body = form(part("file", b"one", "1.txt"), part("file", b"two", "2.txt"))
    with pytest.raises(BadRequest, match="more than one"):
        receive([body])


# -- malformed bodies ----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 100, 1 << 20])
def test_body_without_closing_boundary_is_truncated(chunk_size: int) -> None:
    """python-multipart's finalize() accepts this; receive_file must not."""
    body = form(part("file", payload(1000), "a.bin"), closed=False)
    with pytest.raises(BadRequest, match="truncated"):
        receive(split(body, chunk_size))


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.99])
def test_body_cut_in_the_middle_of_the_file_is_truncated(cut: float) -> None:
    body = file_form(payload(1000))
    with pytest.raises(BadRequest, match="truncated"):
        receive([body[: int(len(body) * cut)]])


def test_empty_body_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        receive([])


@pytest.mark.parametrize(
    "body",
    [b"hello, this is not multipart", b"--wrong-boundary\r\n\r\nxx\r\n--wrong-boundary--\r\n"],
)
def test_garbage_body_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        receive([body])


def test_header_without_colon_is_bad_request() -> None:
    body = f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    with pytest.raises(BadRequest, match="malformed"):
        receive([body])


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/x-www-form-urlencoded", "text/plain"],
)
def test_not_multipart_is_unsupported_media_type(content_type: str | None) -> None:
    source = Source([file_form(b"x")])
    with pytest.raises(UnsupportedMediaType):
        receive(source, content_type=content_type)
    assert source.pulled == 0, "rejected before reading the body"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
def test_multipart_without_boundary_is_bad_request(content_type: str) -> None:
    with pytest.raises(BadRequest, match="boundary"):
        receive([file_form(b"x")], content_type=content_type)


def test_content_type_with_quoted_boundary_and_other_params_is_accepted() -> None:
    content_type = f'Multipart/Form-Data; charset=utf-8; boundary="{BOUNDARY}"'
    assert receive([file_form(b"abc")], content_type=content_type).size == 3


# -- size limit ----------------------------------------------------------------


def test_file_over_the_limit_stops_before_the_body_is_consumed() -> None:
    limit = 1000
    source = Source(split(file_form(payload(50_000)), 100))
    writer = FakeWriter()
    with pytest.raises(PayloadTooLarge):
        receive(source, limit=limit, writer=writer)
    assert not source.exhausted
    # The headers take a chunk or two; then at most limit/100 + 1 chunks of data.
    assert source.pulled <= 1000 // 100 + 3
    assert len(writer.data) <= limit


def test_file_of_exactly_the_limit_is_accepted() -> None:
    data = payload(1000)
    writer = FakeWriter()
    received = receive(split(file_form(data), 7), limit=1000, writer=writer)
    assert received.size == 1000
    assert writer.data == data


def test_file_one_byte_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="1000"):
        receive(split(file_form(payload(1001)), 7), limit=1000)


def test_other_fields_do_not_count_towards_the_file_limit() -> None:
    body = form(part("notes", b"n" * 5000), part("file", payload(1000), "f.bin"))
    assert receive([body], limit=1000).size == 1000


def test_declared_length_allows_framing_on_top_of_the_limit() -> None:
    check_body_length(None, 100)
    check_body_length(0, 100)
    check_body_length(100, 100)
    check_body_length(100 + FRAMING_ALLOWANCE, 100)
    with pytest.raises(PayloadTooLarge, match=str(101 + FRAMING_ALLOWANCE)):
        check_body_length(101 + FRAMING_ALLOWANCE, 100)


def test_filename_that_is_not_utf8_is_decoded_with_replacement() -> None:
    """An old client's Latin-1 name is kept readable, never a crash."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + "résumé.pdf".encode("latin-1")
        + f'"\r\n\r\nx\r\n--{BOUNDARY}--\r\n'.encode()
    )
    assert receive([body]).filename == "r\ufffdsum\ufffd.pdf"


class LateExecutor(ThreadPoolExecutor):
    """Starts every call late, so a hash that does not wait for the one before shows."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def late() -> T:
            time.sleep(0.05)  # widens the race; nothing asserts on time
            return fn(*args, **kwargs)

        return super().submit(late)


@pytest.mark.parametrize("tail", [100, 300 << 10], ids=["inline", "threaded"])
def test_the_last_block_is_hashed_after_the_block_in_flight(tail: int) -> None:
    """sha256 is order-sensitive: the tail must wait for the threaded hash before it."""
    data = payload(2 * BLOCK_SIZE + tail)
    body = file_form(data)
    head = body.index(data) + 2 * BLOCK_SIZE

    async def main() -> Received:
        asyncio.get_running_loop().set_default_executor(LateExecutor(max_workers=2))
        return await receive_file(
            aiter(Source([body[:head], body[head:]])), CONTENT_TYPE, LIMIT, FakeWriter()
        )

    assert asyncio.run(main()).sha256 == hashlib.sha256(data).hexdigest()


def test_other_fields_cannot_stream_without_end() -> None:
    """The whole body is capped too: a huge non-file field is a 413, not a 201."""
    limit = 1000
    junk = b"j" * (limit + FRAMING_ALLOWANCE + 1)
    body = form(part("notes", junk), part("file", payload(5), "f.bin"))
    with pytest.raises(PayloadTooLarge):
        receive(split(body, 4096), limit=limit)


def test_an_epilogue_after_the_closing_boundary_counts_too() -> None:
    limit = 1000
    body = file_form(payload(5)) + b"e" * (limit + FRAMING_ALLOWANCE)
    with pytest.raises(PayloadTooLarge):
        receive(split(body, 4096), limit=limit)


def test_an_overlong_boundary_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="malformed"):
        receive([b"--x"], limit=1000, content_type="multipart/form-data; boundary=" + "b" * 300)


# -- preamble, filename*, random cuts ---------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_a_preamble_before_the_first_boundary_is_skipped(chunk_size: int) -> None:
    """RFC 2046 lets a body start with text before its first boundary."""
    data = payload(5000)
    body = b"This is a multi-part message in MIME format.\r\n" + file_form(data)
    received = receive(split(body, chunk_size))
    assert received.size == len(data)
    assert received.sha256 == hashlib.sha256(data).hexdigest()


def test_a_preamble_without_end_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="no boundary in the first 64 KiB"):
        receive(split(b"x" * (80 << 10) + file_form(b"late"), 8 << 10))


@pytest.mark.parametrize("chunk_size", [8 << 10, 64 << 10, 1 << 20])
def test_a_preamble_over_64_kib_is_bad_request_however_it_is_chunked(chunk_size: int) -> None:
    """The delimiter found in the same chunk as an overlong preamble is still late."""
    body = b"x" * (80 << 10) + b"\r\n" + file_form(b"late")
    with pytest.raises(BadRequest, match="no boundary in the first 64 KiB"):
        receive(split(body, chunk_size))


def test_a_preamble_of_exactly_64_kib_is_skipped() -> None:
    data = payload(100)
    received = receive(split(b"x" * (64 << 10) + b"\r\n" + file_form(data), 1 << 20))
    assert received.sha256 == hashlib.sha256(data).hexdigest()


def _disposition_form(disposition: str, data: bytes = b"x") -> bytes:
    headers = f"Content-Disposition: {disposition}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ("form-data; name=\"file\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt", "résumé.txt"),
        (
            'form-data; name="file"; filename="resume.txt"; '
            "filename*=utf-8'en'r%C3%A9sum%C3%A9.txt",
            "résumé.txt",
        ),
        ("form-data; name=\"file\"; filename*=ISO-8859-1''caf%E9.txt", "café.txt"),
    ],
    ids=["only-extended", "extended-wins", "latin-1"],
)
def test_an_extended_filename_is_decoded_and_preferred(disposition: str, name: str) -> None:
    assert receive([_disposition_form(disposition)]).filename == name


def test_an_unknown_charset_in_filename_star_is_bad_request() -> None:
    body = _disposition_form("form-data; name=\"file\"; filename*=x-nope''a.txt")
    with pytest.raises(BadRequest, match="unknown charset"):
        receive([body])


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3 * 1024),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * 1024), max_size=12),
    preamble=st.sampled_from([b"", b"preamble\r\n"]),
)
def test_any_cut_of_a_body_gives_the_same_file_and_hash(
    data: bytes, cuts: list[int], preamble: bytes
) -> None:
    body = preamble + file_form(data)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    writer = FakeWriter()
    received = receive(chunks, writer=writer)
    assert received.size == len(data)
    assert received.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(writer.blocks) == data
