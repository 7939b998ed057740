"""mimetype: the real type of an upload, told from its bytes, and optionally an allow list.

The client's `Content-Type` is whatever the client says; a file named
`photo.jpg` sent as `image/jpeg` may be an executable. This plugin looks at
the bytes and records what it found beside what was claimed::

    "results": {"mimetype": {"detected": "image/png", "claimed": "text/plain", "matches": false}}

With `allow`, an upload whose detected type matches none of the patterns is
rejected (422 `rejected` on the blocking path; `failed`, `rejected: true`,
and its bytes removed, on both)::

    [plugins.mimetype]
    allow = ["image/*", "application/pdf"]   # fnmatch patterns; empty: allow all

Detection uses puremagic rather than filetype: puremagic is maintained
(filetype's last release is from 2022) and its signature table is far larger
(about 1,900 signatures, against under a hundred types in filetype); both are
pure Python, so there is no libmagic to install. What this plugin adds on top of it:

- Only the head is read (`HEAD_BYTES`, a ranged read), so a 1 GiB upload costs
  40 KiB, not 1 GiB. puremagic also matches signatures at the *end* of a file;
  when the head is not the whole file its end is not the file's end, so those
  matches are dropped rather than trusted.
- puremagic gives several candidates, best first, and some have no MIME type
  (ELF's own entry, for one). Only those as strong as the best (or a shorter
  form of the same signature) count: walking further down would let a weak,
  unrelated entry speak (for an ELF file the next candidate with a type is
  "AppImage", three bytes at offset 1).
- One signature often fits several types equally: `PK\\x03\\x04` is zip, docx,
  xlsx, jar, odt and more; puremagic's first is docx, so every zip would be a
  Word document. The bytes do not decide, so the claimed type does when it is
  one of them (a docx sent as a docx stays a docx; the claim never picks a type
  the bytes do not allow); otherwise the container's own type
  (`CONTAINERS`: `application/zip`, `application/ogg`, ...) is the answer.
- Executables come out as executables: puremagic names ELF and Mach-O with no
  type and a bare DOS `MZ` header only `application/octet-stream`, which an
  allow list could not tell from any other binary. They become
  `application/x-executable`, `application/x-mach-binary` and
  `application/x-dosexec` (libmagic's names). A PE file with the usual header
  stays puremagic's `application/vnd.microsoft.portable-executable`.
- Nothing recognised: `text/plain` if the head is UTF-8 without NUL bytes (text
  has no magic number), else `application/octet-stream`. An empty upload is
  `application/x-empty`: it is neither text nor anything an allow list means.
- A few aliases are folded into one common name (`image/x-ms-bmp` ->
  `image/bmp`, `image/jpg` -> `image/jpeg`), in `detected` and in the claimed
  type `matches` compares, so that one spelling in `allow` is enough.

A limit to know: a signature can be as short as two bytes, so a text file that
starts with `BM` reads as a bitmap. The check stops mistakes and casual abuse;
it does not prove the file is well formed (only decoding it does that).

puremagic is called on the event loop, not through `plugin.off_loop`: it
compares its fixed table against at most `HEAD_BYTES`, about 0.25 ms whatever
the upload's size, less than the hop to a thread costs, and the bounded pool
would make this cheap check queue behind other plugins' heavy work.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Annotated, Any

import puremagic
from pydantic import AfterValidator, ConfigDict, Field

from uploadsvc import plugin

#: How much of the upload is read. puremagic's deepest header signature ends at
#: byte 36,870 (ISO 9660's `CD001` at 32,769); reading less would miss those.
HEAD_BYTES = 40 * 1024

TEXT = "text/plain"
BINARY = "application/octet-stream"
EMPTY = "application/x-empty"

#: Signatures puremagic names without a type (or only as `application/octet-stream`).
EXECUTABLES = {
    b"\x7fELF": "application/x-executable",
    b"MZ": "application/x-dosexec",
    b"\xfe\xed\xfa\xce": "application/x-mach-binary",
    b"\xfe\xed\xfa\xcf": "application/x-mach-binary",
    b"\xce\xfa\xed\xfe": "application/x-mach-binary",
    b"\xcf\xfa\xed\xfe": "application/x-mach-binary",
}

#: Types of containers that several formats share a signature with, preferred when
#: the bytes fit them all equally (a zip, not the docx a zip might be).
CONTAINERS = (
    "application/zip",
    "application/gzip",
    "application/ogg",
    "application/x-iff",
    "application/x-matroska",
    "application/x-archive",
    "application/x-rar-compressed",
    "application/zstd",
    "application/x-lz4",
    "application/xml",
    "application/postscript",
    "video/mpeg",
)

#: Other spellings of one type, folded into the common one.
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "application/x-zip-compressed": "application/zip",
    "application/x-gzip": "application/gzip",
    "application/x-pdf": "application/pdf",
    "text/xml": "application/xml",
    "audio/mp3": "audio/mpeg",
    "audio/wave": "audio/wav",
    "audio/x-wav": "audio/wav",
    "video/avi": "video/x-msvideo",
    "video/msvideo": "video/x-msvideo",
    "application/x-msdownload": "application/vnd.microsoft.portable-executable",
}


def _type_pattern(pattern: str) -> str:
    """A pattern must look like a type: `image` alone would silently match nothing."""
    pattern = pattern.strip().lower()
    kind, slash, subtype = pattern.partition("/")
    if not (kind and slash and subtype):
        raise ValueError(
            f"{pattern!r} is not a type pattern: write type/subtype, e.g. 'image/*' "
            "or 'application/pdf'"
        )
    return pattern


class MimetypeOptions(plugin.Options):
    """`[plugins.mimetype]`; strict, so `allow = "image/*"` (a string) is an error."""

    model_config = ConfigDict(strict=True)

    #: fnmatch patterns of the detected types accepted; empty: every type.
    allow: list[Annotated[str, AfterValidator(_type_pattern)]] = Field(default_factory=list)


class Mimetype(plugin.Processor[MimetypeOptions]):
    """Detect the type from the head of the bytes; reject what `allow` does not name."""

    Options = MimetypeOptions

    async def process(self, upload: plugin.Upload) -> dict[str, Any]:
        record = upload.record
        # A bounded range, read to its end: nothing left half-read.
        head = b"".join([block async for block in upload.read(0, HEAD_BYTES)])
        claimed = record.content_type
        detected = detect(head, whole=len(head) >= record.size, claimed=claimed)
        allow = self.options.allow
        if allow and not any(fnmatchcase(detected, pattern) for pattern in allow):
            upload.reject(f"type {detected} is not allowed (allowed: {', '.join(allow)})")
        return {"detected": detected, "claimed": claimed, "matches": canonical(claimed) == detected}


def canonical(content_type: str) -> str:
    """`Image/JPG; q=1` -> `image/jpeg`: no parameters, lowercase, aliases folded."""
    bare = content_type.partition(";")[0].strip().lower()
    return ALIASES.get(bare, bare)


def detect(head: bytes, *, whole: bool, claimed: str = "") -> str:
    """The type of a file that starts with `head` (`whole`: and ends with it).

    `claimed` only chooses among types the bytes fit equally well.
    """
    if not head:
        return EMPTY
    try:
        found = puremagic.magic_string(head)
    except puremagic.PureError:  # no signature matched
        found = []
    if not whole:  # matched against the end of the head, not of the file
        found = [m for m in found if m.offset >= 0]
    best = _best(found, canonical(claimed))
    if best is None:
        return TEXT if _is_text(head, whole) else BINARY
    return best


def _best(found: Sequence[puremagic.PureMagicWithConfidence], claimed: str) -> str | None:
    """The type puremagic's candidates (best first) point at; None if none names one."""
    if not found:
        return None
    top = found[0]
    executable = EXECUTABLES.get(top.byte_match) if top.offset == 0 else None
    if executable is not None:
        return executable
    ties = _types(m for m in found if m.confidence == top.confidence)
    # A shorter form of the same signature (JPEG's FF D8 under FF D8 FF): a fallback.
    shorter = _types(
        m
        for m in found
        if m.confidence != top.confidence
        and m.offset == top.offset
        and bytes(top.byte_match).startswith(m.byte_match)
    )
    # `application/octet-stream` says nothing: it never wins over a real type, even
    # claimed (a PE file sent as octet-stream is still an executable).
    if claimed != BINARY and claimed in ties:
        return claimed
    for types in (ties, shorter):
        specific = [t for t in types if t != BINARY]
        chosen = [t for t in CONTAINERS if t in specific] or specific
        if chosen:
            return chosen[0]
    return BINARY if BINARY in ties + shorter else None


def _types(matches: Iterable[puremagic.PureMagicWithConfidence]) -> list[str]:
    """The distinct types `matches` name, in order, aliases folded."""
    types: list[str] = []
    for m in matches:
        if m.mime_type and canonical(m.mime_type) not in types:
            types.append(canonical(m.mime_type))
    return types


def _is_text(head: bytes, whole: bool) -> bool:
    """UTF-8 without NUL; a head cut inside a multi-byte character still counts."""
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError:
        return False
    return True
