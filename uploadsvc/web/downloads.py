"""Serving stored bytes: byte ranges, validators and safe headers.

Pure functions of the request headers and the record, so they are tested
without a server. The bytes are always sent as an attachment with
`nosniff`: an uploaded HTML file must never render in our origin.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from urllib.parse import quote

from ..errors import RangeNotSatisfiable
from ..models import UploadRecord

_DIGITS = re.compile(r"[0-9]*")


def etag(record: UploadRecord) -> str:
    """A strong validator: the bytes' sha256."""
    return f'"{record.sha256}"'


def not_modified(if_none_match: str | None, record: UploadRecord) -> bool:
    """True when `If-None-Match` names our ETag (weakly compared, as RFC 9110 asks) or is `*`."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag(record) in tags


def byte_range(
    header: str | None, if_range: str | None, record: UploadRecord
) -> tuple[int, int] | None:
    """`(start, end)` (end exclusive) asked for by `Range`, or None for the whole object.

    Follows RFC 9110: a malformed, multi-range or non-bytes `Range` is ignored
    (the whole object is sent), as is one whose `If-Range` no longer matches;
    a well-formed range outside the object is 416.
    """
    size = record.size
    if not header or (if_range is not None and if_range.strip() != etag(record)):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not _DIGITS.fullmatch(first) or not _DIGITS.fullmatch(last):
        return None  # int() would take "1_0", "+5", " 5" or other scripts' digits
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                raise RangeNotSatisfiable(f"empty suffix range {header!r}", size)
            start, end = max(0, size - suffix), size
        else:
            start = int(first)
            end = size
            if last != "":
                if int(last) < start:
                    return None
                end = min(int(last) + 1, size)
    except ValueError:
        return None
    if start < 0 or start >= size:
        raise RangeNotSatisfiable(f"range {header!r} is outside the {size} bytes stored", size)
    return start, end


def download_headers(record: UploadRecord) -> dict[str, str]:
    return {
        **safe_headers(record.filename),
        "ETag": etag(record),
        "Accept-Ranges": "bytes",
    }


def derived_filename(record: UploadRecord, name: str, content_type: str) -> str:
    """`photo.jpg` and its `thumbnail` (image/webp) -> `photo.jpg.thumbnail.webp`."""
    return f"{record.filename}.{name}{mimetypes.guess_extension(content_type) or ''}"


def ascii_fallback(filename: str) -> str:
    """The `filename=` a client without RFC 8187 support saves: `résumé.txt` ->
    `resume.txt` (accents dropped, not `r?sum?.txt`, which Windows refuses);
    what has no ASCII form, and what Windows forbids in names, becomes `_`."""
    decomposed = unicodedata.normalize("NFKD", filename)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c if " " <= c <= "~" and c not in _NOT_ON_WINDOWS else "_" for c in plain)


_NOT_ON_WINDOWS = frozenset('<>:"/\\|?*')


def safe_headers(filename: str) -> dict[str, str]:
    """What every file we serve carries: an attachment that no browser runs as ours."""
    ascii_name = ascii_fallback(filename)
    return {
        "Content-Disposition": (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
        ),
        "X-Content-Type-Options": "nosniff",
        # Should a browser render it anyway, no script runs in our origin.
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "private, no-cache",
    }
