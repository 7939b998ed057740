"""Storage in a folder on an SSH server: `sftp://user@host:port/folder` (or `ssh://`).

Layout under the folder, as on the local disk (files.py): `<id>` (the bytes),
`<id>.json` (the record) and, only while something is in flight,
`<key>.<random>.part` beside its target and the guard's `.uploadsvc-lock*.part`
files (sftplock.py). Listings skip `.part` names, so none of these is a key.

What each guarantee rests on: OpenSSH extensions of SFTP, which OpenSSH has
had since 2008-2011 and which the first call on a connection insists on (a
server without them is refused with a message, not served with weaker
promises):

- whole-or-nothing commit: the part file is renamed onto the key with
  `posix-rename@openssh.com`, rename(2) on the server. sshfs's `mv` falls back
  to cp + rm where that extension is missing (a reader could see half a file),
  so this module renames by itself and never copies;
- durable commit: `fsync@openssh.com` on the part file before the rename and on
  the folder after it (OpenSSH opens a folder like a file); a server without
  fsync is used without it;
- create-if-absent: `hardlink@openssh.com` of the part file onto the key:
  link(2) fails atomically when the name exists, so no lock is needed;
- replace-if-unchanged: compare-and-rename under a lock file on the server,
  respected by every process on every host sharing the folder
  (`sftplock.ServerLock`, whose docstring says what it assumes).

Connections. sshfs's `SSHFileSystem` receives `[storage.options]` the way
sshfs and asyncssh users write them (`client_keys`, `known_hosts`, `password`,
`passphrase`, `max_sessions`, ...). It connects in its constructor, so
`from_url` builds nothing; the first call, on a worker thread, connects, and a
call that finds its connection closed makes a new one: a dropped connection
costs the calls that were on it, never every call after it. Four defaults
differ from sshfs's and asyncssh's (`CONNECT_DEFAULTS`): host keys are checked
(sshfs passes `known_hosts=None`, which trusts any server; here the default is
asyncssh's, `~/.ssh/known_hosts`, and TOML names a file); connecting and
silence are bounded (`connect_timeout`, `keepalive_interval`), so an
unanswering server costs seconds, not asyncssh's two-minute login timeout or
forever; and AES-GCM is preferred to ChaCha20.

How the calls reach the server (worker threads and fsspec's IO loop, a
connection of their own for the bytes of uploads, pipelined writes, writeback
beside them) is sftpremote.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Self, cast
from urllib.parse import unquote, urlsplit

from ..errors import PreconditionFailed, StorageUnavailable
from ..shown import shown_url
from .files import FLUSH_EVERY, RenamingStorage, etag_or_none
from .interface import Ability
from .sftplock import ServerLock
from .sftpremote import WRITE_WINDOW, Part, Remote, reason

__all__ = ["CONNECT_DEFAULTS", "WRITE_WINDOW", "SFTPStorage"]

#: Where this backend's defaults differ from sshfs's and asyncssh's; the
#: user's `[storage.options]` override each of them.
CONNECT_DEFAULTS: dict[str, Any] = {
    # Bounds on how long a silent or vanished server can hold a call.
    "connect_timeout": 10,  # TCP connect, key exchange and login together
    "keepalive_interval": 10,  # a dead peer is noticed after 3 unanswered probes
    "keepalive_count_max": 3,
    # asyncssh's default: ~/.ssh/known_hosts. sshfs's None trusts any server.
    "known_hosts": (),
    # asyncssh's own ciphers, AES-GCM first instead of ChaCha20: with AES
    # instructions (any server CPU of the last decade) it took half the
    # client CPU per byte here, and bulk uploads are CPU-bound on both ends.
    "encryption_algs": [
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ],
}


class SFTPStorage(RenamingStorage):
    """Keys are files in one folder on an SSH server; see the module docstring."""

    abilities = frozenset(Ability) - {Ability.local_files}

    fs: Remote  # narrows RenamingStorage's filesystem to ours

    def __init__(self, remote: Remote, root: str, url: str) -> None:
        super().__init__(remote, root, url)
        self.lock = ServerLock(remote, self.root, url)
        remote.before_rename = self.lock.check_lease

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> Self:
        """Parses the URL only: sshfs would connect in its constructor, so the
        connection is made by the first call, on a worker thread."""
        parts = urlsplit(url)
        root = unquote(parts.path).rstrip("/")
        if not parts.hostname or not root or parts.query or parts.fragment:
            raise StorageUnavailable(
                f"storage {shown_url(url)}: expected sftp://[user@]host[:port]/folder"
            )
        try:
            port = parts.port
        except ValueError as e:
            raise StorageUnavailable(f"storage {shown_url(url)}: {e}") from None
        connect = {**CONNECT_DEFAULTS, **options}
        if port is not None:
            connect.setdefault("port", port)
        if parts.username:
            connect.setdefault("username", unquote(parts.username))
        if parts.password:
            connect.setdefault("password", unquote(parts.password))
        shown = shown_url(url)
        return cls(Remote(shown, parts.hostname, connect), root, shown)

    @contextmanager
    def guard(self) -> Iterator[None]:
        with self.lock.held():
            yield

    def publish_replacing(self, part: str, final: str, if_match: str) -> None:
        """Compare and rename under the server lock; a loser keeps the lock for
        its retry when other processes contend (sftplock.py, "Fairness")."""
        with self.lock.held() as hold:
            if etag_or_none(self, final) != if_match:
                hold.keep_for_retry()
                raise PreconditionFailed(f"{final} changed")
            self.fs.mv(part, final)

    def write_part(self, part: str, data: bytes) -> None:
        """Small files (`put_small`: records, markers) go over the control
        connection; `open(..., "wb")` is for the bytes of uploads."""
        self.fs.write_small(part, data)

    def finish_part(self, f: IO[bytes]) -> None:
        part = cast(Part, f)  # what `Remote.open(..., "wb")` returns
        part.flush()
        part.fsync()

    def sync_folder(self, folder: str) -> None:
        self.fs.fsync_folder(folder)

    def written(self, f: IO[bytes], start: int, end: int) -> bool:
        """Every `FLUSH_EVERY` bytes, start an fsync of what the server holds so far,
        without waiting: the disk writes while the upload goes on, and the fsync
        at commit only waits for the tail (as `posix_fadvise` does on the local disk)."""
        part = cast(Part, f)
        return end - start >= FLUSH_EVERY and part.start_writeback()

    def publish_new(self, part: str, final: str) -> None:
        """A hard link onto an existing name fails atomically: no lock needed."""
        if not self.fs.link(part, final):
            raise PreconditionFailed(f"{final} already exists")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(part)

    async def check(self) -> None:
        """Connect if need be (the OpenSSH extensions are checked then), make the
        folder, and start the path the bytes of uploads take (sftppipe.py); every
        failure is a `StorageUnavailable` naming the URL and why.

        Cheap once connected (one stat): /healthz calls it.
        """

        def make_folder() -> None:
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise StorageUnavailable(
                    f"storage {self.url}: cannot create the folder {self.root}: {reason(e)}"
                ) from e
            try:
                self.fs.bulk.check()  # the bytes of uploads take a path of their own
            except OSError as e:
                raise StorageUnavailable(
                    f"storage {self.url}: cannot open the connection for uploads: {reason(e)}"
                ) from e

        await asyncio.to_thread(make_folder)
