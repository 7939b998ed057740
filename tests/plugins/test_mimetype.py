"""The shipped `mimetype` plugin: the type from the bytes, and the allow list.

Unit tests call the plugin's `process` with a fake `Upload`; the live tests run it
on a real uvicorn, named in the settings and loaded from plugins/ by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import sys
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import puremagic.main
import pytest

from tests.api.helpers import stored_bytes, wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live, make_settings
from uploadsvc.config import ConfigError, parse_settings
from uploadsvc.errors import NotFound
from uploadsvc.models import Status, UploadRecord
from uploadsvc.pipeline import load_pipeline
from uploadsvc.plugin import DerivedWriter, Processor, Rejection
from uploadsvc.records import active_key, record_key

# The plugin reads through the storage's ranged read, which the contract suite
# checks on every backend: one backend is enough for the live tests.
local_only = pytest.mark.parametrize("backend", ["local"], indirect=True)


def png() -> bytes:
    """A real 1x1 PNG, made by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter 0, one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


#: A 64-bit little-endian ELF header of an x86-64 executable, and nothing else.
ELF = (
    b"\x7fELF\x02\x01\x01\x00"
    + bytes(8)
    + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000, 64, 0, 0, 64, 56, 0, 64, 0, 0)
)
#: A DOS header only (`MZ`), and one with the bytes a PE's header usually starts with.
DOS = b"MZ" + bytes(62)
PE = b"MZ\x90\x00" + bytes(60)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


# Unit tests: the plugin's process with a fake upload.


class FakeUpload:
    """`plugin.Upload` over bytes in memory; remembers the ranges read."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.reads: list[tuple[int, int | None]] = []
        self._record = UploadRecord(
            id="0" * 28,
            filename="f",
            size=len(data),
            content_type=content_type,
            sha256=hashlib.sha256(data).hexdigest(),
            status=Status.processing,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            url=f"/uploads/{'0' * 28}/content",
        )

    @property
    def record(self) -> UploadRecord:
        return self._record.model_copy(deep=True)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.reads.append((start, end))
        wanted = self.data[start:end]
        for i in range(0, len(wanted), 1000):  # in blocks, as storages answer
            yield wanted[i : i + 1000]

    def reject(self, reason: str) -> NoReturn:
        raise Rejection(reason)

    @asynccontextmanager
    async def derive(self, name: str, content_type: str) -> AsyncIterator[DerivedWriter]:
        raise AssertionError("mimetype derives no file")
        yield  # pragma: no cover


def mimetype(**options: Any) -> Processor[Any]:
    """The shipped plugin, built by name from `[plugins.mimetype]` as start-up does."""
    settings = parse_settings(
        {"processing": {"pipeline": ["mimetype"]}, "plugins": {"mimetype": options}}
    )
    (plugin,) = load_pipeline(settings).plugins
    return plugin


def module_of(plugin: Processor[Any]) -> Any:
    return sys.modules[type(plugin).__module__]


def process(
    data: bytes, content_type: str = "application/octet-stream", **options: Any
) -> dict[str, Any]:
    return dict(asyncio.run(mimetype(**options).process(FakeUpload(data, content_type))))


def detected(data: bytes, content_type: str = "application/octet-stream") -> str:
    result: str = process(data, content_type)["detected"]
    return result


def test_the_bytes_decide_not_the_claim() -> None:
    assert process(png(), "text/plain") == {
        "detected": "image/png",
        "claimed": "text/plain",
        "matches": False,
    }


@pytest.mark.parametrize("claimed", ["image/png", "IMAGE/PNG", "image/png; charset=binary"])
def test_a_true_claim_matches_whatever_its_spelling(claimed: str) -> None:
    assert process(png(), claimed) == {"detected": "image/png", "claimed": claimed, "matches": True}


def test_aliases_fold_into_one_name() -> None:
    """puremagic says image/x-ms-bmp; browsers say image/bmp: one type."""
    bmp = b"BM" + struct.pack("<IHHI", 58, 0, 0, 54) + struct.pack("<IiiHH", 40, 1, 1, 1, 24)
    bmp += bytes(58 - len(bmp))
    assert process(bmp, "image/bmp")["detected"] == "image/bmp"
    assert process(bmp, "image/bmp")["matches"] is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (ELF, "application/x-executable"),  # puremagic has no type for it
        (DOS, "application/x-dosexec"),  # puremagic: only application/octet-stream
        (PE, "application/vnd.microsoft.portable-executable"),
    ],
    ids=["elf", "dos", "pe"],
)
def test_executables_come_out_as_executables(data: bytes, expected: str) -> None:
    for claimed in ["image/jpeg", "application/octet-stream"]:
        assert detected(data, claimed) == expected, claimed


def test_a_real_elf_binary_is_an_executable() -> None:
    with open(sys.executable, "rb") as f:
        assert detected(f.read(4096)) == "application/x-executable"


def test_a_shared_signature_gives_the_container_unless_the_claim_is_one_of_its_types() -> None:
    """PK\\x03\\x04 starts zip, docx, jar and more: the bytes alone say zip."""
    archive = zip_archive()
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert detected(archive) == "application/zip"
    assert detected(archive, "image/png") == "application/zip"
    assert detected(archive, docx) == docx
    # The claim never names a type the bytes do not fit.
    assert detected(png(), docx) == "image/png"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"just some words\n", "text/plain"),
        ("naïve café, 東京\n".encode(), "text/plain"),
        (b"words\x00with a NUL", "application/octet-stream"),
        (b"caf\xe9 in Latin-1, not UTF-8", "application/octet-stream"),
        (b"", "application/x-empty"),
    ],
    ids=["ascii", "utf-8", "nul", "not-utf-8", "empty"],
)
def test_unrecognised_bytes_are_text_or_binary(data: bytes, expected: str) -> None:
    assert detected(data) == expected


def test_only_the_head_is_read() -> None:
    plugin = mimetype()
    head_bytes = module_of(plugin).HEAD_BYTES
    # Enough for puremagic's deepest signature, and still a few KiB, not the file.
    assert puremagic.main.max_head <= head_bytes <= 64 << 10
    upload = FakeUpload(png() + bytes(4 << 20), "image/png")
    assert asyncio.run(plugin.process(upload))["detected"] == "image/png"
    assert upload.reads == [(0, head_bytes)]


def test_a_head_cut_inside_a_character_is_still_text() -> None:
    head_bytes = module_of(mimetype()).HEAD_BYTES
    text = b"a" * (head_bytes - 1) + "é".encode() * 100  # the head ends mid-character
    assert detected(text) == "text/plain"


def test_signatures_at_the_end_count_only_when_the_head_is_the_whole_file() -> None:
    """puremagic matches SVG by its last bytes: those of a cut head are not the file's."""
    head_bytes = module_of(mimetype()).HEAD_BYTES
    svg_end = b"x" * 100 + b"</svg>"
    assert detected(svg_end) == "image/svg+xml"  # the whole file: the end is the end
    cut = b"x" * (head_bytes - len(b"</svg>")) + b"</svg>" + b"more text\n" * 100
    assert detected(cut) == "text/plain"


def test_a_type_outside_the_allow_list_is_rejected_naming_it() -> None:
    with pytest.raises(Rejection) as rejected:
        process(ELF, "image/jpeg", allow=["image/*", "application/pdf"])
    assert rejected.value.reason.startswith("type application/x-executable is not allowed")


@pytest.mark.parametrize("allow", [["image/*"], ["IMAGE/PNG"], ["application/pdf", "image/p?g"]])
def test_a_type_the_allow_list_names_passes(allow: list[str]) -> None:
    assert process(png(), "image/png", allow=allow)["detected"] == "image/png"


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"allow": "image/*"}, "plugins.mimetype.allow:"),
        ({"allow": ["image"]}, "plugins.mimetype.allow.0:"),
        ({"allow": [7]}, "plugins.mimetype.allow.0:"),
        ({"alow": ["image/*"]}, "plugins.mimetype.alow:"),
    ],
    ids=["a-string", "not-a-type", "not-a-string", "unknown-key"],
)
def test_a_wrong_option_stops_start_up_naming_it(options: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        mimetype(**options)
    assert str(caught.value).startswith(where)


# Over a real uvicorn.


@pytest.fixture
def live(live_factory: Callable[..., Live], backend: Backend, tmp_path: Path) -> Live:
    plugins = {"mimetype": {"allow": ["image/*"]}}
    return live_factory(
        make_settings(
            backend, tmp_path, max_upload_bytes=32 << 20, pipeline=["mimetype"], plugins=plugins
        )
    )


def bytes_kept(live: Live, upload_id: str) -> list[str]:
    """What the storage holds for the upload besides its record (its bytes, derived
    files, part files), and what staging holds."""
    bookkeeping = {record_key(upload_id), active_key(upload_id)}
    stored = [k for k in live.backend.contents() if upload_id in k and k not in bookkeeping]
    staged = [p.name for p in live.staging.iterdir()] if live.staging.exists() else []
    return stored + staged


@local_only
def test_live_a_png_sent_as_text_is_recorded_as_a_png(live: Live) -> None:
    data = png()
    response = live.http.post(
        "/upload-blocking/", files={"file": ("notes.txt", data, "text/plain")}
    )
    assert response.status_code == 201, response.text
    record = live.http.get(f"/uploads/{response.json()['id']}").json()
    assert record["status"] == "completed"
    assert record["results"]["mimetype"] == {
        "detected": "image/png",
        "claimed": "text/plain",
        "matches": False,
    }
    assert stored_bytes(live.backend, record["id"]) == data


@local_only
def test_live_an_executable_named_as_a_photo_is_refused_and_removed(live: Live) -> None:
    response = live.http.post("/upload-blocking/", files={"file": ("photo.jpg", ELF, "image/jpeg")})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "rejected"
    upload_id = body["id"]
    assert response.headers["location"] == f"/uploads/{upload_id}"
    assert "application/x-executable" in body["detail"]

    record = live.http.get(f"/uploads/{upload_id}").json()
    assert (record["status"], record["rejected"]) == ("failed", True)
    assert "application/x-executable" in record["error"]
    assert record["filename"] == "photo.jpg"
    assert live.http.get(f"/uploads/{upload_id}/content").status_code != 200
    assert bytes_kept(live, upload_id) == []
    with pytest.raises(NotFound):
        stored_bytes(live.backend, upload_id)
    # The record stays, listed like any other, saying why.
    listed = live.http.get("/uploads").json()["items"]
    assert [r["id"] for r in listed] == [upload_id]


@local_only
def test_live_background_rejection_ends_failed_and_removes_the_bytes(live: Live) -> None:
    response = live.http.post(
        "/upload-nonblocking/", files={"file": ("photo.jpg", ELF, "image/jpeg")}
    )
    assert response.status_code == 202, response.text
    upload_id = response.json()["id"]
    record = wait_for_status(live, upload_id)
    assert (record["status"], record["rejected"]) == ("failed", True)
    assert "application/x-executable" in record["error"]
    wait_until(lambda: bytes_kept(live, upload_id) == [])
    assert live.http.get(f"/uploads/{upload_id}/content").status_code != 200
