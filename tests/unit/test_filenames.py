"""filenames: a client's name becomes a safe base name; a part's type a clean media type."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

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
