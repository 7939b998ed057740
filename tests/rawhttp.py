"""Hand-made HTTP requests for what well-behaved clients never send:
bodies cut short, clients that vanish, uploads that keep coming after a 413."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

BOUNDARY = "----uploadsvc-test-boundary"


def multipart(
    data: bytes,
    filename: str = "data.bin",
    content_type: str = "application/octet-stream",
    *,
    closing: bool = True,
    fields: dict[str, str] | None = None,
) -> bytes:
    """A multipart/form-data body with `data` in field `file`."""
    out = bytearray()
    for name, value in (fields or {}).items():
        out += f"--{BOUNDARY}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    out += data
    out += f"\r\n--{BOUNDARY}--\r\n".encode() if closing else b"\r\n"
    return bytes(out)


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_stream(chunks: Iterable[bytes], filename: str = "data.bin") -> Iterator[bytes]:
    """The same body as `multipart`, produced piece by piece (nothing held whole)."""
    head, _, tail = multipart(b"\0", filename).partition(b"\0")
    yield head
    yield from chunks
    yield tail


@dataclass
class RawResponse:
    status: int | None
    body: bytes
    sent: int


def post(
    url: str,
    chunks: Iterable[bytes],
    headers: dict[str, str],
    *,
    close_early: bool = False,
    timeout: float = 30,
) -> RawResponse:
    """POST `chunks` over a plain socket, reading any early answer while sending.

    Stops sending as soon as the server answers (as a browser does on a 413).
    `close_early` closes the socket after the last chunk without waiting, as a
    client that vanishes mid-upload.
    """
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    chunked = headers.get("Transfer-Encoding") == "chunked"
    received = b""
    sent = 0
    try:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered already
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            sent += len(chunk)
        else:
            if close_early:
                sock.close()
                return RawResponse(None, b"", sent)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        while data := sock.recv(65536):
            received += data
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    if not received:
        return RawResponse(None, b"", sent)
    head_bytes, _, body = received.partition(b"\r\n\r\n")
    return RawResponse(int(head_bytes.split()[1]), body, sent)
