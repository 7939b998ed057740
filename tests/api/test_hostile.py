"""The hostile battery: what an attacker sends, over a real uvicorn (httptools).

Every case asserts the contract's status and `code` (API.md, README "Where the
contract is silent"), that nothing is left behind (no object, no record, no
part file, nothing staged, nothing listed), and that the server still answers
`/healthz` at once. Accepted hostile names are checked in the record (a safe
base name), kept out of the storage keys, and deleted without a trace.

Unit-level twins live in tests/unit/test_streaming.py (overlong boundary,
preamble, `filename*`, random cuts) and tests/unit/test_filenames.py (names);
the plain oversize and disconnect cases at the default limit in
tests/api/test_failures.py. This module runs them end to end, with sockets.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Backend, Live, make_settings
from tests.rawhttp import BOUNDARY, MULTIPART_TYPE, multipart, post
from uploadsvc.filenames import MAX_NAME_BYTES

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

LIMIT = 10 << 20
UPLOAD = "/upload-blocking/"
#: How long /healthz may take while (or right after) the server is attacked.
HEALTHZ_WITHIN = 1.0


@pytest.fixture
def live(live_factory: Callable[..., Live], backend: Backend, tmp_path: Path) -> Live:
    return live_factory(make_settings(backend, tmp_path, max_upload_bytes=LIMIT))


# -- helpers --------------------------------------------------------------------------


def assert_healthy(live: Live) -> None:
    started = time.monotonic()
    response = live.http.get("/healthz", timeout=HEALTHZ_WITHIN * 5)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < HEALTHZ_WITHIN, f"/healthz took {elapsed:.2f} s"


def assert_nothing_left(live: Live) -> None:
    assert live.backend.leftovers() == []
    assert not live.staging.exists() or list(live.staging.iterdir()) == []
    assert live.http.get("/uploads").json()["items"] == []
    assert_healthy(live)


def error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return str(code) if code is not None else None


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    answers: list[Answer] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (rather than going quiet)


def parse_answers(data: bytes) -> list[Answer]:
    """Every HTTP/1.1 response in `data`, in order (Content-Length or chunked bodies)."""
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"unparsable bytes from the server: {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        answers.append(Answer(status, headers, body))
    return answers


def exchange(live: Live, raw: bytes, *, quiet: float = 1.5, half_close: bool = False) -> Exchange:
    """Send `raw` as is, then read everything the server answers until it closes the
    connection or stays quiet for `quiet` seconds."""
    url = urlsplit(live.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    received = b""
    closed = False
    try:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            if not select.select([sock], [], [], quiet)[0]:
                break
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
    finally:
        sock.close()
    return Exchange(parse_answers(received), closed)


def form(
    name_param: str,
    data: bytes = b"hostile but harmless\n",
    *,
    boundary: str = BOUNDARY,
    part_headers: bytes = b"",
) -> bytes:
    """A multipart body whose `file` part's disposition carries `name_param` verbatim."""
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; {name_param}\r\n'.encode()
        + part_headers
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def upload(live: Live, body: bytes, content_type: str = MULTIPART_TYPE) -> tuple[int, Any]:
    response = live.http.post(UPLOAD, content=body, headers={"Content-Type": content_type})
    return response.status_code, response.json()


def request_bytes(
    body: bytes, headers: list[tuple[str, str]], *, path: str = UPLOAD, close: bool = False
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def chunked(body: bytes, size: int = 1000) -> bytes:
    out = b"".join(
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


# -- names ------------------------------------------------------------------------------

#: (id, the disposition's name parameter(s), the base name expected, or None for a 400).
#: Raw (non-ASCII) names are sent as UTF-8 bytes, as browsers do.
NAMES: list[tuple[str, str, str | None]] = [
    ("dotdot-slash", 'filename="../../etc/passwd"', "passwd"),
    ("dotdot-backslash", 'filename="..\\..\\win.ini"', "win.ini"),
    ("percent-encoded-plain", 'filename="%2e%2e%2fetc%2fpasswd"', "%2e%2e%2fetc%2fpasswd"),
    ("percent-encoded-star", "filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),
    ("percent-backslash-star", "filename*=UTF-8''..%5C..%5Cwin.ini", "win.ini"),
    ("dots-double-slash", 'filename="....//....//etc/passwd"', "passwd"),
    ("absolute", 'filename="/etc/passwd"', "passwd"),
    ("drive", 'filename="C:\\Windows\\x"', "x"),
    ("unc", 'filename="\\\\server\\share\\x"', "x"),
    ("nul", 'filename="evil\x00.txt"', "evil.txt"),
    ("nul-star", "filename*=UTF-8''evil%00.txt%00", "evil.txt"),
    ("controls", 'filename="a\x01\x07\x1b[31mb\x7f.txt"', "a[31mb.txt"),
    ("crlf-star", "filename*=UTF-8''a%0D%0AX-Injected%3A%201.txt", "aX-Injected: 1.txt"),
    ("rtl-override", 'filename="invoice\u202egpj.exe"', "invoicegpj.exe"),
    ("nfd", 'filename="re\u0301sume\u0301.txt"', "r\u00e9sum\u00e9.txt"),
    ("nfd-star", "filename*=UTF-8''re%CC%81sume%CC%81.txt", "r\u00e9sum\u00e9.txt"),
    (
        "lookalike-2215",
        'filename="..\u2215..\u2215etc\u2215passwd"',
        "..\u2215..\u2215etc\u2215passwd",
    ),
    (
        "lookalike-ff0f",
        'filename="..\uff0f..\uff0fetc\uff0fpasswd"',
        "..\uff0f..\uff0fetc\uff0fpasswd",
    ),
    ("lookalike-29f8", 'filename="..\u29f8..\u29f8win.ini"', "..\u29f8..\u29f8win.ini"),
    ("empty", 'filename=""', None),
    ("empty-star", "filename*=UTF-8''", None),
    ("dot", 'filename="."', None),
    ("dotdot", 'filename=".."', None),
    ("only-dots", 'filename="....."', None),
    ("dotdot-slash-only", 'filename="../.."', None),
    ("trailing-slash", 'filename="etc/"', None),
    ("only-controls", 'filename="\x01\x02\u202e"', None),
    ("star-wins", "filename=\"../safe.txt\"; filename*=UTF-8''%2E%2E%2Fwins.txt", "wins.txt"),
]


def assert_safe_name(name: str) -> None:
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name
    assert not any(unicodedata.category(ch).startswith("C") for ch in name), ascii(name)
    assert len(name.encode()) <= MAX_NAME_BYTES


def assert_stored_safely(live: Live, status: int, record: Any, expected: str | None) -> None:
    """A 201 with the expected safe base name, its key not made of the name; deleted
    without a trace."""
    assert status == 201, record
    name = record["filename"]
    assert_safe_name(name)
    if expected is not None:
        assert name == expected
    keys = live.backend.contents()
    assert keys, "nothing stored"
    for key in keys:
        assert ".." not in key.split("/"), key
        if len(name) >= 6:  # a short name may occur in a key by chance
            assert name not in key, key
    content = live.http.get(f"/uploads/{record['id']}/content")
    assert content.status_code == 200
    assert content.headers["content-disposition"].startswith("attachment;")
    assert live.http.delete(f"/uploads/{record['id']}").status_code == 204
    assert_nothing_left(live)


def assert_refused(live: Live, status: int, body: Any, *codes: tuple[int, str]) -> None:
    codes = codes or ((400, "bad_request"),)
    assert (status, body.get("code") if isinstance(body, dict) else None) in codes, body
    assert_nothing_left(live)


@pytest.mark.parametrize(("param", "expected"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_hostile_names_are_stored_under_a_safe_base_name_or_refused(
    live: Live, param: str, expected: str | None
) -> None:
    status, body = upload(live, form(param))
    if expected is None:
        assert_refused(live, status, body)
    else:
        assert_stored_safely(live, status, body, expected)


@pytest.mark.parametrize(
    "param",
    [
        'filename="' + "a" * 10_000 + '.txt"',
        "filename*=UTF-8''" + "%C3%A9" * 10_000 + ".txt",
        'filename="' + "../" * 3_000 + 'x.txt"',
    ],
    ids=["10000-chars", "10000-chars-star", "3000-dotdots"],
)
def test_ten_thousand_character_names_are_cut_or_refused(live: Live, param: str) -> None:
    """A part's header block is bounded (python-multipart, about 4 KiB), so a name this
    long may be refused as a too-large part header; if accepted, it is cut to 255 bytes."""
    status, body = upload(live, form(param))
    if status == 201:
        assert_stored_safely(live, status, body, None)
    else:
        assert_refused(live, status, body, (400, "bad_request"), (431, "headers_too_large"))


# -- multipart abuse --------------------------------------------------------------------


def many_empty_parts(count: int) -> bytes:
    """`count` empty fields, then the file: 51 bytes a part, as FACTS measured."""
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    return part * count + form('filename="after.bin"', b"the file after them", boundary="b")


MULTIPART_REFUSED: list[tuple[str, str, Callable[[], bytes]]] = [
    ("no-boundary", "multipart/form-data", lambda: multipart(b"data")),
    ("empty-boundary", "multipart/form-data; boundary=", lambda: multipart(b"data")),
    ("wrong-boundary", "multipart/form-data; boundary=not-the-one", lambda: multipart(b"data")),
    (
        "overlong-boundary",
        "multipart/form-data; boundary=" + "b" * 300,
        lambda: form('filename="x"', boundary="b" * 300),
    ),
    ("truncated", MULTIPART_TYPE, lambda: multipart(b"data" * 1000, closing=False)),
    ("cut-mid-file", MULTIPART_TYPE, lambda: multipart(b"data" * 1000)[:-2000]),
    ("empty-body", MULTIPART_TYPE, lambda: b""),
    ("garbage", MULTIPART_TYPE, lambda: b"\x00\xff" * 5000),
    (
        "two-file-fields",
        MULTIPART_TYPE,
        lambda: (
            multipart(b"one", closing=False)
            + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="two"\r\n\r\ntwo\r\n--{BOUNDARY}--\r\n'.encode()
        ),
    ),
    (
        "no-file-field",
        MULTIPART_TYPE,
        lambda: multipart(b"x").replace(b'name="file"', b'name="other"'),
    ),
    ("file-without-filename", MULTIPART_TYPE, lambda: form('x="y"')),
    ("unknown-charset-star", MULTIPART_TYPE, lambda: form("filename*=klingon''x.txt")),
    ("preamble-without-end", MULTIPART_TYPE, lambda: b"x" * (80 << 10) + multipart(b"late")),
    (
        "preamble-over-64KiB",
        MULTIPART_TYPE,
        lambda: b"x" * (200 << 10) + b"\r\n" + multipart(b"late"),
    ),
]


@pytest.mark.parametrize(
    ("content_type", "make_body"),
    [m[1:] for m in MULTIPART_REFUSED],
    ids=[m[0] for m in MULTIPART_REFUSED],
)
def test_malformed_multipart_is_a_bad_request(
    live: Live, content_type: str, make_body: Callable[[], bytes]
) -> None:
    status, body = upload(live, make_body(), content_type)
    assert_refused(live, status, body)


def test_a_boundary_of_71_characters_is_refused_or_parsed_exactly(live: Live) -> None:
    """RFC 2046 caps boundaries at 70 characters; one over is either refused or honoured."""
    boundary = "b" * 71
    status, body = upload(
        live,
        form('filename="x.bin"', b"exact", boundary=boundary),
        f"multipart/form-data; boundary={boundary}",
    )
    if status == 201:
        assert body["size"] == 5
        assert_stored_safely(live, status, body, "x.bin")
    else:
        assert_refused(live, status, body)


@pytest.mark.parametrize("size", [1 << 20, 8 << 20], ids=["1MiB", "8MiB"])
def test_huge_part_header_lines_are_refused_early(live: Live, size: int) -> None:
    body = form('filename="x.bin"', part_headers=b"X-Junk: " + b"j" * size + b"\r\n")
    pieces = (body[i : i + (256 << 10)] for i in range(0, len(body), 256 << 10))
    started = time.monotonic()
    response = post(
        live.url + UPLOAD,
        pieces,
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
    )
    assert time.monotonic() - started < 5
    assert (response.status, error_code(response.body)) in {
        (400, "bad_request"),
        (431, "headers_too_large"),
    }, response
    assert_nothing_left(live)


def test_a_preamble_is_accepted(live: Live) -> None:
    body = b"This is a multi-part message in MIME format.\r\n\r\n" + multipart(
        b"after the preamble"
    )
    status, record = upload(live, body)
    assert record["size"] == len(b"after the preamble")
    assert_stored_safely(live, status, record, "data.bin")


def test_filename_star_alone_is_accepted_and_decoded(live: Live) -> None:
    status, record = upload(live, form("filename*=UTF-8''r%C3%A9sum%C3%A9%20%E2%82%AC.txt"))
    assert_stored_safely(live, status, record, "r\u00e9sum\u00e9 \u20ac.txt")


def test_170000_empty_parts_are_refused_while_the_server_keeps_answering(live: Live) -> None:
    """FACTS: python-multipart walks 170,000 empty parts (9.5 MB) for ~1.7 s of CPU on
    the loop. The contract: too many parts is a 400 (or 431), and /healthz answers
    within a second meanwhile. Needs a cap on the number of parts (the limits work)."""
    body = many_empty_parts(170_000)
    assert len(body) < LIMIT
    result: dict[str, Any] = {}

    def send() -> None:
        started = time.monotonic()
        pieces = (body[i : i + (64 << 10)] for i in range(0, len(body), 64 << 10))
        result["response"] = post(
            live.url + UPLOAD,
            pieces,
            {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))},
        )
        result["seconds"] = time.monotonic() - started

    sender = threading.Thread(target=send)
    sender.start()
    slowest = 0.0
    while sender.is_alive():
        started = time.monotonic()
        assert live.http.get("/healthz", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    sender.join()
    response = result["response"]
    outcome = (response.status, error_code(response.body))
    report = (
        f"{outcome[0]} {response.body[:200]!r} after {result['seconds']:.2f} s; "
        f"the slowest /healthz meanwhile took {slowest:.2f} s"
    )
    assert outcome in {(400, "bad_request"), (431, "headers_too_large")}, report
    assert slowest < HEALTHZ_WITHIN, report
    assert_nothing_left(live)


# -- lying lengths, oversize --------------------------------------------------------


def test_content_length_shorter_than_the_body_cuts_it(live: Live) -> None:
    """The server reads `Content-Length` bytes: the closing boundary falls outside, so
    the upload is truncated (400); the rest is not a request of its own."""
    body = multipart(b"d" * 5000)
    raw = request_bytes(
        body,
        [("Content-Type", MULTIPART_TYPE), ("Content-Length", str(len(body) - 100))],
        close=True,
    )
    result = exchange(live, raw)
    assert [(a.status, error_code(a.body)) for a in result.answers] == [(400, "bad_request")]
    assert_nothing_left(live)


def test_content_length_shorter_than_the_body_with_only_an_epilogue_cut(live: Live) -> None:
    """A cut that only loses what follows the closing boundary loses nothing of the file."""
    body = multipart(b"d" * 5000) + b"epilogue " * 20
    raw = request_bytes(
        body,
        [("Content-Type", MULTIPART_TYPE), ("Content-Length", str(len(body) - 50))],
        close=True,
    )
    result = exchange(live, raw)
    assert [a.status for a in result.answers] == [201]
    record = json.loads(result.answers[0].body)
    assert record["size"] == 5000
    assert_stored_safely(live, 201, record, "data.bin")


def test_content_length_longer_than_the_body_then_close(live: Live) -> None:
    """The client promises more than it sends and half-closes: a 400 if any answer
    reaches it at all, and nothing stored."""
    body = multipart(b"d" * 5000)
    raw = request_bytes(
        body, [("Content-Type", MULTIPART_TYPE), ("Content-Length", str(len(body) + 1000))]
    )
    result = exchange(live, raw, half_close=True, quiet=5)
    assert result.closed
    assert [(a.status, error_code(a.body)) for a in result.answers] in ([], [(400, "bad_request")])
    assert_nothing_left(live)


def test_chunked_oversize_is_stopped_while_streaming(live: Live) -> None:
    # Far more than the limit: on a loaded machine the socket buffers hold a few
    # MiB more before the 413 is read, and the client must still be stopped.
    total = LIMIT + (48 << 20)
    pieces = (b"c" * (256 << 10) for _ in range(total // (256 << 10)))
    response = post(
        live.url + UPLOAD,
        _framed(pieces),
        {"Content-Type": MULTIPART_TYPE, "Transfer-Encoding": "chunked"},
    )
    assert (response.status, error_code(response.body)) == (413, "payload_too_large")
    assert response.sent < total
    assert_nothing_left(live)


def _framed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    head, _, tail = multipart(b"\0").partition(b"\0")
    yield head
    yield from chunks
    yield tail


def test_content_length_beyond_the_limit_is_refused_before_reading(live: Live) -> None:
    response = post(
        live.url + UPLOAD, [], {"Content-Type": MULTIPART_TYPE, "Content-Length": str(LIMIT * 4)}
    )
    assert (response.status, error_code(response.body)) == (413, "payload_too_large")
    assert_nothing_left(live)


# -- smuggling ------------------------------------------------------------------------

SMUGGLED_BOUNDARY = "smuggled-boundary-7f3c"


def smuggled_request() -> bytes:
    body = form('filename="smuggled.txt"', b"smuggled", boundary=SMUGGLED_BOUNDARY)
    return request_bytes(
        body,
        [
            ("Content-Type", f"multipart/form-data; boundary={SMUGGLED_BOUNDARY}"),
            ("Content-Length", str(len(body))),
        ],
        close=True,
    )


def cl_and_te() -> bytes:
    rest = b"0\r\n\r\n" + smuggled_request()
    return request_bytes(
        rest,
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Content-Length", str(len(rest))),
            ("Transfer-Encoding", "chunked"),
        ],
    )


def te_and_cl() -> bytes:
    rest = b"0\r\n\r\n" + smuggled_request()
    return request_bytes(
        rest,
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
        ],
    )


def duplicate_content_length() -> bytes:
    front = b"x" * 10
    rest = front + smuggled_request()
    return request_bytes(
        rest,
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Content-Length", str(len(front))),
            ("Content-Length", str(len(rest))),
        ],
    )


def duplicate_content_length_comma() -> bytes:
    front = b"x" * 10
    rest = front + smuggled_request()
    return request_bytes(
        rest,
        [("Content-Type", MULTIPART_TYPE), ("Content-Length", f"{len(front)}, {len(rest)}")],
    )


def chunked_then_identity() -> bytes:
    return request_bytes(
        b"0\r\n\r\n" + smuggled_request(),
        [("Content-Type", MULTIPART_TYPE), ("Transfer-Encoding", "chunked, identity")],
    )


def chunked_twice() -> bytes:
    return request_bytes(
        b"0\r\n\r\n" + smuggled_request(),
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "identity"),
        ],
    )


def obs_fold_te() -> bytes:
    """`Transfer-Encoding: chunked` folded into another header's value: a server that
    unfolds and a front end that does not see two different framings."""
    rest = b"0\r\n\r\n" + smuggled_request()
    return request_bytes(
        rest,
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Content-Length", str(len(rest))),
            ("X-Folded", "a\r\n Transfer-Encoding: chunked"),
        ],
    )


def obs_fold_cl() -> bytes:
    rest = b"0\r\n\r\n" + smuggled_request()
    return request_bytes(
        rest,
        [
            ("Content-Type", MULTIPART_TYPE),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", f"\r\n {len(rest)}"),
        ],
    )


def te_with_space_before_colon() -> bytes:
    rest = b"0\r\n\r\n" + smuggled_request()
    head = f"POST {UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART_TYPE}\r\n"
    head += f"Content-Length: {len(rest)}\r\nTransfer-Encoding : chunked\r\n\r\n"
    return head.encode() + rest


SMUGGLING: list[tuple[str, Callable[[], bytes]]] = [
    ("cl-and-te", cl_and_te),
    ("te-and-short-cl", te_and_cl),
    ("duplicate-cl", duplicate_content_length),
    ("duplicate-cl-comma", duplicate_content_length_comma),
    ("te-chunked-identity", chunked_then_identity),
    ("te-twice", chunked_twice),
    ("obs-fold-te", obs_fold_te),
    ("obs-fold-cl", obs_fold_cl),
    ("te-space-before-colon", te_with_space_before_colon),
]


@pytest.mark.parametrize("make_raw", [s[1] for s in SMUGGLING], ids=[s[0] for s in SMUGGLING])
def test_smuggling_attempts_give_one_refusal_and_store_nothing(
    live: Live, make_raw: Callable[[], bytes]
) -> None:
    """One answer, a 4xx, for the whole exchange: the request hidden behind the
    ambiguous framing is never answered nor stored."""
    result = exchange(live, make_raw())
    statuses = [a.status for a in result.answers]
    assert len(statuses) == 1, statuses
    assert 400 <= statuses[0] < 500, result.answers[0]
    assert_nothing_left(live)


# -- Range and If-None-Match on a completed upload -----------------------------------

CONTENT = bytes(range(100))


@pytest.fixture
def stored(live: Live) -> str:
    status, record = upload(live, multipart(CONTENT))
    assert status == 201 and record["status"] == "completed"
    return f"/uploads/{record['id']}/content"


WHOLE = (200, None)

RANGES: list[tuple[str, str, tuple[int, tuple[int, int] | None]]] = [
    ("underscore-digits", "bytes=1_0-20", WHOLE),
    ("plus-sign", "bytes=+5-10", WHOLE),
    ("space-in-number", "bytes=1 0-20", WHOLE),
    ("arabic-indic-digits", "bytes=\u0660-\u0665", WHOLE),
    ("huge-last", "bytes=0-99999999999999999999", (206, (0, 100))),
    ("huge-first", "bytes=99999999999999999999-", (416, None)),
    ("huge-first-and-last", "bytes=99999999999999999999-99999999999999999999", (416, None)),
    ("huge-suffix", "bytes=-99999999999999999999", (206, (0, 100))),
    ("thousand-digits", "bytes=0-" + "9" * 1000, (206, (0, 100))),
    ("many-ranges", "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2000, 2)), WHOLE),
    ("overlapping-ranges", "bytes=0-50,0-50,0-50", WHOLE),
    ("suffix", "bytes=-5", (206, (95, 100))),
    ("zero-suffix", "bytes=-0", (416, None)),
    ("double-negative", "bytes=--5", WHOLE),
    ("negative-first", "bytes=-5-10", WHOLE),
    ("reversed", "bytes=50-10", WHOLE),
    ("start-at-size", "bytes=100-", (416, None)),
    ("last-byte", "bytes=99-99", (206, (99, 100))),
    ("no-dash", "bytes=5", WHOLE),
    ("empty-spec", "bytes=", WHOLE),
    ("other-unit", "items=0-5", WHOLE),
    ("no-unit", "0-5", WHOLE),
    ("garbage", "\u00ff;;==garbage", WHOLE),
]


@pytest.mark.parametrize(
    ("header", "expected"), [r[1:] for r in RANGES], ids=[r[0] for r in RANGES]
)
def test_hostile_ranges(
    live: Live, stored: str, header: str, expected: tuple[int, tuple[int, int] | None]
) -> None:
    status, span = expected
    response = live.http.get(stored, headers={"Range": header.encode()})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.content == CONTENT
    elif status == 206:
        assert span is not None
        assert response.content == CONTENT[span[0] : span[1]]
        assert response.headers["content-range"] == f"bytes {span[0]}-{span[1] - 1}/100"
    else:
        assert response.json()["code"] == "range_not_satisfiable"
        assert response.headers["content-range"] == "bytes */100"
    assert_healthy(live)


def etag_of(live: Live, stored: str) -> str:
    return str(live.http.head(stored).headers["etag"])


INM: list[tuple[str, Callable[[str], str], int]] = [
    ("own", lambda tag: tag, 304),
    ("weak-own", lambda tag: f"W/{tag}", 304),
    ("star", lambda tag: "*", 304),
    ("huge-list-no-match", lambda tag: ", ".join(f'"{i:064x}"' for i in range(5000)), 200),
    ("huge-list-own-last", lambda tag: ", ".join([*(f'W/"{i}"' for i in range(5000)), tag]), 304),
    ("unquoted-own", lambda tag: tag.strip('"'), 200),
    ("unterminated", lambda tag: tag[:-1], 200),
    ("weak-only", lambda tag: "W/", 200),
    ("commas", lambda tag: ",,,,,,", 200),
    ("garbage", lambda tag: "\u00ff;;==\u00e9", 200),
    ("lowercase-weak", lambda tag: f"w/{tag}", 200),
    ("double-weak", lambda tag: f"W/W/{tag}", 200),
]


@pytest.mark.parametrize(("make_header", "status"), [i[1:] for i in INM], ids=[i[0] for i in INM])
def test_hostile_if_none_match(
    live: Live, stored: str, make_header: Callable[[str], str], status: int
) -> None:
    header = make_header(etag_of(live, stored))
    response = live.http.get(stored, headers={"If-None-Match": header.encode()})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.content == CONTENT
    else:
        assert response.content == b""
    assert_healthy(live)


# -- hostile ids in paths (schemathesis sends no invalid path parameters) ---------------

HOSTILE_IDS: list[tuple[str, Callable[[str], str]]] = [
    ("traversal-encoded", lambda real: "..%2F..%2Fetc%2Fpasswd"),
    ("traversal-backslash", lambda real: "..%5C..%5Cwin.ini"),
    ("dotdot", lambda real: "%2E%2E"),
    ("nul", lambda real: "%00"),
    ("real-plus-nul", lambda real: real + "%00"),
    ("real-plus-newline", lambda real: real + "%0A"),
    ("real-plus-suffix", lambda real: real + ".json"),
    ("real-uppercase", lambda real: real.upper()),
    ("record-file", lambda real: real + "%2Ejson"),
    ("index-prefix", lambda real: "index." + real),
    ("10000-chars", lambda real: "a" * 10_000),
    ("unicode", lambda real: "%E2%80%AE" + real[1:]),
]


@pytest.mark.parametrize("make_id", [h[1] for h in HOSTILE_IDS], ids=[h[0] for h in HOSTILE_IDS])
def test_hostile_ids_are_not_found(live: Live, stored: str, make_id: Callable[[str], str]) -> None:
    """Only an id of the service's own shape reaches the store; anything else is a 404
    (a 400 for what the router itself refuses), never a 5xx, and never another file."""
    real = stored.split("/")[2]
    hostile = make_id(real)
    for method, path in [
        ("GET", f"/uploads/{hostile}"),
        ("GET", f"/uploads/{hostile}/content"),
        ("HEAD", f"/uploads/{hostile}/content"),
        ("GET", f"/uploads/{hostile}/derived/thumbnail"),
        ("GET", f"/uploads/{real}/derived/{hostile}"),
        ("DELETE", f"/uploads/{hostile}"),
    ]:
        response = live.http.request(method, path)
        assert response.status_code in (400, 404), (method, path, response.text[:200])
        if method != "HEAD":
            assert response.json()["code"] in ("bad_request", "not_found"), (method, path)
    # The real upload is untouched.
    assert live.http.get(stored).content == CONTENT
    assert_healthy(live)
