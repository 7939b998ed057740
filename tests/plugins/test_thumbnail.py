"""The thumbnail plugin: unit cases over a fake upload (fast, many), then the whole
service on a real uvicorn with the plugin loaded by name from `plugins/`, as a
configured deployment loads it, on the local backend (the plugin reads and
derives through the storage interface, which the backend suites cover)."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from tests.api.helpers import wait_for_status
from tests.backends import Backend
from tests.conftest import Live, make_settings
from uploadsvc import plugin
from uploadsvc.config import ConfigError, Settings, parse_settings
from uploadsvc.models import Status, UploadRecord
from uploadsvc.pipeline import load_pipeline

#: The API tests' `backend` fixture, held to the local folder.
local_only = pytest.mark.parametrize("backend", ["local"], indirect=True)

ORIENTATION = 0x0112
MAKE = 0x010F
#: Where Pillow's own bomb check raises, whatever `max_pixels` says.
PILLOW_HARD_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 0)


# --- images, made here ------------------------------------------------------


def halves(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue: which way it was turned stays visible."""
    image = Image.new(mode, size, "blue")
    image.paste(Image.new(mode, (size[0] // 2, size[1]), "red"), (0, 0))
    return image


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def rotated_jpeg() -> bytes:
    """A 1200x800 JPEG a camera held upright took: EXIF says turn it 90° clockwise.
    It also names the camera, which must not reach the thumbnail."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "SecretCam"
    return encode(halves((1200, 800)), "JPEG", quality=90, exif=exif)


def transparent_png() -> bytes:
    """400x200, opaque green on the left, fully transparent on the right."""
    image = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (200, 200), (0, 200, 0, 255)), (0, 0))
    return encode(image, "PNG")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` 1-bit pixels, with almost no
    pixel data: opening it costs nothing, decoding it would fail (or eat memory)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_no_metadata(data: bytes, image: Image.Image) -> None:
    """Nothing of the original's metadata: no EXIF, ICC or XMP, in Pillow's view and
    in the bytes (WebP chunk names, PNG chunk names, the camera's name)."""
    assert len(image.getexif()) == 0
    assert not {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp"} & set(image.info)
    for marker in (b"EXIF", b"Exif", b"ICCP", b"iCCP", b"eXIf", b"XMP", b"SecretCam"):
        assert marker not in data


# --- a fake upload and the plugin as the pipeline builds it ------------------


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def write(self, data: bytes, /) -> None:
        self.parts.append(data)


class FakeUpload:
    """`plugin.Upload` over bytes in memory; derived files land in `derived` as
    (content type, bytes), and only when their block ends cleanly, as in the service."""

    def __init__(
        self,
        data: bytes,
        content_type: str = "application/octet-stream",
        claimed_size: int | None = None,
        block: int = 64 << 10,
    ) -> None:
        self.data = data
        self.block = block
        self.reads = 0
        self.derived: dict[str, tuple[str, bytes]] = {}
        self._record = UploadRecord(
            id="0" * 28,
            filename="upload",
            size=len(data) if claimed_size is None else claimed_size,
            content_type=content_type,
            sha256="0" * 64,
            status=Status.processing,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            url=f"/uploads/{'0' * 28}/content",
        )

    @property
    def record(self) -> UploadRecord:
        return self._record.model_copy(deep=True)

    def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.reads += 1
        return self._blocks(self.data[start:end])

    async def _blocks(self, data: bytes) -> AsyncIterator[bytes]:
        for at in range(0, len(data), self.block):
            yield data[at : at + self.block]

    def reject(self, reason: str) -> NoReturn:
        raise plugin.Rejection(reason)

    @asynccontextmanager
    async def derive(self, name: str, content_type: str) -> AsyncIterator[plugin.DerivedWriter]:
        writer = Writer()
        yield writer
        self.derived[name] = (content_type, b"".join(writer.parts))


def thumbnailer(**options: Any) -> plugin.Processor[Any]:
    """The plugin as start-up builds it: found by name in `plugins/`, options validated."""
    settings = parse_settings(
        {"processing": {"pipeline": ["thumbnail"]}, "plugins": {"thumbnail": options}}
    )
    return load_pipeline(settings).plugins[0]


def process(upload: FakeUpload, **options: Any) -> Mapping[str, Any]:
    return asyncio.run(thumbnailer(**options).process(upload))


# --- unit cases ----------------------------------------------------------------


def test_a_jpeg_becomes_a_webp_thumbnail_with_its_longest_side_at_max_size() -> None:
    upload = FakeUpload(encode(halves((1200, 800)), "JPEG"), "image/jpeg")
    result = process(upload)
    assert result == {"width": 256, "height": 171, "format": "webp", "source": [1200, 800]}
    content_type, data = upload.derived["thumbnail"]
    assert content_type == "image/webp"
    image = decoded(data)
    assert (image.format, image.size, image.mode) == ("WEBP", (256, 171), "RGB")


def test_exif_orientation_is_applied_and_all_metadata_is_stripped() -> None:
    upload = FakeUpload(rotated_jpeg(), "image/jpeg")
    result = process(upload)
    assert result == {"width": 171, "height": 256, "format": "webp", "source": [800, 1200]}
    data = upload.derived["thumbnail"][1]
    image = decoded(data).convert("RGB")
    assert image.size == (171, 256)
    # Turned clockwise: the red left half is now on top.
    red, _, blue = image.getpixel((85, 40))  # type: ignore[misc]
    assert red > 200 and blue < 60
    red, _, blue = image.getpixel((85, 215))  # type: ignore[misc]
    assert blue > 200 and red < 60
    assert_no_metadata(data, decoded(data))


def test_png_output_when_configured() -> None:
    upload = FakeUpload(encode(halves((300, 600)), "PNG"))
    assert process(upload, format="png", max_size=64) == {
        "width": 32,
        "height": 64,
        "format": "png",
        "source": [300, 600],
    }
    content_type, data = upload.derived["thumbnail"]
    assert content_type == "image/png"
    assert decoded(data).format == "PNG"


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_transparency_is_kept(fmt: str) -> None:
    upload = FakeUpload(transparent_png(), "image/png")
    process(upload, format=fmt)
    image = decoded(upload.derived["thumbnail"][1])
    assert image.mode == "RGBA" and image.size == (256, 128)
    assert image.getpixel((20, 64))[3] == 255  # type: ignore[index]
    assert image.getpixel((236, 64))[3] == 0  # type: ignore[index]


def test_a_palette_image_with_a_transparent_colour_keeps_it() -> None:
    palette = halves((200, 100)).convert("P")
    transparent = palette.getpixel((150, 50))
    upload = FakeUpload(encode(palette, "PNG", transparency=transparent), "image/png")
    process(upload, max_size=100)
    image = decoded(upload.derived["thumbnail"][1])
    assert image.mode == "RGBA"
    assert image.getpixel((20, 25))[3] == 255  # type: ignore[index]
    assert image.getpixel((80, 25))[3] == 0  # type: ignore[index]


def test_an_opaque_alpha_channel_is_dropped() -> None:
    """Alpha that is 255 everywhere carries nothing: the thumbnail is plain RGB."""
    upload = FakeUpload(encode(halves((100, 100)).convert("RGBA"), "PNG"))
    process(upload, max_size=50)
    assert decoded(upload.derived["thumbnail"][1]).mode == "RGB"


def test_a_small_image_is_not_enlarged() -> None:
    upload = FakeUpload(encode(halves((40, 30)), "PNG"))
    assert process(upload)["width"] == 40
    assert decoded(upload.derived["thumbnail"][1]).size == (40, 30)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "PNG"), ("L", "JPEG"), ("LA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("RGB", "BMP")],
)
def test_every_common_mode_and_format_makes_a_thumbnail(mode: str, fmt: str) -> None:
    upload = FakeUpload(encode(halves((320, 160)).convert(mode), fmt))
    result = process(upload, max_size=64)
    assert (result["width"], result["height"]) == (64, 32)
    image = decoded(upload.derived["thumbnail"][1])
    assert image.mode in ("RGB", "RGBA") and image.size == (64, 32)


def test_sixteen_bit_samples_are_scaled_not_clipped_to_white() -> None:
    grey = Image.new("I;16", (64, 64), 0x4000)  # a quarter of full scale
    upload = FakeUpload(encode(grey, "PNG"))
    process(upload, max_size=32)
    red, green, blue = decoded(upload.derived["thumbnail"][1]).getpixel((16, 16))  # type: ignore[misc]
    assert 55 <= red <= 75 and red == green == blue


def test_an_icc_profile_is_applied_then_left_out() -> None:
    """Colour-managed to sRGB, then stripped: the thumbnail carries no profile."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    upload = FakeUpload(encode(halves((200, 100)), "PNG", icc_profile=srgb))
    process(upload, format="png", max_size=100)
    data = upload.derived["thumbnail"][1]
    assert_no_metadata(data, decoded(data))
    red, _, blue = decoded(data).getpixel((10, 10))  # type: ignore[misc]
    assert red > 240 and blue < 15


def test_a_large_jpeg_is_decoded_at_reduced_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """draft(): a 4000x3000 photo for a 256 thumbnail is decoded at 1/4 (1000x750),
    at least twice the thumbnail's size, not at full size."""
    loaded: list[tuple[int, int]] = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self: JpegImagePlugin.JpegImageFile) -> Any:
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    upload = FakeUpload(encode(halves((4000, 3000)), "JPEG"))
    assert process(upload)["source"] == [4000, 3000]
    assert loaded[0] == (1000, 750)
    assert decoded(upload.derived["thumbnail"][1]).size == (256, 192)


def test_pillow_runs_on_the_plugin_pool_not_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real_open = Image.open

    def spying_open(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", spying_open)
    process(FakeUpload(encode(halves((64, 64)), "PNG")))
    assert len(threads) == 1 and threads[0].startswith("uploadsvc-plugin")


class RecordingSpool(tempfile.SpooledTemporaryFile[bytes]):
    """A spooled file that remembers moving to disk."""

    rolled_over = False

    def rollover(self) -> None:
        self.rolled_over = True
        super().rollover()


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch) -> list[RecordingSpool]:
    """Every spooled file the plugin makes, from now on."""
    made: list[RecordingSpool] = []

    def spool(max_size: int = 0) -> RecordingSpool:
        made.append(RecordingSpool(max_size=max_size))
        return made[-1]

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", spool)
    return made


def test_a_large_upload_is_spooled_to_disk_and_closed(spools: list[RecordingSpool]) -> None:
    """Memory stays bounded: beyond a small buffer the bytes wait in a temporary
    file, which the decoding thread closes (deleting it) when done."""
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(3 << 20))
    upload = FakeUpload(encode(noise, "PNG", compress_level=0))
    assert process(upload)["width"] == 256
    assert len(spools) == 1
    assert spools[0].rolled_over and spools[0].closed


def test_a_small_upload_stays_in_memory(spools: list[RecordingSpool]) -> None:
    process(FakeUpload(encode(halves((64, 64)), "PNG")))
    assert len(spools) == 1
    assert not spools[0].rolled_over and spools[0].closed


def test_cancelled_before_its_thread_starts_it_closes_its_spool(
    spools: list[RecordingSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processor's timeout can strike while the work waits for a pool thread:
    the spooled file must not be left open for nobody."""

    async def queued_forever(function: Callable[..., Any], *args: Any) -> Any:
        await asyncio.Event().wait()  # never set: the pool never gets to it

    monkeypatch.setattr(plugin, "off_loop", queued_forever)
    processor = thumbnailer()
    upload = FakeUpload(encode(halves((64, 64)), "PNG"))
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(processor.process(upload), timeout=0.05))
    assert len(spools) == 1 and spools[0].closed
    assert upload.derived == {}


@pytest.mark.parametrize(
    ("data", "claimed"),
    [
        (b"hello, this is plain text\n" * 100, "text/plain"),
        (b"not a JPEG at all, whatever the client says", "image/jpeg"),
        (b"", "image/png"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf"),
        # Pillow can open EPS (through Ghostscript): not with this plugin.
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "image/x-eps"),
    ],
    ids=["text", "claims-jpeg", "empty", "pdf", "eps"],
)
def test_what_is_not_an_image_is_skipped(data: bytes, claimed: str) -> None:
    upload = FakeUpload(data, claimed)
    assert process(upload) == {"skipped": "not an image"}
    assert upload.derived == {}


def test_an_upload_above_max_input_bytes_is_skipped_unread() -> None:
    upload = FakeUpload(encode(halves((64, 64)), "PNG"))
    limit = upload.record.size - 1
    assert process(upload, max_input_bytes=limit) == {
        "skipped": f"{limit + 1} bytes exceed max_input_bytes ({limit})"
    }
    assert upload.reads == 0 and upload.derived == {}


def test_reading_stops_at_max_input_bytes_whatever_the_record_says() -> None:
    upload = FakeUpload(encode(halves((64, 64)), "PNG"), claimed_size=10, block=16)
    result = process(upload, max_input_bytes=100)
    assert result == {"skipped": "more than max_input_bytes (100)"}
    assert upload.derived == {}


@pytest.mark.parametrize(
    ("data", "options", "reason"),
    [
        # Pillow's own hard limit (about 179 M pixels) meets it first, in `open`.
        (declared_png(20000, 20000), {}, "image of 400000000 pixels exceeds the limit of 50000000"),
        # Between Pillow's warning and its error; ours decides (in tests the
        # warning is an error, and is taken as the bomb it announces).
        (declared_png(10000, 10000), {}, "image of 100000000 pixels exceeds the limit of 50000000"),
        # Only ours: a modest image above a lowered max_pixels.
        (declared_png(3000, 2000), {"max_pixels": 5_000_000}, "image of 6000000 pixels "),
        # Above max_pixels raised beyond Pillow's hard limit: Pillow's limit is named.
        (
            declared_png(20000, 20000),
            {"max_pixels": 500_000_000},
            f"image of 400000000 pixels exceeds the limit of {PILLOW_HARD_LIMIT}",
        ),
    ],
    ids=["pillow-error", "pillow-warning", "max-pixels", "pillow-above-max-pixels"],
)
def test_a_decompression_bomb_is_rejected_before_decoding(
    data: bytes, options: dict[str, Any], reason: str
) -> None:
    """The declared PNGs hold almost no pixel data: decoding them would fail as
    truncated, so a rejection (not a failure) shows nothing was decoded."""
    upload = FakeUpload(data, "image/png")
    with pytest.raises(plugin.Rejection) as caught:
        process(upload, **options)
    assert caught.value.reason.startswith(reason)
    assert upload.derived == {}


def test_max_pixels_counts_pixels_not_bytes() -> None:
    """A real, valid image just above the limit is refused; at the limit it passes."""
    data = encode(halves((100, 100)), "PNG")
    with pytest.raises(plugin.Rejection) as caught:
        process(FakeUpload(data), max_pixels=9_999)
    assert caught.value.reason == "image of 10000 pixels exceeds the limit of 9999"
    assert process(FakeUpload(data), max_pixels=10_000)["width"] == 100


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            truncated(encode(Image.effect_noise((600, 400), 60).convert("RGB"), "JPEG"), 0.5),
            "cannot decode the JPEG image: image file is truncated",
        ),
        (
            truncated(encode(Image.effect_noise((600, 400), 60), "PNG"), 0.5),
            "cannot decode the PNG image: image file is truncated",
        ),
        (
            encode(halves((64, 64)), "PNG")[:33] + chunk(b"IDAT", b"not zlib at all") + b"",
            "cannot decode the PNG image: ",
        ),
    ],
    ids=["truncated-jpeg", "truncated-png", "corrupt-png"],
)
def test_a_corrupt_image_fails_with_a_readable_message(data: bytes, message: str) -> None:
    upload = FakeUpload(data, "image/jpeg")
    processor = thumbnailer()
    # Each load imports the file anew: the error class of this very load.
    error = sys.modules[type(processor).__module__].ThumbnailError
    with pytest.raises(error) as caught:
        asyncio.run(processor.process(upload))
    assert str(caught.value).startswith(message)
    assert upload.derived == {}


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"max_size": "big"}, "plugins.thumbnail.max_size: "),
        ({"max_size": 8}, "plugins.thumbnail.max_size: "),
        ({"max_size": 5000}, "plugins.thumbnail.max_size: "),
        ({"format": "gif"}, "plugins.thumbnail.format: "),
        ({"max_pixels": 0}, "plugins.thumbnail.max_pixels: "),
        ({"colour": "red"}, "plugins.thumbnail.colour: "),
    ],
)
def test_a_wrong_option_stops_start_up_naming_it(options: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        thumbnailer(**options)
    assert str(caught.value).startswith(where)


# --- the whole service ----------------------------------------------------------


def thumbnail_settings(backend: Backend, tmp_path: Path, **options: Any) -> Settings:
    plugins = {"thumbnail": options}
    return make_settings(
        backend, tmp_path, max_upload_bytes=32 << 20, pipeline=["thumbnail"], plugins=plugins
    )


@pytest.fixture
def thumbnailing(
    live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> Iterator[Callable[..., Live]]:
    """Starts a live service whose pipeline makes thumbnails (with the given options)."""
    yield lambda **options: live_factory(thumbnail_settings(backend, tmp_path, **options))


def stored(live: Live, upload_id: str) -> list[str]:
    """What the storage folder holds of the upload: its bytes and derived files (records,
    index and lease entries are the service's and not counted)."""
    return [
        name
        for name in live.backend.contents()
        if name == upload_id or name.startswith(f"derived.{upload_id}.")
    ]


def upload(live: Live, name: str, data: bytes, content_type: str, path: str = "blocking") -> Any:
    return live.http.post(f"/upload-{path}/", files={"file": (name, data, content_type)})


@local_only
def test_a_rotated_jpeg_gets_an_upright_metadata_free_webp_thumbnail(
    thumbnailing: Callable[..., Live],
) -> None:
    live = thumbnailing()
    response = upload(live, "photo.jpg", rotated_jpeg(), "image/jpeg")
    assert response.status_code == 201
    record = response.json()
    upload_id = record["id"]
    assert record["status"] == "completed"
    assert record["derived"] == {"thumbnail": f"/uploads/{upload_id}/derived/thumbnail"}
    assert record["results"]["thumbnail"] == {
        "width": 171,
        "height": 256,
        "format": "webp",
        "source": [800, 1200],
    }
    assert stored(live, upload_id) == sorted([upload_id, f"derived.{upload_id}.thumbnail"])

    got = live.http.get(record["derived"]["thumbnail"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/webp"
    assert got.headers["x-content-type-options"] == "nosniff"
    image = decoded(got.content)
    assert (image.format, image.size) == ("WEBP", (171, 256))
    assert_no_metadata(got.content, image)


@local_only
def test_a_transparent_png_keeps_its_alpha_through_the_service(
    thumbnailing: Callable[..., Live],
) -> None:
    live = thumbnailing(format="png")
    record = upload(live, "logo.png", transparent_png(), "image/png").json()
    assert record["results"]["thumbnail"]["format"] == "png"
    got = live.http.get(record["derived"]["thumbnail"])
    assert got.headers["content-type"] == "image/png"
    image = decoded(got.content)
    assert image.mode == "RGBA" and image.getchannel("A").getextrema() == (0, 255)


@local_only
def test_a_text_file_completes_with_skipped_and_no_thumbnail(
    thumbnailing: Callable[..., Live],
) -> None:
    live = thumbnailing()
    response = upload(live, "notes.txt", b"just some words\n" * 50, "text/plain")
    assert response.status_code == 201
    record = response.json()
    assert record["status"] == "completed"
    assert record["results"]["thumbnail"] == {"skipped": "not an image"}
    assert record["derived"] == {}
    assert live.http.get(f"/uploads/{record['id']}/derived/thumbnail").status_code == 404
    assert stored(live, record["id"]) == [record["id"]]


@local_only
def test_a_truncated_jpeg_fails_the_upload_naming_the_plugin(
    thumbnailing: Callable[..., Live],
) -> None:
    live = thumbnailing()
    data = truncated(encode(Image.effect_noise((600, 400), 60).convert("RGB"), "JPEG"), 0.5)
    response = upload(live, "broken.jpg", data, "image/jpeg")
    assert response.status_code == 201  # stored; its processing failed
    record = response.json()
    assert record["status"] == "failed"
    assert record["error"].startswith(
        "processor 'thumbnail' failed: cannot decode the JPEG image: image file is truncated"
    )
    assert record["derived"] == {}
    assert f"derived.{record['id']}.thumbnail" not in live.backend.contents()
    # The service goes on: the next image gets its thumbnail.
    assert upload(live, "ok.png", transparent_png(), "image/png").json()["status"] == "completed"


@local_only
def test_a_decompression_bomb_is_rejected_with_422_and_leaves_no_bytes(
    thumbnailing: Callable[..., Live],
) -> None:
    live = thumbnailing(max_pixels=1_000_000)
    response = upload(live, "bomb.png", declared_png(20000, 20000), "image/png")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "rejected"
    assert "image of 400000000 pixels exceeds the limit of 1000000" in body["detail"]
    upload_id = body["id"]
    assert response.headers["location"] == f"/uploads/{upload_id}"
    record = live.http.get(f"/uploads/{upload_id}").json()
    assert record["status"] == "failed" and record["rejected"] is True
    assert stored(live, upload_id) == []
    assert live.http.get(f"/uploads/{upload_id}/content").status_code == 409
    assert live.http.get(f"/uploads/{upload_id}/derived/thumbnail").status_code == 404


@local_only
def test_deleting_an_upload_removes_its_thumbnail(thumbnailing: Callable[..., Live]) -> None:
    live = thumbnailing()
    upload_id = upload(live, "photo.jpg", rotated_jpeg(), "image/jpeg").json()["id"]
    assert f"derived.{upload_id}.thumbnail" in live.backend.contents()
    assert live.http.delete(f"/uploads/{upload_id}").status_code == 204
    assert stored(live, upload_id) == []
    assert live.http.get(f"/uploads/{upload_id}/derived/thumbnail").status_code == 404


@local_only
def test_the_background_path_makes_the_thumbnail_too(thumbnailing: Callable[..., Live]) -> None:
    live = thumbnailing()
    response = upload(live, "photo.jpg", rotated_jpeg(), "image/jpeg", path="nonblocking")
    assert response.status_code == 202
    upload_id = response.json()["id"]
    record = wait_for_status(live, upload_id)
    assert record["status"] == "completed"
    assert record["results"]["thumbnail"]["height"] == 256
    got = live.http.get(record["derived"]["thumbnail"])
    assert got.status_code == 200
    assert decoded(got.content).size == (171, 256)
