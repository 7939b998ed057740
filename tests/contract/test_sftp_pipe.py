"""The bytes of SFTP uploads over OpenSSH's own `ssh` (storage/sftppipe.py).

`openssh_command` decides: options that all have an `ssh` equivalent and an
installed `ssh` take the pipe path, anything else falls back to asyncssh in
the process. Against the suite's real sshd: uploads over `ssh` are exact and
leave no part file, an `ssh` killed mid-upload fails that upload with a 503
that says so and the next upload starts another, a key with a passphrase
still uploads (over asyncssh), a refused connection says what `ssh` said in
bounded time, and no `ssh` outlives its storage.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.backends import Backend, sftp, tools
from tests.backends.sftp import SFTPBackend, SSHServer
from uploadsvc.errors import StorageUnavailable
from uploadsvc.storage import BLOCK_SIZE, Storage, sftppipe
from uploadsvc.storage.files import FLUSH_EVERY
from uploadsvc.storage.sftp import SFTPStorage
from uploadsvc.storage.sftppipe import PipeBulk, openssh_command
from uploadsvc.storage.sftpremote import AsyncSSHBulk

T = TypeVar("T")


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SFTPBackend]:
    """A fresh folder on the suite's sshd, with the suite's key and known_hosts."""
    for backend in sftp.make(request, tmp_path):
        assert isinstance(backend, SFTPBackend)
        yield backend


def run(fn: Callable[[SFTPStorage], Coroutine[Any, Any, T]], backend: Backend) -> T:
    storage = backend.storage()
    assert isinstance(storage, SFTPStorage)
    return asyncio.run(fn(storage))


def pipe_of(storage: Storage) -> PipeBulk:
    assert isinstance(storage, SFTPStorage)
    bulk = storage.fs.bulk
    assert isinstance(bulk, PipeBulk), f"the bytes go over {type(bulk).__name__}"
    return bulk


def blocks(data: bytes) -> list[bytes]:
    return [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]


async def upload(storage: Storage, key: str, data: bytes) -> None:
    async with storage.create(key) as writer:
        for block in blocks(data):
            await writer.write(block)
        info = await writer.commit()
    assert info.size == len(data)


async def read_all(storage: Storage, key: str) -> bytes:
    return b"".join([b async for b in storage.read(key)])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ssh_children() -> set[int]:
    """Our running (not zombie) child processes named `ssh`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if name == "ssh" and int(ppid) == os.getpid() and state != "Z":
            found.add(int(stat.parent.name))
    return found


def lingering(pids: list[int], within: float) -> list[int]:
    """Those of `pids` still there after `within` s: not ended, or ended and not
    reaped (a zombie still answers signal 0)."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            left.append(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def option_values(argv: list[str]) -> list[str]:
    """The values of every `-o` in `argv`."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]


def flag(argv: list[str], name: str) -> list[str]:
    """The values of every `name` flag (`-p`, `-l`, `-i`) in `argv`."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]


# openssh_command: asyncssh's options as ssh's, or why not.


def test_every_mapped_option_becomes_its_ssh_equivalent() -> None:
    argv, why = openssh_command(
        "files.example.org",
        {
            "port": 2222,
            "username": "uploads",
            "client_keys": "/keys/id_ed25519",
            "known_hosts": "/etc/uploadsvc/known_hosts",
            "connect_timeout": 7,
            "keepalive_interval": 11,
            "keepalive_count_max": 4,
            "encryption_algs": ["aes128-gcm@openssh.com", "aes256-ctr"],
        },
    )
    assert argv is not None, why
    assert why == ""
    assert argv[-3:] == ["--", "files.example.org", "sftp"]  # the host, then the subsystem
    assert "-s" in argv
    assert flag(argv, "-p") == ["2222"]
    assert flag(argv, "-l") == ["uploads"]
    assert flag(argv, "-i") == ["/keys/id_ed25519"]
    options = option_values(argv)
    for expected in (
        "BatchMode=yes",  # never a prompt on the service's terminal
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/etc/uploadsvc/known_hosts",
        "ConnectTimeout=7",
        "ServerAliveInterval=11",
        "ServerAliveCountMax=4",
        "Ciphers=aes128-gcm@openssh.com,aes256-ctr",
        "GlobalKnownHostsFile=/dev/null",  # the files given, and only those
        # Whatever ~/.ssh/config says: no master, no local command, no forwarding.
        "ControlMaster=no",
        "ControlPath=none",
        "PermitLocalCommand=no",
        "ClearAllForwardings=yes",
        "UpdateHostKeys=no",
    ):
        assert expected in options, (expected, argv)


@pytest.mark.parametrize(
    ("connect", "reason"),
    [
        ({"client_keys": ["/keys/100%.key"]}, "client_keys"),  # ssh expands %-tokens
        ({"known_hosts": "/etc/it's/known_hosts"}, "known_hosts"),
        ({"known_hosts": "/etc/a\tb"}, "known_hosts"),
        ({"username": "-oProxyCommand=x"}, "user name"),
        ({"username": "o'brien"}, "user name"),
        ({"connect_timeout": "30s"}, "connect_timeout"),  # asyncssh's time strings
        ({"keepalive_interval": True}, "keepalive_interval"),
    ],
)
def test_names_and_values_ssh_would_misread_stay_with_asyncssh(
    connect: dict[str, Any], reason: str
) -> None:
    argv, why = openssh_command("files.example.org", connect)
    assert argv is None and reason in why, (argv, why)


def test_a_host_that_looks_like_an_option_stays_with_asyncssh() -> None:
    argv, why = openssh_command("-oProxyCommand=touch /tmp/x", {})
    assert argv is None and "host" in why


def test_zero_means_no_bound_as_in_asyncssh() -> None:
    """asyncssh takes 0 as "no timeout" and "no keepalive": ssh's defaults, not 1 s."""
    argv, why = openssh_command("h", {"connect_timeout": 0, "keepalive_interval": 0})
    assert argv is not None, why
    options = option_values(argv)
    assert not [o for o in options if o.startswith(("ConnectTimeout", "ServerAliveInterval"))]
    argv, why = openssh_command("h", {"connect_timeout": 0.2})
    assert argv is not None and "ConnectTimeout=1" in option_values(argv)


def test_an_empty_known_hosts_is_the_default_as_in_asyncssh() -> None:
    for empty in ([], ""):
        argv, why = openssh_command("h", {"known_hosts": empty})
        assert argv is not None, why
        options = option_values(argv)
        assert "StrictHostKeyChecking=yes" in options
        assert not [o for o in options if o.startswith("UserKnownHostsFile")]


def test_lists_of_keys_and_known_hosts_files_are_all_passed() -> None:
    """TOML gives lists; a file name with a space is quoted for ssh's own parser."""
    argv, why = openssh_command(
        "h",
        {
            "client_keys": ["/keys/a", "/keys/b"],
            "known_hosts": ["/kh/one", "/kh/with space"],
        },
    )
    assert argv is not None, why
    assert flag(argv, "-i") == ["/keys/a", "/keys/b"]
    assert 'UserKnownHostsFile=/kh/one "/kh/with space"' in option_values(argv)


def test_known_hosts_none_trusts_any_server_as_asyncssh_does() -> None:
    argv, why = openssh_command("h", {"known_hosts": None})
    assert argv is not None, why
    options = option_values(argv)
    assert "StrictHostKeyChecking=no" in options
    assert "UserKnownHostsFile=/dev/null" in options
    assert "StrictHostKeyChecking=yes" not in options


def test_known_hosts_default_checks_against_ssh_s_own_file() -> None:
    """`()`, asyncssh's default (and CONNECT_DEFAULTS'): ~/.ssh/known_hosts, strictly."""
    for connect in ({"known_hosts": ()}, {}):
        argv, why = openssh_command("h", connect)
        assert argv is not None, why
        options = option_values(argv)
        assert "StrictHostKeyChecking=yes" in options
        assert not [o for o in options if o.startswith("UserKnownHostsFile=")], argv


def test_without_keys_ssh_is_not_limited_to_given_identities() -> None:
    argv, why = openssh_command("h", {})
    assert argv is not None, why
    assert flag(argv, "-i") == []
    assert "IdentitiesOnly=yes" not in option_values(argv)


@pytest.mark.parametrize(
    ("connect", "named"),
    [
        ({"password": "hunter2"}, "password"),
        ({"client_keys": ["/keys/k"], "passphrase": "secret"}, "passphrase"),
        ({"port": 22, "password": "x", "agent_path": "/run/agent"}, "agent_path, password"),
    ],
)
def test_an_option_ssh_cannot_take_falls_back_and_says_which(
    connect: dict[str, Any], named: str
) -> None:
    argv, why = openssh_command("h", connect)
    assert argv is None
    assert named in why
    assert "hunter2" not in why and "secret" not in why  # names, never values


@pytest.mark.parametrize(
    "connect",
    [
        {"client_keys": [("/keys/k", "/keys/k-cert.pub")]},  # asyncssh's (key, cert) pairs
        {"known_hosts": 42},
        {"encryption_algs": [1, 2]},
    ],
)
def test_values_that_are_not_file_names_fall_back(connect: dict[str, Any]) -> None:
    argv, why = openssh_command("h", connect)
    assert argv is None
    assert why


def test_without_ssh_installed_the_bytes_go_over_asyncssh(
    monkeypatch: pytest.MonkeyPatch, server: SFTPBackend
) -> None:
    monkeypatch.setattr("uploadsvc.storage.sftppipe.shutil.which", lambda *a, **k: None)
    argv, why = openssh_command("h", {"port": 22})
    assert argv is None
    assert "ssh" in why and "not installed" in why
    # And a storage built meanwhile takes the asyncssh path.
    storage = server.storage()
    assert isinstance(storage, SFTPStorage)
    assert isinstance(storage.fs.bulk, AsyncSSHBulk)


# Against the suite's sshd.


def test_uploads_go_over_ssh_and_arrive_exact(server: SFTPBackend) -> None:
    """Past FLUSH_EVERY, so the writeback's fsyncs go over the second ssh session;
    the commit fsyncs the file and then its folder."""
    data = os.urandom(FLUSH_EVERY + 3 * BLOCK_SIZE + 17)
    folders: list[str] = []

    async def scenario(storage: SFTPStorage) -> tuple[set[int], set[int], bytes]:
        bulk = pipe_of(storage)
        fsync_folder = storage.fs.fsync_folder
        storage.fs.fsync_folder = lambda folder: (folders.append(folder), fsync_folder(folder))[1]
        before = ssh_children()
        await asyncio.to_thread(bulk.session, "fsyncs")  # running: the writeback uses it
        await upload(storage, "obj", data)
        started = ssh_children() - before
        sessions = {bulk.session("writes").pid, bulk.session("fsyncs").pid}
        return started, sessions, await read_all(storage, "obj")

    started, sessions, back = run(scenario, server)
    assert len(sessions) == 2
    assert sessions == started, "the upload did not go over the ssh sessions"
    assert digest(back) == digest(data)
    assert digest((server.folder / "obj").read_bytes()) == digest(data)
    assert server.contents() == ["obj"]  # no .part left
    assert folders == [str(server.folder)]  # the rename made durable


def test_without_a_session_for_the_fsyncs_an_upload_still_commits(
    server: SFTPBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writeback is skipped, never waited for; the commit's own fsync holds."""
    monkeypatch.setattr(PipeBulk, "running", lambda self, purpose: None)
    data = os.urandom(FLUSH_EVERY + 2 * BLOCK_SIZE)
    run(lambda storage: upload(storage, "obj", data), server)
    assert digest((server.folder / "obj").read_bytes()) == digest(data)
    assert server.contents() == ["obj"]


def test_check_starts_the_ssh_session(server: SFTPBackend) -> None:
    """Start-up and /healthz must see a pipe path that cannot work: check() starts it."""

    async def scenario(storage: SFTPStorage) -> tuple[set[int], int]:
        bulk = pipe_of(storage)
        before = ssh_children()
        await storage.check()
        return ssh_children() - before, bulk.session("writes").pid

    started, pid = run(scenario, server)
    assert started == {pid}


def test_an_ssh_killed_mid_upload_fails_that_upload_only(server: SFTPBackend) -> None:
    """The writes fail with a 503 naming ssh, the abort leaves nothing, and the
    next upload on the same storage runs over a new ssh."""
    data = os.urandom(2 * BLOCK_SIZE + 5)

    async def scenario(storage: SFTPStorage) -> tuple[int, int, str, list[str], bytes]:
        bulk = pipe_of(storage)
        async with storage.create("obj") as writer:
            for _ in range(3):
                await writer.write(os.urandom(BLOCK_SIZE))
            await writer.idle()  # those writes are on their way
            killed = bulk.session("writes").pid
            os.kill(killed, signal.SIGKILL)
            with pytest.raises(StorageUnavailable) as failed:
                for _ in range(16):
                    await writer.write(os.urandom(BLOCK_SIZE))
                await writer.commit()
        after_abort = server.contents()
        await upload(storage, "again", data)
        back = await read_all(storage, "again")
        return killed, bulk.session("writes").pid, str(failed.value), after_abort, back

    killed, pid, detail, after_abort, back = run(scenario, server)
    assert "ssh" in detail, detail
    assert after_abort == [], "the abort left a part file or the key"
    assert pid != killed
    assert digest(back) == digest(data)
    assert server.contents() == ["again"]
    assert lingering([killed], within=5) == [], "the killed ssh was never reaped"


@pytest.fixture
def passphrase_key(
    sshd: SSHServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A key with the passphrase "secret", authorized on the suite's sshd for this
    test only (sshd reads authorized_keys at every login)."""
    kind: list[str] = request.param
    key = tmp_path / "passphrase_key"
    keygen = tools.apt_program("ssh-keygen", "openssh-client")
    subprocess.run(
        [keygen, "-q", *kind, "-N", "secret", "-C", f"test-{os.getpid()}", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    line = (tmp_path / "passphrase_key.pub").read_text().strip()
    authorized = sshd.log.parent / "authorized_keys"  # serve()'s home
    with authorized.open("a") as f:
        f.write(line + "\n")
    try:
        yield key
    finally:
        kept = [kept for kept in authorized.read_text().splitlines() if kept != line]
        staged = authorized.with_name("authorized_keys.tmp")
        staged.write_text("".join(kept_line + "\n" for kept_line in kept))
        os.replace(staged, authorized)  # sshd never reads half a file


@pytest.mark.parametrize(
    "passphrase_key",
    [
        pytest.param(["-t", "ed25519"], id="ed25519"),  # OpenSSH format: asyncssh needs bcrypt
        pytest.param(["-t", "ecdsa", "-m", "PEM"], id="ecdsa-pem"),
    ],
    indirect=True,
)
def test_a_key_with_a_passphrase_uploads_over_asyncssh(
    server: SFTPBackend, passphrase_key: Path
) -> None:
    """ssh cannot be given a passphrase (BatchMode): the bytes fall back to asyncssh."""
    backend = server.with_options(client_keys=[str(passphrase_key)], passphrase="secret")
    data = os.urandom(3 * BLOCK_SIZE + 1)

    async def scenario(storage: SFTPStorage) -> tuple[object, set[int], bytes]:
        before = ssh_children()
        await storage.check()
        await upload(storage, "obj", data)
        return storage.fs.bulk, ssh_children() - before, await read_all(storage, "obj")

    bulk, started, back = run(scenario, backend)
    assert not isinstance(bulk, PipeBulk)
    assert isinstance(bulk, AsyncSSHBulk)
    assert started == set(), "an ssh was started"
    assert digest(back) == digest(data)
    assert server.contents() == ["obj"]


def test_a_refused_connection_says_what_ssh_said(server: SFTPBackend) -> None:
    """Every time: ssh refused at once is the race between its exit and our first
    request, so try a few starts; each must carry ssh's own words."""
    down = server.unreachable()  # nothing listens; connect_timeout 3
    bulk = pipe_of(down.storage())
    for _ in range(10):
        started = time.monotonic()
        with pytest.raises(OSError) as failed:
            bulk.check()
        assert time.monotonic() - started < 5
        assert "Connection refused" in str(failed.value)
        assert "ssh" in str(failed.value)


def test_a_refused_connection_says_why_in_a_busy_process_too(
    server: SFTPBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service busy elsewhere (the GIL) sends its first request after ssh has
    already given up: the error must still be what ssh said, not a broken pipe."""
    original = sftppipe._write_all

    def late(fd: int, data: memoryview | bytes) -> None:
        time.sleep(0.3)  # ssh is refused in milliseconds
        original(fd, data)

    monkeypatch.setattr(sftppipe, "_write_all", late)
    bulk = pipe_of(server.unreachable().storage())
    with pytest.raises(OSError) as failed:
        bulk.check()
    assert "Connection refused" in str(failed.value)


def test_a_silent_server_fails_within_the_connect_timeout(server: SFTPBackend) -> None:
    """A port that accepts and never says a word: ssh gives up after ConnectTimeout
    (the handshake's own bound, 10 s later, is the backstop)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        quiet = server.at(f"127.0.0.1:{silent.getsockname()[1]}").with_options(connect_timeout=1)
        bulk = pipe_of(quiet.storage())
        started = time.monotonic()
        with pytest.raises(OSError, match="ssh") as failed:
            bulk.check()
        took = time.monotonic() - started
    assert took < 4, f"only the handshake's backstop stopped it ({took:.1f} s): {failed.value}"


def test_no_ssh_outlives_its_storage(server: SFTPBackend) -> None:
    """Dropping the storage closes the sessions' stdin: both ssh end and are reaped."""
    data = os.urandom(FLUSH_EVERY + BLOCK_SIZE)  # the fsyncs' session too
    storage = server.storage()
    bulk = pipe_of(storage)

    async def scenario(storage: Storage) -> None:
        await storage.check()
        await upload(storage, "obj", data)

    asyncio.run(scenario(storage))
    pids = [bulk.session("writes").pid, bulk.session("fsyncs").pid]
    assert set(pids) <= ssh_children()
    del storage, bulk
    gc.collect()
    left = lingering(pids, within=5)
    assert left == [], f"ssh {left} outlived its storage"
