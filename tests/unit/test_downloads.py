"""web.downloads: RFC 9110 single byte ranges, If-Range, and the safe download headers."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest

from uploadsvc.errors import RangeNotSatisfiable
from uploadsvc.models import Status, UploadRecord
from uploadsvc.web.downloads import ascii_fallback, byte_range, download_headers, etag

SHA = hashlib.sha256(b"x" * 100).hexdigest()


def make_record(size: int = 100, filename: str = "report.pdf") -> UploadRecord:
    return UploadRecord(
        id="0" * 28,
        filename=filename,
        size=size,
        content_type="application/pdf",
        sha256=SHA,
        status=Status.completed,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        url=f"/uploads/{'0' * 28}/content",
    )


RECORD = make_record()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", (0, 10)),
        ("bytes=0-0", (0, 1)),
        ("bytes=0-99", (0, 100)),
        ("bytes=90-", (90, 100)),
        ("bytes=99-", (99, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-100", (0, 100)),
        ("bytes=-1000", (0, 100)),
        ("bytes=95-1000", (95, 100)),
        ("Bytes = 3-4", (3, 5)),
        ("bytes= 3-4 ", (3, 5)),
    ],
)
def test_satisfiable_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, None, RECORD) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-6",  # multi-range: we send the whole object, never multipart/byteranges
        "bytes=0-1, 5-6",
        "items=0-1",
        "bytes=abc",
        "bytes=a-b",
        "bytes=1-x",
        "bytes=-",
        "bytes=5-2",
        "bytes",
        "=0-1",
        "bytes=1_0-20",  # int() takes these: RFC 9110 allows ASCII digits only
        "bytes=+5-10",
        "bytes=5-+10",
        "bytes=-+5",
        "bytes=\u0665-10",  # an Arabic-Indic five
    ],
)
def test_malformed_or_unsupported_ranges_are_ignored(header: str) -> None:
    """RFC 9110 14.2: a Range the server does not understand is ignored, not an error."""
    assert byte_range(header, None, RECORD) is None


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=1000-", "bytes=-0"])
def test_unsatisfiable_ranges_are_416_with_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        byte_range(header, None, RECORD)
    assert caught.value.size == 100
    assert caught.value.status == 416


def test_any_range_of_an_empty_object_is_unsatisfiable() -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range("bytes=0-", None, make_record(size=0))


def test_if_range_matching_the_etag_keeps_the_range() -> None:
    assert byte_range("bytes=0-9", etag(RECORD), RECORD) == (0, 10)
    assert byte_range("bytes=0-9", f" {etag(RECORD)} ", RECORD) == (0, 10)


@pytest.mark.parametrize(
    "if_range",
    [
        '"' + "0" * 64 + '"',  # another version of the bytes
        SHA,  # unquoted: not an entity tag
        f'W/"{SHA}"',  # weak validators never match If-Range (strong comparison)
        "Wed, 21 Oct 2015 07:28:00 GMT",  # we send no Last-Modified, so a date cannot match
        "",
    ],
)
def test_if_range_not_matching_sends_the_whole_object(if_range: str) -> None:
    """A stale If-Range means the client's partial copy is of other bytes: send all."""
    assert byte_range("bytes=0-9", if_range, RECORD) is None


def test_if_range_mismatch_wins_over_an_unsatisfiable_range() -> None:
    assert byte_range("bytes=500-", '"other"', RECORD) is None


def test_etag_is_the_quoted_sha256() -> None:
    assert etag(RECORD) == f'"{SHA}"'


def test_download_headers_for_a_plain_name() -> None:
    headers = download_headers(RECORD)
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    )
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["ETag"] == f'"{SHA}"'
    assert headers["Accept-Ranges"] == "bytes"


def test_content_disposition_for_a_unicode_name_with_quotes() -> None:
    """The header stays ASCII (latin-1 safe), the quoted fallback cannot be broken out of,
    and filename* carries the exact name (RFC 6266 / RFC 8187)."""
    name = 'résumé "q".pdf'
    value = download_headers(make_record(filename=name))["Content-Disposition"]
    assert value.isascii()
    match = re.fullmatch(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'(\S+)', value)
    assert match, value
    fallback, encoded = match.groups()
    assert fallback == "resume _q_.pdf"  # accents dropped, quotes replaced
    assert encoded == "r%C3%A9sum%C3%A9%20%22q%22.pdf"
    assert unquote(encoded, encoding="utf-8") == name


@pytest.mark.parametrize("name", ["a\\b.txt", 'x";y=".txt', "semi;colon.txt", "文件.txt"])
def test_content_disposition_fallback_is_a_single_clean_quoted_string(name: str) -> None:
    value = download_headers(make_record(filename=name))["Content-Disposition"]
    assert value.isascii()
    match = re.fullmatch(
        r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'([^\s;,"]+)', value
    )
    assert match, value
    assert unquote(match.group(2)) == name


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("résumé.txt", "resume.txt"),
        ("Ångström ﬁle.pdf", "Angstrom file.pdf"),
        ("文件.txt", "__.txt"),
        ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
    ],
)
def test_the_ascii_fallback_is_a_name_every_system_can_save(name: str, fallback: str) -> None:
    """What `curl -OJ` and old clients save: readable, and legal on Windows."""
    assert ascii_fallback(name) == fallback
