"""ClamAV's daemon for the tests: Debian's `clamd`, one per session, on a unix
socket and on a 127.0.0.1 TCP port at once.

No signature database can be downloaded here (freshclam has nowhere to go),
so the session writes its own: one body signature for the EICAR test file,
which clamd 1.4 loads alone, without `main`/`daily`, and reports as
`Eicar-Test-Signature.UNOFFICIAL`. A body signature (`.ndb`, any offset), not
a whole-file hash (`.hdb`), so that EICAR is found inside a larger file too.

The EICAR string is built from parts and written only into the session's
temporary folder, so no file of the repository holds it for a virus scanner
to flag.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import tools

#: The name the session's database gives EICAR (clamd adds `.UNOFFICIAL`).
SIGNATURE = "Eicar-Test-Signature"
#: clamd's INSTREAM limit here; small, so a test can exceed it cheaply.
STREAM_MAX_BYTES = 8 << 20


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file, assembled so no source file holds it."""
    head = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    tail = b"!$H+H*"
    return head + b"-".join([b"EICAR", b"STANDARD", b"ANTIVIRUS", b"TEST", b"FILE"]) + tail


@dataclass(frozen=True)
class Clamd:
    """A running clamd: its two addresses in the plugin's spelling, its log, its
    process id, and how long it took to answer PING."""

    socket_path: Path
    port: int
    log: Path
    pid: int
    started_in: float

    @property
    def unix(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def ping_unix(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(str(path))
        s.sendall(b"zPING\0")
        return s.recv(64)


def ping_tcp(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"zPING\0")
        return s.recv(64)


@contextmanager
def serve(
    home: Path, stream_max_bytes: int = STREAM_MAX_BYTES, cache: bool = True
) -> Iterator[Clamd]:
    """clamd until the block ends, with its config, database, socket and log in `home`.

    `cache=False` sets `DisableCache yes`: clamd otherwise remembers the MD5 of every
    clean file and answers the same bytes again without scanning them (a benchmark
    that sends one file several times would time a hash, not a scan).

    It runs as the test user: as root, clamd 1.4 starts without a `User` line
    and keeps root, so it can read the session's private temporary folder.
    """
    program = tools.apt_program("clamd", "clamav-daemon")
    db = home / "db"
    db.mkdir()
    (db / "eicar.ndb").write_text(f"{SIGNATURE}:0:*:{eicar().hex()}\n")
    (home / "tmp").mkdir()
    port = tools.free_port()
    sock = home / "clamd.sock"
    log = home / "clamd.log"
    config = home / "clamd.conf"
    config.write_text(
        f"LocalSocket {sock}\n"
        f"TCPSocket {port}\n"
        "TCPAddr 127.0.0.1\n"
        f"DatabaseDirectory {db}\n"
        f"TemporaryDirectory {home / 'tmp'}\n"
        f"PidFile {home / 'clamd.pid'}\n"
        "Foreground yes\n"
        f"LogFile {log}\n"
        "LogTime yes\n"
        "LogSyslog no\n"
        f"StreamMaxLength {stream_max_bytes}\n"
        # What clamd cannot scan whole is reported, never answered OK.
        f"MaxFileSize {stream_max_bytes}\n"
        f"MaxScanSize {stream_max_bytes}\n"
        "AlertExceedsMax yes\n" + ("" if cache else "DisableCache yes\n")
    )
    started = time.monotonic()
    output = home / "clamd.out"
    with tools.running([program, "--config-file", str(config)], port, log=output) as proc:
        deadline = started + 30
        while True:
            try:
                if ping_unix(sock) == ping_tcp(port) == b"PONG\0":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                said = "".join(p.read_text() for p in (output, log) if p.exists())
                raise RuntimeError(f"clamd did not answer PING in time:\n{said}")
            time.sleep(0.05)
        yield Clamd(sock, port, log, proc.pid, time.monotonic() - started)


@pytest.fixture(scope="session", name="clamd")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with serve(tmp_path_factory.mktemp("clamd")) as server:
        yield server
