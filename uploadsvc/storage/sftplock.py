"""A lock in a folder on an SSH server, held across processes and hosts.

SFTP has no compare-and-swap, so replace-if-unchanged (records, leases) is a
read, a compare and a rename under this lock. A lock of the process would do
for one process only (two processes sharing a folder kept 76 of 100
increments here); this one lives on the server, where every writer sees it.

Its files, in the storage folder (names end in `.part`, so listings skip them):

- `.uploadsvc-lock.part`, the lock: its bytes name the holder (a random token,
  its host and pid), its mtime (the server's clock) says when that holder
  wrote its ticket;
- `.uploadsvc-lock.<token>.part`, a contender's ticket: written whole, then
  hard-linked as the lock. `hardlink@openssh.com` is link(2) on the server, so
  exactly one of several contenders gets the name, and the lock is never seen
  half-written. The ticket is removed once the link is made, or at the deadline;
- `.uploadsvc-lock.<id>.break<n>.part`, a claim to break a stale lock (below).

A contender that finds the lock taken polls it, sleeping from 1 ms up to
16 ms between polls, and gives up with `StorageUnavailable` at the guard's
deadline (`files.GUARD_TIMEOUT`), naming the holder. Threads of one process
queue on a process lock first, so they do not poll the server against each
other.

Fairness. A conditional write that loses is retried by its caller with a
fresh read. With two processes changing one record back to back, the winner
of a round starts its next read before the loser has even learnt that it lost
(at its compare, after waiting for the lock), so one process tended to win
round after round: 20 to 50 losses running were seen here, where the records
allow 8. So while other processes contend (one was seen holding the lock in
the last `CONTENDED_FOR` seconds), a contender that loses its compare keeps
the lock for its retry (`Hold.keep_for_retry`), which then cannot lose; when
no retry comes within twenty compares' time (0.1 s at least), the lock is
released. Writers then alternate: no loss came twice running here.

A holder that died (killed, its host lost, its connection cut) leaves its lock
behind; nothing on the server notices. So the lock is a lease:

1. a holder does not start the write it guards (the rename) later than
   `USE_BY` seconds after writing its ticket, by its own monotonic clock; past
   that it gives up instead (`check_lease`, called before every rename);
2. a holder removes the lock only before `USE_BY`; a later one leaves it to expire;
3. a lock older than `LEASE` on the server's clock may be broken. The age is
   the lock's mtime against the contender's own ticket's mtime plus the time
   since it wrote that ticket, so it compares two stamps of the server's clock
   and assumes no agreement between the hosts' clocks, only that they run at
   about the same rate;
4. of several contenders that find the same stale lock, one breaks it: each
   tries to create the claim named after that lock's bytes and its age in
   whole leases (`break1`, `break2`, ...) exclusively; the winner reads the lock
   again and removes it only if it still holds the same bytes. A breaker that
   died holding its claim delays breaking by one lease, never forever.

So a lock is removed only by its holder before `USE_BY` or by one breaker
after `LEASE`, and the `LEASE - USE_BY` seconds between absorb the whole-second
mtimes of SFTP v3, the clock estimate and a request in flight.

Limits. This is correct as long as (a) every process writing the folder uses
this lock (another program renaming files there is not excluded), (b) a
request a holder sends before `USE_BY` reaches the server within `LEASE -
USE_BY` seconds, and no holder pauses that long between its check and its
request (a stopped process, a VM migration, a network partition that heals
later), and (c) the server's clock does not jump forward by nearly that much
(an NTP step). A breach of (b) or (c) can let one stale compare-and-rename
through, losing that update; it never deadlocks. A dead holder stalls
conditional writes of the folder for up to `LEASE` (they fail with 503 after
the guard's deadline meanwhile). Its ticket and a dead breaker's claim are
`.part` files like a dead writer's, which the sweep of old part files removes
(`remove_incomplete`); the lock itself it never touches (sftpremote.py), since it
could not tell a dead holder's lock from a newer one by the name alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import StorageUnavailable
from .files import GUARD_TIMEOUT

#: A lock older than this (seconds, the server's clock) belonged to a dead or
#: hopelessly late holder and may be broken.
LEASE = 30.0

#: A holder starts its guarded write within this many seconds of writing its
#: ticket, or gives up. Above `GUARD_TIMEOUT`, so a holder that waited the
#: whole wait still has seconds for its few round trips.
USE_BY = 20.0

#: Sleeps between polls of a taken lock grow from the first to the last, with
#: jitter: a holder keeps the lock for a few round trips, a slow one longer.
POLL_FIRST, POLL_MOST = 0.001, 0.016

#: How often a contender looks at the lock's age (to break a dead holder's).
AGE_CHECK_EVERY = 0.25

#: A lock kept for a retry is released after this many times the compare that
#: lost took (about one read and one write of the caller), within these bounds.
KEEP_COMPARES, KEEP_LEAST, KEEP_MOST = 20, 0.1, 2.0

#: Other processes count as contending this long after one was seen holding the lock.
CONTENDED_FOR = 10.0

LOCK_NAME = ".uploadsvc-lock"
LOCK_FILE = f"{LOCK_NAME}.part"

log = logging.getLogger(__name__)


class LockFiles(Protocol):
    """What the lock needs of the server (sftpremote.py's `Remote`), on worker threads."""

    def create(self, path: str, data: bytes) -> int | None:
        """Create `path` exclusively (`FileExistsError` if it exists); its mtime."""

    def link(self, src: str, dst: str) -> bool:
        """Hard-link `src` as `dst`; False if `dst` exists."""

    def read_stamped(self, path: str) -> tuple[bytes, int | None] | None:
        """A small file's bytes and mtime; None if absent."""

    def stamp(self, path: str) -> float | None:
        """A file's mtime (infinity if the server gives none); None if it is absent."""

    def remove(self, path: str) -> None:
        """Remove a file (`FileNotFoundError` if absent)."""


@dataclass
class _Lease:
    """A holder's (or contender's) clock: when its ticket was written, by its own
    monotonic clock and by the server's (the ticket's mtime)."""

    ticket_written: float  # monotonic, taken just before the ticket was stamped
    stamped: int | None  # the ticket's mtime; None if the server gives none

    def age(self) -> float:
        return time.monotonic() - self.ticket_written

    def server_age(self, mtime: float | None) -> float | None:
        """How old a file with `mtime` is now on the server's clock; None if unknown
        (a lock without times is never taken for stale)."""
        if self.stamped is None or mtime is None:
            return None
        return self.stamped + self.age() - mtime


@dataclass
class Hold:
    """The lock as held for one block: the block may ask to keep it for a retry."""

    lease: _Lease
    contended: bool  # other processes asked for the lock lately
    since: float = field(default_factory=time.monotonic)
    keep: float | None = None  # seconds to keep the lock after the block

    def keep_for_retry(self) -> None:
        """This write lost its compare: keep the lock for the caller's retry, if
        other processes contend for it (else no one needs it to be fair)."""
        if self.contended:
            took = time.monotonic() - self.since
            self.keep = min(max(KEEP_COMPARES * took, KEEP_LEAST), KEEP_MOST)


class ServerLock:
    """The compare-and-rename guard of one storage folder; see the module docstring."""

    def __init__(self, files: LockFiles, root: str, url: str) -> None:
        self._files = files
        self._root = root
        self._url = url
        self.path = f"{root}/{LOCK_FILE}"
        self._in_process = threading.Lock()
        self._mine = threading.local()
        self._kept: _Lease | None = None  # held for a retry, released by `_expire`
        self._contended_until = 0.0  # monotonic; until then other processes count

    @contextmanager
    def held(self) -> Iterator[Hold]:
        deadline = time.monotonic() + GUARD_TIMEOUT
        if not self._in_process.acquire(timeout=GUARD_TIMEOUT):
            raise StorageUnavailable(
                f"storage {self._url}: waited over {GUARD_TIMEOUT:g} s for the lock"
            )
        try:
            lease, self._kept = self._kept, None
            if lease is None or lease.age() > USE_BY / 2:
                if lease is not None:
                    self._release(lease)
                lease = self._acquire(deadline)
            hold = Hold(lease, time.monotonic() < self._contended_until)
            self._mine.lease = lease
            try:
                yield hold
            finally:
                self._mine.lease = None
                if hold.keep is None:
                    self._release(lease)
                else:
                    self._kept = lease
                    # Not a daemon: a process that exits meanwhile still releases it.
                    threading.Timer(hold.keep, self._expire, (lease,)).start()
        finally:
            self._in_process.release()

    def check_lease(self) -> None:
        """Refuse a guarded write this thread would start too late (rule 1)."""
        lease: _Lease | None = getattr(self._mine, "lease", None)
        if lease is not None and lease.age() > USE_BY:
            raise StorageUnavailable(
                f"storage {self._url}: held the lock {lease.age():.0f} s, over {USE_BY:g} s; "
                "gave up before writing, as it may have been broken"
            )

    def _expire(self, lease: _Lease) -> None:
        """No retry came for a kept lock: release it."""
        with self._in_process:
            if self._kept is lease:
                self._kept = None
                self._release(lease)

    def _acquire(self, deadline: float) -> _Lease:
        token = secrets.token_hex(16)
        ticket = f"{self._root}/{LOCK_NAME}.{token}.part"
        body = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid()})
        lease = self._write_ticket(ticket, body.encode())
        try:
            pause = POLL_FIRST
            next_age_check = time.monotonic()
            while True:
                try:
                    if self._files.link(ticket, self.path):
                        return lease
                except FileNotFoundError:
                    # A sweep of old part files with a grace shorter than our
                    # wait took the ticket: write it again (it only gets younger).
                    lease = self._write_ticket(ticket, body.encode())
                    continue
                # Taken by another process (this one's threads queue in front).
                self._contended_until = time.monotonic() + CONTENDED_FOR
                # The lock's age matters only to a dead holder, whose lease
                # lasts LEASE: a look now and then will do.
                if time.monotonic() >= next_age_check:
                    next_age_check = time.monotonic() + AGE_CHECK_EVERY
                    mtime = self._files.stamp(self.path)
                    if mtime is None:
                        continue  # released meanwhile: try again at once
                    age = lease.server_age(mtime)
                    if age is not None and age > LEASE and self._break(lease):
                        continue
                if time.monotonic() > deadline:
                    raise self._busy(lease)
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, POLL_MOST)
        finally:
            with contextlib.suppress(OSError):
                self._files.remove(ticket)

    def _write_ticket(self, ticket: str, body: bytes) -> _Lease:
        # The clock starts before the ticket is stamped: the holder's own count
        # of its lease starts no later than the server's (rules 1 and 2 err safe).
        started = time.monotonic()
        return _Lease(started, self._files.create(ticket, body))

    def _busy(self, lease: _Lease) -> StorageUnavailable:
        seen = self._files.read_stamped(self.path)
        holder = "someone" if seen is None else _holder(seen[0])
        age = None if seen is None else lease.server_age(seen[1])
        shown = "" if age is None else f" ({max(age, 0):.0f} s old)"
        return StorageUnavailable(
            f"storage {self._url}: the lock {self.path} is held by "
            f"{holder}{shown}; waited over {GUARD_TIMEOUT:g} s"
        )

    def _release(self, lease: _Lease) -> None:
        if lease.age() > USE_BY:
            # Rule 2: it may have been broken and taken by now; let it expire.
            log.warning("left the lock %s to expire: held %.0f s", self.path, lease.age())
            return
        try:
            self._files.remove(self.path)
        except OSError as e:
            # The guarded write is done; failing it now would misreport it.
            # The lock expires after LEASE.
            log.warning("could not release the lock %s: %s", self.path, e)

    def _break(self, lease: _Lease) -> bool:
        """Remove the lock if it is still stale and no other contender breaks it
        in this lease (rule 4); whether the name is free again."""
        seen = self._files.read_stamped(self.path)
        if seen is None:
            return True
        data, mtime = seen
        age = lease.server_age(mtime)
        if age is None or age <= LEASE:
            return False
        epoch = int(age // LEASE)
        identity = hashlib.sha256(data).hexdigest()[:16]
        claim = f"{self._root}/{LOCK_NAME}.{identity}.break{epoch}.part"
        try:
            self._files.create(claim, b"")
        except FileExistsError:
            return False  # another contender is breaking it in this lease
        try:
            again = self._files.read_stamped(self.path)
            if again is not None and again[0] == data:
                self._files.remove(self.path)
                log.warning(
                    "broke the lock %s left by %s (%.0f s old)", self.path, _holder(data), age
                )
            return True
        finally:
            for stale in {claim, claim.replace(f".break{epoch}.", f".break{epoch - 1}.")}:
                with contextlib.suppress(OSError):
                    self._files.remove(stale)


def _holder(data: bytes) -> str:
    try:
        who = json.loads(data)
        return f"pid {who['pid']} on {who['host']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"
