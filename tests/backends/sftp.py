"""SFTP on Debian's OpenSSH server, one `sshd` per session on 127.0.0.1.

The server runs as the test user (root here) with a host key, a client key
and a known_hosts file made for the session, so the backend checks the host
key as in production. The server is local, so `contents` reads its folder
from the disk directly.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.backends import Backend, tools
from uploadsvc.storage.sftp import WRITE_WINDOW

#: The unreachable and silent endpoints give up sooner than the default 10 s.
FAST_FAIL = {"connect_timeout": 3}


@dataclass(frozen=True)
class SSHServer:
    """A running sshd: where it listens, who logs in, the storage options that
    trust it and log in (client key, known_hosts), its log and process id."""

    port: int
    user: str
    options: dict[str, object]
    log: Path
    pid: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serve(home: Path) -> Iterator[SSHServer]:
    """An OpenSSH server on a free 127.0.0.1 port until the block ends, its keys,
    config and log in `home` (the session fixture and benchmarks enter this)."""
    program = tools.apt_program("sshd", "openssh-server")
    keygen = tools.apt_program("ssh-keygen", "openssh-client")
    for name in ("host_key", "client_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)],
            check=True,
            capture_output=True,
        )
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = tools.free_port()
    host_key = (home / "host_key.pub").read_text().split()[:2]
    # Any local port: fault proxies in front of the server present its key too.
    (home / "known_hosts").write_text(f"[127.0.0.1]:* {' '.join(host_key)}\n")
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {home / 'host_key'}\n"
        f"PidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder
    log = home / "sshd.log"
    with tools.running([program, "-D", "-e", "-f", str(config)], port, log=log) as proc:
        yield SSHServer(
            port=port,
            user=getpass.getuser(),
            options={
                "client_keys": [str(home / "client_key")],
                "known_hosts": str(home / "known_hosts"),
            },
            log=log,
            pid=proc.pid,
        )


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    with serve(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@dataclass
class SFTPBackend(Backend):
    folder: Path = field(default_factory=Path)
    user: str = ""
    # The writes in flight, and asyncssh's packets of them.
    writer_memory: int | None = 2 * WRITE_WINDOW

    def contents(self) -> list[str]:
        if not self.folder.exists():
            return []
        return sorted(
            str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()
        )

    def at(self, address: str) -> SFTPBackend:
        return replace(
            self,
            url=f"sftp://{self.user}@{address}{self.folder}",
            options={**self.options, **FAST_FAIL},
        )

    def unreachable(self) -> Backend:
        return self.at(f"127.0.0.1:{tools.free_port()}")  # nothing listens there

    def via(self, address: str) -> Backend:
        return self.at(address)


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    server: SSHServer = request.getfixturevalue("sshd")
    folder = tmp_path / "sftp-root"
    yield SFTPBackend(
        "sftp",
        f"sftp://{server.user}@127.0.0.1:{server.port}{folder}",
        dict(server.options),
        endpoint=server.address,
        folder=folder,
        user=server.user,
    )
