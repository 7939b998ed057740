"""What one client can take: a stalled body is dropped at `body_timeout_seconds`,
uploads beyond `max_concurrent_uploads` are busy, a disk below `min_free_bytes`
takes none, and a body of countless parts is refused before it costs much.

Each refused or dropped upload leaves nothing behind (see test_failures.py).
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.test_failures import assert_nothing_left
from tests.conftest import Backend, Live, make_settings
from tests.rawhttp import BOUNDARY, MULTIPART_TYPE, multipart, post
from uploadsvc.storage import Ability

PATHS = ["/upload-blocking/", "/upload-nonblocking/"]


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect each test's apps (cyclic garbage) before the next test's event loop runs:
    sshfs's finalizer schedules the close of a collected SSHFileSystem on whatever
    loop is running in the thread, and a unit test's `asyncio.run` then never ends."""
    yield
    gc.collect()


def _limited(live_factory: Any, backend: Backend, tmp_path: Path, **limits: Any) -> Live:
    live: Live = live_factory(make_settings(backend, tmp_path, max_upload_bytes=32 << 20, **limits))
    return live


def _open_upload(live: Live, path: str, body: bytes, send: int) -> socket.socket:
    """An upload whose client sent the headers and `send` bytes of `body`, then paused."""
    parts = urlsplit(live.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {MULTIPART_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:send])
    return sock


def _status_of(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while data := sock.recv(65536):
        received += data
        head, sep, rest = received.partition(b"\r\n\r\n")
        length = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        if sep and length and len(rest) >= length[0]:
            break
    sock.close()
    return int(received.split()[1]), received


@pytest.mark.parametrize("path", PATHS)
def test_a_stalled_body_is_dropped_at_the_timeout(
    live_factory: Any, backend: Backend, tmp_path: Path, path: str
) -> None:
    live = _limited(live_factory, backend, tmp_path, body_timeout_seconds=1.0)
    body = multipart(os.urandom(3 << 20))
    started = time.monotonic()
    # The client sends half the body it announced, then nothing, and waits.
    answer = post(
        live.url + path,
        [body[: len(body) // 2]],
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
    )
    waited = time.monotonic() - started
    assert answer.status == 408, answer
    assert b'"code":"request_timeout"' in answer.body
    assert 1.0 <= waited < 4.0  # the timeout, plus at most a tick of the watchdog
    assert_nothing_left(live)
    # The service goes on serving.
    assert live.http.post(path, files={"file": ("ok", b"fine")}).status_code in (201, 202)


def test_a_slow_body_that_keeps_sending_is_not_dropped(
    live_factory: Any, backend: Backend, tmp_path: Path
) -> None:
    """Pauses shorter than the timeout, adding up to several times it: no 408."""
    live = _limited(live_factory, backend, tmp_path, body_timeout_seconds=1.0)
    payload = os.urandom(3 << 20)
    body = multipart(payload)
    pieces = [body[i : i + (512 << 10)] for i in range(0, len(body), 512 << 10)]

    def slowly() -> Any:
        for piece in pieces:
            yield piece
            time.sleep(0.4)

    answer = post(
        live.url + "/upload-blocking/",
        slowly(),
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
    )
    assert answer.status == 201, answer
    assert b'"size":%d' % len(payload) in answer.body


def test_uploads_beyond_max_concurrent_uploads_are_busy(
    live_factory: Any, backend: Backend, tmp_path: Path
) -> None:
    live = _limited(live_factory, backend, tmp_path, max_concurrent_uploads=2)
    body = multipart(os.urandom(1 << 20))
    held = [_open_upload(live, path, body, len(body) // 2) for path in PATHS]
    time.sleep(0.3)  # both are being received
    for path in PATHS:
        refused = live.http.post(path, files={"file": ("third", b"x")})
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "busy"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    for sock in held:
        sock.sendall(body[len(body) // 2 :])
    assert sorted(_status_of(sock)[0] for sock in held) == [201, 202]
    # The slots are free again.
    assert live.http.post("/upload-blocking/", files={"file": ("4th", b"x")}).status_code == 201


@pytest.mark.parametrize("path", PATHS)
def test_no_upload_when_a_local_disk_is_below_min_free_bytes(
    live_factory: Any, backend: Backend, tmp_path: Path, path: str
) -> None:
    """Staging is a local folder here, so the background path is always checked; the
    blocking path only where the storage itself is local files."""
    live = _limited(live_factory, backend, tmp_path, min_free_bytes=1 << 62)
    answer = live.http.post(path, files={"file": ("big", os.urandom(1 << 20))})
    local = Ability.local_files in live.app.state.service.storage.abilities
    if path == "/upload-blocking/" and not local:
        assert answer.status_code == 201
        return
    assert answer.status_code == 507, answer.text
    assert answer.json()["code"] == "insufficient_storage"
    assert_nothing_left(live)


def test_a_body_of_countless_parts_is_refused_early(live: Live) -> None:
    """170,000 empty parts (9.5 MB) cost python-multipart 1.7 s of the loop's CPU; the
    1,001st part ends the upload instead."""
    parts = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n\r\n'.encode()
        for i in range(170_000)
    )
    body = parts + multipart(b"data")
    answer = post(
        live.url + "/upload-blocking/",
        [body[i : i + (64 << 10)] for i in range(0, len(body), 64 << 10)],
        {"Content-Type": MULTIPART_TYPE, "Content-Length": str(len(body))},
    )
    assert answer.status == 400
    assert b'"code":"bad_request"' in answer.body and b"parts" in answer.body
    # Refused while streaming: on a loaded machine the socket buffers take a few MiB
    # more before the answer is read, so "well before the end", not a fine margin.
    assert answer.sent < len(body) // 2
    assert_nothing_left(live)
    # A form with a few fields beside the file is fine.
    fields = {f"field{i}": "value" for i in range(50)}
    assert (
        live.http.post("/upload-blocking/", files={"file": ("a", b"x")}, data=fields).status_code
        == 201
    )
