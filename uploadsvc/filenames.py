"""Reducing a client's file name to a safe base name for the record.

The name is only ever shown and offered back in `Content-Disposition`; it
never becomes a storage key. Still, it must not carry directory parts (a
later consumer may join it to a path), NUL or control characters (headers,
logs, terminals), or be unboundedly long.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import BadRequest

MAX_NAME_BYTES = 255

_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def safe_filename(raw: str) -> str:
    """The base name of `raw` without control characters; `BadRequest` if nothing is left."""
    name = unicodedata.normalize("NFC", raw)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip()
    if set(name) <= {"."}:  # empty, ".", "..": names of directories, not files
        raise BadRequest(f"file name {raw!r} has no usable characters")
    return _truncate_utf8(name, MAX_NAME_BYTES)


def safe_media_type(raw: str | None) -> str:
    """The part's declared media type if well formed, else application/octet-stream."""
    value = (raw or "").split(";", 1)[0].strip().lower()
    return value if _MEDIA_TYPE.match(value) else "application/octet-stream"


def _truncate_utf8(name: str, limit: int) -> str:
    """Cut to `limit` UTF-8 bytes, keeping the extension where possible."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext, dot = name, "", ""
    keep = limit - len((dot + ext).encode())
    stem = stem.encode()[:keep].decode(errors="ignore")
    return stem + dot + ext
