"""Thumbnail: a small WebP (or PNG) of each uploaded image, kept as the derived file `thumbnail`.

    [processing] pipeline = ["thumbnail"]
    [plugins.thumbnail] max_size = 256, format = "webp"

Uploads are hostile input, so the plugin trusts nothing it is told:

- Whether an upload is an image is decided by Pillow identifying its bytes,
  never by the claimed content type; what it cannot identify is skipped
  (`{"skipped": "not an image"}`), not failed. Only the common raster
  formats are tried (`DECODERS`): Pillow would otherwise hand an EPS file to
  Ghostscript, and each exotic decoder is attack surface nobody needs here.
- The pixel count is checked on the header, before anything is decoded: an
  image above `max_pixels` is a decompression bomb (a small file that
  decodes into gigabytes) and the upload is rejected. Pillow's own bomb check
  (on frames, tiles and sizes the header does not show) stays on as a second
  net; what it refuses is rejected the same way.
- An image that is identified but does not decode (truncated, corrupt)
  raises `ThumbnailError`, which fails the upload with a readable reason.
- Uploads above `max_input_bytes` are skipped without being read.

The bytes are streamed into a spooled temporary file (in memory when small,
on disk beyond `SPOOL_IN_MEMORY`), so memory stays bounded whatever the
upload's size; all Pillow work then runs in `plugin.off_loop` (Pillow
releases the GIL while decoding), never on the event loop.

The result, in `results.thumbnail`: `{"width", "height", "format", "source":
[W, H]}`, `source` being the original's size as shown (after its EXIF
orientation). An animated image's thumbnail is its first frame.

The thumbnail is oriented (EXIF), colour-managed to sRGB when the image
carries an ICC profile, and saved with no metadata at all: EXIF (GPS
positions, camera serial numbers), ICC, XMP and text chunks of the original
must not leak into a file served to others.

`Image.MAX_IMAGE_PIXELS` is left alone on purpose: it is one global for the
whole process, read by every thread and every other user of Pillow, so
setting it per plugin (or per upload) would race and weaken or tighten
checks elsewhere. `max_pixels` is checked here, on `im.size`, instead.
"""

from __future__ import annotations

import io
import math
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError, features
from pydantic import ConfigDict, Field

from uploadsvc import plugin

#: Bytes of an upload kept in memory before the spool moves to a temporary file.
SPOOL_IN_MEMORY = 1 << 20

#: The decoders tried, as Pillow names them; those this Pillow lacks (AVIF) are left out.
WANTED_DECODERS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF")
Image.init()  # registers every decoder, so that `Image.OPEN` lists what this Pillow has
DECODERS = tuple(name for name in WANTED_DECODERS if name in Image.OPEN)

#: EXIF orientations that turn the image a quarter: width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION = 0x0112
#: Pillow's bomb messages: "Image size (N pixels) exceeds limit of M pixels, ...".
_PILLOW_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")

_CONTENT_TYPES = {"webp": "image/webp", "png": "image/png"}


class ThumbnailOptions(plugin.Options):
    """`[plugins.thumbnail]`; strict, so a quoted number is a mistake, not a guess."""

    model_config = ConfigDict(strict=True)

    #: The thumbnail's longest side, in pixels; smaller images are not enlarged.
    max_size: int = Field(default=256, ge=16, le=4096)
    format: Literal["webp", "png"] = "webp"
    #: Images with more pixels than this are refused as decompression bombs.
    max_pixels: int = Field(default=50_000_000, ge=1)
    #: Uploads larger than this are skipped, unread.
    max_input_bytes: int = Field(default=64 << 20, ge=1)


class ThumbnailError(Exception):
    """An image Pillow identified but could not decode: the upload fails, saying why."""


@dataclass(frozen=True)
class _Made:
    data: bytes
    width: int
    height: int
    #: The original's size as it is shown (after EXIF orientation), before any reduction.
    source: tuple[int, int]


@dataclass(frozen=True)
class _Bomb:
    reason: str


class _Spool:
    """The upload's bytes, and who closes them.

    Once handed to `off_loop` the file belongs to the thread, which closes it
    when done; if the processor is cancelled (its timeout) before the thread
    started, the event loop side closes it instead. `take` decides, once.
    """

    def __init__(self) -> None:
        # No `with`: the file outlives this block and `take` decides who closes it.
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> bool:
        with self._lock:
            taken, self._taken = self._taken, True
        return not taken

    def abandon(self) -> None:
        if self.take():
            self.file.close()


class Thumbnail(plugin.Processor[ThumbnailOptions]):
    """Makes `thumbnail` from image uploads; see the module docstring."""

    Options = ThumbnailOptions

    async def process(self, upload: plugin.Upload) -> dict[str, Any]:
        options = self.options
        size = upload.record.size
        if size > options.max_input_bytes:
            return {"skipped": f"{size} bytes exceed max_input_bytes ({options.max_input_bytes})"}
        spool = _Spool()
        try:
            received = 0
            async for block in upload.read():
                received += len(block)
                if received > options.max_input_bytes:  # the record said less: believe neither
                    spool.abandon()
                    return {"skipped": f"more than max_input_bytes ({options.max_input_bytes})"}
                # Into memory, or the page cache once rolled over: short enough for the loop.
                spool.file.write(block)
            made = await plugin.off_loop(_make, spool, options)
        except BaseException:
            spool.abandon()  # a no-op once the thread has the file
            raise
        if made is None:
            return {"skipped": "not an image"}
        if isinstance(made, _Bomb):
            upload.reject(made.reason)
        async with upload.derive("thumbnail", _CONTENT_TYPES[options.format]) as out:
            await out.write(made.data)
        return {
            "width": made.width,
            "height": made.height,
            "format": options.format,
            "source": list(made.source),
        }


def _make(spool: _Spool, options: ThumbnailOptions) -> _Made | _Bomb | None:
    """On a pool thread: the thumbnail, a bomb found, or None for a non-image."""
    if not spool.take():
        return None  # abandoned: nobody waits for this answer
    with spool.file as file:
        file.seek(0)
        try:
            try:
                image = Image.open(file, formats=DECODERS)
            except UnidentifiedImageError:
                return None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise
            except Exception as e:
                raise ThumbnailError(f"cannot read the image: {_describe(e)}") from e
            with image:
                width, height = image.size
                if width * height > options.max_pixels:
                    return _Bomb(_too_many(width * height, options.max_pixels))
                try:
                    return _render(image, options)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                    raise
                except Exception as e:
                    raise ThumbnailError(
                        f"cannot decode the {image.format} image: {_describe(e)}"
                    ) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own limit, met before ours could look (it checks in `open`) or
            # on something `size` does not show. The warning only arrives as an
            # exception where warnings are errors (tests); elsewhere it is logged and
            # our own check above decides.
            return _Bomb(_pillow_bomb(e, options.max_pixels))


def _render(image: Image.Image, options: ThumbnailOptions) -> _Made:
    """Decode (reduced where the format allows), orient, shrink, clean and encode."""
    width, height = image.size
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT, keeping at least
        # twice the final size for a clean resize (as `thumbnail`'s reducing_gap).
        ratio = 2 * options.max_size / max(width, height)
        if ratio < 1:
            image.draft(None, (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))))
    image.load()
    icc = image.info.get("icc_profile")
    if _orientation(image) in _QUARTER_TURNS:
        width, height = height, width
    ImageOps.exif_transpose(image, in_place=True)
    image = _resizable(image)
    image.thumbnail((options.max_size, options.max_size), Image.Resampling.LANCZOS)
    if isinstance(icc, bytes) and icc:
        image = _to_srgb(image, icc)
    image = image.convert(_target_mode(image))
    # A new image from the pixels alone: nothing of the original's `info`
    # (EXIF, ICC, XMP, text chunks) can reach the encoder.
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    out = io.BytesIO()
    if options.format == "webp":
        clean.save(out, "WEBP", quality=80, method=4)
    else:
        clean.save(out, "PNG", optimize=True)
    return _Made(out.getvalue(), clean.width, clean.height, (width, height))


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation; 1 when there is none or the EXIF block is unreadable."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not cost the thumbnail
        return 1
    return value if isinstance(value, int) else 1


def _resizable(image: Image.Image) -> Image.Image:
    """The image in a mode the resampling filters handle well."""
    if image.mode in ("RGBA", "LA"):
        return image
    if image.has_transparency_data:
        # A palette or a colour key (PNG tRNS) made real alpha first: resampling
        # would blur the one transparent colour into others.
        return image.convert("RGBA")
    if image.mode in ("RGB", "L", "CMYK"):
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit samples (PNG, TIFF): a plain conversion would clip them to white.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    # 1-bit, float and the rest: resampled as what they show.
    return image.convert("RGB")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """The colours in sRGB, so that dropping the profile does not shift them."""
    if image.mode not in ("RGB", "RGBA", "CMYK") or not features.check_module("littlecms2"):
        return image
    from PIL import ImageCms

    try:
        converted = ImageCms.profileToProfile(
            image,
            ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.createProfile("sRGB"),
            outputMode="RGBA" if image.mode == "RGBA" else "RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image  # an unusable profile: the colours as they are
    return converted if converted is not None else image


def _target_mode(image: Image.Image) -> str:
    """RGBA when some pixel is (partly) transparent, else RGB."""
    if image.mode not in ("RGBA", "LA"):
        return "RGB"  # `_resizable` turned every other kind of transparency into alpha
    low, _ = image.getchannel("A").getextrema()
    return "RGBA" if isinstance(low, (int, float)) and low < 255 else "RGB"


def _too_many(pixels: int, limit: int) -> str:
    return f"image of {pixels} pixels exceeds the limit of {limit}"


def _pillow_bomb(error: Exception, max_pixels: int) -> str:
    """Our reason for what Pillow refused, with our limit unless only Pillow's was crossed."""
    found = _PILLOW_BOMB.search(str(error))
    if found is None:
        return f"image exceeds the decompression-bomb limit: {error}"
    pixels, pillow_limit = int(found[1]), int(found[2])
    return _too_many(pixels, max_pixels if pixels > max_pixels else pillow_limit)


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
