"""filenames: a client's name becomes a safe base name; a part's type a clean media type."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.unit.test_streaming import BOUNDARY, receive
from uploadsvc.errors import BadRequest
from uploadsvc.filenames import MAX_NAME_BYTES, safe_filename, safe_media_type


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("a/b/c.txt", "c.txt"),
        ("C:\\x\\y.txt", "y.txt"),
        ("\\\\server\\share\\z.doc", "z.doc"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("mixed/dirs\\and/last.bin", "last.bin"),
    ],
)
def test_directory_parts_are_dropped(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\x00b.txt", "ab.txt"),
        ("evil\r\nSet-Cookie: x.txt", "evilSet-Cookie: x.txt"),
        ("tab\there.txt", "tabhere.txt"),
        ("bell\x07\x1b[31m.txt", "bell[31m.txt"),
        ("del\x7f.txt", "del.txt"),
        ("nel\x85.txt", "nel.txt"),
        ("zero\u200bwidth\u202e.txt", "zerowidth.txt"),  # Cf: invisible and bidi override
    ],
)
def test_nul_and_control_characters_are_removed(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected


def test_surrounding_whitespace_is_stripped() -> None:
    assert safe_filename("  name.txt \t") == "name.txt"


@pytest.mark.parametrize(
    "raw",
    ["", " ", "   ", "\t\n", ".", "..", "...", " .. ", "dir/", "a/..", "C:\\", "\x00", "\u200b"],
)
def test_names_with_nothing_usable_are_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        safe_filename(raw)


@pytest.mark.parametrize("raw", ["résumé.pdf", "文件.txt", "Ωμέγα 😀.png", ".bashrc", "a..b"])
def test_unicode_and_dots_inside_names_are_kept(raw: str) -> None:
    assert safe_filename(raw) == raw


def test_unicode_is_normalised_to_nfc() -> None:
    decomposed = "re\u0301sume\u0301.pdf"
    assert safe_filename(decomposed) == "résumé.pdf"
    assert safe_filename(decomposed) == unicodedata.normalize("NFC", decomposed)


@pytest.mark.parametrize("stem_char", ["a", "é", "文", "😀"])
def test_long_names_are_cut_to_255_bytes_keeping_the_extension(stem_char: str) -> None:
    name = safe_filename(stem_char * 300 + ".tar.gz")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert len(name.encode()) > MAX_NAME_BYTES - len(stem_char.encode())  # no needless loss
    assert name.endswith(".gz")
    assert name.startswith(stem_char * 10)


def test_long_name_without_extension_is_cut() -> None:
    assert safe_filename("x" * 1000) == "x" * MAX_NAME_BYTES


def test_a_very_long_extension_is_not_kept_whole() -> None:
    """Keeping a 200-byte 'extension' would leave almost no name; it is cut like the rest."""
    name = safe_filename("n" * 100 + "." + "e" * 200)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.startswith("n" * 100 + ".")


def test_name_of_exactly_255_bytes_is_untouched() -> None:
    raw = "é" * 125 + "abc.t"
    assert len(raw.encode()) == MAX_NAME_BYTES
    assert safe_filename(raw) == raw


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch).startswith("C")


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=600))
@example("../" * 100 + "é" * 300 + ".txt")
@example("a\x00/" + "\u0301" * 300)
@example("." * 300)
@example(". " * 200)
def test_any_name_is_safe_or_rejected(raw: str) -> None:
    """Whatever a client sends, the stored name is a bounded, printable base name."""
    try:
        name = safe_filename(raw)
    except BadRequest:
        return
    assert name
    assert name not in (".", "..")
    assert not {"/", "\\", "\x00"} & set(name)
    assert not any(_is_control(ch) for ch in name), ascii(name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("text/plain", "text/plain"),
        ("Text/HTML; charset=utf-8", "text/html"),
        ("  image/svg+xml  ", "image/svg+xml"),
        ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        (None, "application/octet-stream"),
        ("", "application/octet-stream"),
        ("text", "application/octet-stream"),
        ("text/", "application/octet-stream"),
        ("/plain", "application/octet-stream"),
        ("text/plain/x", "application/octet-stream"),
        ("text/pl ain", "application/octet-stream"),
        ("text/plain\r\nX-Evil: 1", "application/octet-stream"),
        ('text/"quoted"', "application/octet-stream"),
        ("tëxt/plain", "application/octet-stream"),
    ],
)
def test_safe_media_type(raw: str | None, expected: str) -> None:
    assert safe_media_type(raw) == expected


# -- properties: sanitising never yields a path ------------------------------------------

#: What path-shaped hostile names are made of: separators, dots, their lookalikes
#: (U+2215, U+FF0F, U+29F8, U+2044), drive and UNC pieces, NUL, controls, bidi
#: overrides, combining marks, whitespace and letters from several scripts.
_HOSTILE = [
    *"/\\.:~ \t\x00\x01\x1b\x7f\u0085\u2028\u202e\u200b\ufeff\u0301aZé漢",
    "\u2215",
    "\uff0f",
    "\u29f8",
    "\u2044",
    "..",
    "../",
    "..\\",
    "C:",
    "\\\\",
    "%2e",
    "%2f",
    "\U0001f600",
]


def assert_not_a_path(name: str) -> None:
    assert name not in ("", ".", "..")
    assert not {"/", "\\", "\x00"} & set(name), ascii(name)
    assert not any(_is_control(ch) for ch in name), ascii(name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


@given(st.lists(st.sampled_from(_HOSTILE), max_size=200).map("".join))
@example("....//....//etc/passwd")
@example("..\u2215..\u2215etc\u2215passwd")
@example("\\\\server\\share\\x")
@example("C:\\Windows\\x")
@example("\u202e" + "." * 2)
@example(" " + ".." + "\u200b")
def test_path_shaped_names_never_yield_a_path(raw: str) -> None:
    try:
        name = safe_filename(raw)
    except BadRequest:
        return
    assert_not_a_path(name)
    # The name is part of the last segment: nothing before a separator survives.
    last = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    assert name.encode()[:64].decode(errors="ignore") in "".join(
        ch for ch in last if not _is_control(ch)
    )


@given(st.text(max_size=400))
@example("\ud800../x")  # a lone surrogate (a str can hold one; UTF-8 cannot)
@example("a" * 254 + " b")
def test_any_text_at_all_never_yields_a_path(raw: str) -> None:
    """Any code point: surrogates, private use, unassigned, and anything else."""
    try:
        name = safe_filename(raw)
    except BadRequest:
        return
    assert_not_a_path(name)
    name.encode("utf-8")  # no surrogate survives


@given(st.text(max_size=300))
@example("../../etc/passwd")
@example("\x00")
@example("\r\nContent-Type: text/html")
def test_any_name_sent_as_filename_star_is_safe_or_a_bad_request(raw: str) -> None:
    """Through the streaming parser: `filename*` percent-decodes to anything at all."""
    header = (
        f"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''{quote(raw, safe='')}"
    )
    body = f"--{BOUNDARY}\r\n{header}\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    try:
        received = receive([body])
    except BadRequest:
        return
    assert_not_a_path(received.filename)


@given(st.binary(max_size=300).filter(lambda b: not set(b) & set(b'\r\n"\\')))
@example(b"../../\xff\xfe/x")
@example(b"\xc0\xaf\xc0\xae")  # overlong UTF-8 for "/" and "."
@example(b"\xe2\x88\x95etc\xe2\x88\x95passwd")  # U+2215 as raw UTF-8
def test_any_raw_bytes_in_filename_are_safe_or_a_bad_request(raw: bytes) -> None:
    """Through the streaming parser: raw bytes in a quoted `filename=`, as browsers send."""
    header = b'Content-Disposition: form-data; name="file"; filename="' + raw + b'"'
    body = f"--{BOUNDARY}\r\n".encode() + header + f"\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    try:
        received = receive([body])
    except BadRequest:
        return
    assert_not_a_path(received.filename)
