"""The SFTP backend's own promises, beyond the shared contract: its server lock
recovers from a dead holder within its lease, never waits past its deadline
and keeps a loser's place only briefly; create-if-absent needs no lock; the
connection comes back after the server went away; building the backend
contacts nothing, and an untrusted server, a refused key or a password in the
URL end in a `StorageUnavailable` that says why and shows no secret.

A dead holder is played by files written straight into the served folder (the
server is local) with an mtime in the past, as a process killed while holding
the lock leaves them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.backends import Backend
from tests.backends.sftp import SFTPBackend
from tests.faults import proxy_to
from uploadsvc.errors import PreconditionFailed, StorageUnavailable
from uploadsvc.storage import Storage, open_storage, sftplock
from uploadsvc.storage.sftp import SFTPStorage
from uploadsvc.storage.sftplock import LEASE, LOCK_NAME

T = TypeVar("T")

pytestmark = pytest.mark.parametrize("backend", ["sftp"], indirect=True)

DEAD = json.dumps({"token": "0" * 32, "host": "gone", "pid": 4242}).encode()


def run(fn: Callable[[Storage], Awaitable[T]], backend: Backend) -> T:
    async def main() -> T:
        return await fn(backend.storage())

    return asyncio.run(main())


def folder(backend: Backend) -> Path:
    assert isinstance(backend, SFTPBackend)
    return backend.folder


def plant(path: Path, data: bytes, age: float) -> None:
    """A file as a holder that died `age` seconds ago left it."""
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))


def lock_of(backend: Backend) -> Path:
    return folder(backend) / f"{LOCK_NAME}.part"


async def seeded(storage: Storage) -> str:
    await storage.check()
    return await storage.put_small("r.json", b"1", if_none_match=True)


def test_a_dead_holders_lock_is_broken_once_its_lease_is_over(backend: Backend) -> None:
    """Planted 2 s short of the lease: the writer waits for it to run out, breaks it, writes."""

    async def scenario(storage: Storage) -> float:
        etag = await seeded(storage)
        plant(lock_of(backend), DEAD, LEASE - 2)
        started = time.monotonic()
        await storage.put_small("r.json", b"2", if_match=etag)
        return time.monotonic() - started

    waited = run(scenario, backend)
    # Whole-second mtimes: the lease runs out 1 to 3 s later; the guard would
    # give up after 10 s.
    assert 0.9 < waited < 6, waited
    assert backend.leftovers() == ["r.json"]
    assert (folder(backend) / "r.json").read_bytes() == b"2"


def test_a_lock_long_dead_is_broken_at_once(backend: Backend) -> None:
    async def scenario(storage: Storage) -> float:
        etag = await seeded(storage)
        plant(lock_of(backend), DEAD, 3600)
        started = time.monotonic()
        await storage.put_small("r.json", b"2", if_match=etag)
        return time.monotonic() - started

    assert run(scenario, backend) < 2
    assert backend.leftovers() == ["r.json"]


def test_a_live_lock_is_waited_for_until_the_deadline_only(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock well inside its lease is never broken: the writer gives up at its
    deadline with a 503 naming the holder, and the record is untouched."""
    monkeypatch.setattr(sftplock, "GUARD_TIMEOUT", 1.0)

    async def scenario(storage: Storage) -> float:
        etag = await seeded(storage)
        plant(lock_of(backend), DEAD, 0)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="held by pid 4242 on gone"):
            await storage.put_small("r.json", b"2", if_match=etag)
        return time.monotonic() - started

    waited = run(scenario, backend)
    assert 1.0 <= waited < 3, waited
    assert (folder(backend) / "r.json").read_bytes() == b"1"
    assert lock_of(backend).read_bytes() == DEAD  # still the holder's
    assert backend.leftovers() == [f"{LOCK_NAME}.part", "r.json"]  # no ticket of ours


def test_a_breaker_that_died_delays_breaking_by_one_lease_only(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim left by a breaker that died stops others from breaking that lock
    in the same lease; in the next lease the lock is broken and the claim goes."""
    monkeypatch.setattr(sftplock, "GUARD_TIMEOUT", 1.0)
    identity = hashlib.sha256(DEAD).hexdigest()[:16]
    claim = folder(backend) / f"{LOCK_NAME}.{identity}.break1.part"

    async def scenario(storage: Storage) -> None:
        etag = await seeded(storage)
        plant(lock_of(backend), DEAD, LEASE * 1.5)  # in its first lease past due
        plant(claim, b"", 1)
        with pytest.raises(StorageUnavailable, match="held by pid 4242"):
            await storage.put_small("r.json", b"2", if_match=etag)
        plant(lock_of(backend), DEAD, LEASE * 2.5)  # the second
        await storage.put_small("r.json", b"2", if_match=etag)

    run(scenario, backend)
    assert backend.leftovers() == ["r.json"]


def test_a_holder_past_its_lease_writes_nothing(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 1: a holder too slow to write before USE_BY gives up rather than
    writing under a lock that may have been broken, and leaves the lock to expire."""
    monkeypatch.setattr(sftplock, "USE_BY", 0.0)

    async def scenario(storage: Storage) -> None:
        etag = await seeded(storage)
        with pytest.raises(StorageUnavailable, match="gave up before writing"):
            await storage.put_small("r.json", b"2", if_match=etag)

    run(scenario, backend)
    assert (folder(backend) / "r.json").read_bytes() == b"1"
    assert backend.leftovers() == [f"{LOCK_NAME}.part", "r.json"]


def test_a_loser_keeps_the_lock_for_its_retry_and_no_longer(backend: Backend) -> None:
    """While other processes contend, a lost compare keeps the lock: the retry
    uses it (and releases it); a retry that never comes lets it go soon."""

    async def scenario(storage: Storage) -> None:
        assert isinstance(storage, SFTPStorage)
        stale = await seeded(storage)
        await storage.put_small("r.json", b"2", if_match=stale)
        storage.lock._contended_until = time.monotonic() + 60  # as if another was seen
        with pytest.raises(PreconditionFailed):
            await storage.put_small("r.json", b"x", if_match=stale)
        assert lock_of(backend).exists()  # kept for the retry
        _, etag = await storage.get_small("r.json")
        await storage.put_small("r.json", b"3", if_match=etag)
        assert not lock_of(backend).exists()  # the retry released it
        with pytest.raises(PreconditionFailed):
            await storage.put_small("r.json", b"y", if_match=stale)
        assert lock_of(backend).exists()

    run(scenario, backend)
    deadline = time.monotonic() + 5  # kept for 0.1 to 2 s
    while lock_of(backend).exists():
        assert time.monotonic() < deadline, "a lock kept for a retry was never released"
        time.sleep(0.02)
    assert backend.leftovers() == ["r.json"]
    assert (folder(backend) / "r.json").read_bytes() == b"3"


def test_create_if_absent_needs_no_lock(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard link decides create-if-absent: a held lock does not delay it."""
    monkeypatch.setattr(sftplock, "GUARD_TIMEOUT", 0.2)

    async def scenario(storage: Storage) -> None:
        await storage.check()
        plant(lock_of(backend), DEAD, 0)
        await storage.put_small("n.json", b"1", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await storage.put_small("n.json", b"2", if_none_match=True)

    run(scenario, backend)
    assert (folder(backend) / "n.json").read_bytes() == b"1"


def test_the_connection_comes_back_after_the_server_went_away(backend: Backend) -> None:
    assert backend.endpoint is not None
    with proxy_to(backend.endpoint) as proxy:
        through = backend.via(proxy.address)
        assert through is not None

        async def scenario(storage: Storage) -> bytes:
            await storage.put_small("r.json", b"1")
            proxy.cut()
            with pytest.raises(StorageUnavailable):
                await storage.get_small("r.json")
            proxy.restore()
            return (await storage.get_small("r.json"))[0]

        assert run(scenario, through) == b"1"


def test_building_the_backend_contacts_nothing(backend: Backend) -> None:
    """from_url only parses: a server that is not there shows at `check`, named."""
    down = backend.unreachable()
    assert down is not None
    started = time.monotonic()
    storage = open_storage(down.url, down.options)
    assert time.monotonic() - started < 0.1

    async def check() -> None:
        with pytest.raises(StorageUnavailable, match=f"storage {down.url}: cannot connect"):
            await storage.check()

    asyncio.run(check())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"known_hosts": "__empty__"}, "Host key is not trusted"),
        ({"client_keys": "__other__"}, "Permission denied"),
    ],
)
def test_an_untrusted_server_or_a_refused_key_is_storage_unavailable(
    backend: Backend, tmp_path: Path, change: dict[str, str], reason: str
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    other = tmp_path / "other_key"  # a key the server does not know
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    values = {"__empty__": str(empty), "__other__": [str(other)]}
    broken = backend.with_options(**{k: values[v] for k, v in change.items()})

    async def scenario(storage: Storage) -> None:
        with pytest.raises(StorageUnavailable, match=reason):
            await storage.check()

    run(scenario, broken)


def test_a_password_in_the_url_is_never_shown(backend: Backend) -> None:
    down = backend.unreachable()
    assert down is not None
    url = down.url.replace("@", ":s3cret@", 1)
    storage = open_storage(url, down.options)
    assert "s3cret" not in storage.url

    async def check() -> None:
        with pytest.raises(StorageUnavailable) as caught:
            await storage.check()
        assert "s3cret" not in str(caught.value)

    asyncio.run(check())
