"""The bytes of SFTP uploads over OpenSSH's own client: `ssh -s ... sftp`, spoken to
through its pipes.

Why: asyncssh frames and encrypts every 32 KiB SSH packet in Python, on the
GIL the service receives uploads with. Measured here on 2 cores, a 256 MiB
upload then cost the service 4.7-6.6 CPU s per GiB and ran at 0.73-0.90x
sshfs's own `put_file` into the same server; moving asyncssh into a process
of its own gave back almost nothing (its pipe and threads ate the gain).
OpenSSH's client does the SSH side in C, on another core: the service only
frames SFTP write requests of up to 255 KiB (a thousand per 256 MiB), and
the same 256 MiB took ~0.14 CPU s in Python, ~0.27 in `ssh`.

Only the calls an upload's part file needs are spoken here (SFTP v3: open,
write, close, and OpenSSH's `fsync@openssh.com` and `limits@openssh.com`);
everything else stays on asyncssh (sftpremote.py), which makes the folder
when an open finds it missing. `openssh_command` says when this path is
taken: the options must all have an `ssh` equivalent (host key checking,
keys, timeouts, ciphers, ...), and `ssh` must be installed; otherwise the
bytes go over asyncssh, as before, and the log says why.

One `_Session` is one `ssh` process and one SFTP channel. Requests from any
thread are written whole under a lock; a reader thread hands each reply to
the future its request id names. `PipeBulk` keeps two sessions, started on
first need and again after they ended: one for the writes, and one for the
writeback's fsyncs (OpenSSH answers a channel's requests in order: an fsync
among the writes would stop them). When `ssh` ends, whatever waits on it
fails with an OSError naming what `ssh` said, and the next call starts
another. `ssh` ends when its stdin closes, so it never outlives the service.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import shutil
import struct
import subprocess
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import IO, Any, Generic, Self, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# SFTP v3 packet types (draft-ietf-secsh-filexfer-02) and open flags.
_INIT, _VERSION, _OPEN, _CLOSE, _WRITE = 1, 2, 3, 4, 6
_STATUS, _HANDLE, _EXTENDED, _EXTENDED_REPLY = 101, 102, 200, 201
_READ, _WRITE_FLAG, _CREATE, _TRUNCATE = 0x01, 0x02, 0x08, 0x10
_OK, _NO_SUCH_FILE, _PERMISSION_DENIED = 0, 2, 3
_FSYNC = b"fsync@openssh.com"
_LIMITS = b"limits@openssh.com"

#: The largest write request when the server does not say (limits@openssh.com).
SAFE_WRITE = 16 << 10
#: Pipe capacity asked for (Linux's ceiling for unprivileged processes): a
#: write request per system call, not four.
_PIPE_SIZE = 1 << 20
#: The handshake's own bound, beyond `ssh`'s ConnectTimeout (which covers the
#: TCP connection only).
_HANDSHAKE_EXTRA = 10.0
#: Lines of `ssh`'s stderr kept to explain its end.
_STDERR_LINES = 5
#: A WRITE request's bytes besides its data (type, id, handle, offset, length).
_WRITE_OVERHEAD = 1024
#: No reply here is larger (OpenSSH's own bound on SFTP packets is 256 KiB):
#: anything else means `ssh`'s stdout carries something other than SFTP.
_MAX_REPLY = 256 << 10

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")

#: `[storage.options]` (asyncssh's names) this module can pass to `ssh`;
#: any other option sends the bytes over asyncssh instead.
_MAPPED = frozenset(
    {
        "port",
        "username",
        "client_keys",
        "known_hosts",
        "connect_timeout",
        "keepalive_interval",
        "keepalive_count_max",
        "encryption_algs",
    }
)
#: Whatever the user's ssh_config says, these sessions are plain ones: no
#: multiplexing (a master would outlive the service), no local command (its
#: output would land in the SFTP replies), no forwardings, a stdin that is
#: read, and no rewriting of known_hosts files (asyncssh never does).
_PLAIN = [
    *("-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ControlMaster=no"),
    *("-o", "ControlPath=none", "-o", "PermitLocalCommand=no", "-o", "ClearAllForwardings=yes"),
    *("-o", "StdinNull=no", "-o", "UpdateHostKeys=no"),
]
#: What ssh would expand or split in a file name or a user name (tokens, quotes,
#: `~`-less whitespace): such names stay with asyncssh, which takes them as given.
_SPECIAL = frozenset("'\"\\%#\t\n\r{")


def openssh_command(host: str, connect: dict[str, Any]) -> tuple[list[str] | None, str]:
    """The `ssh` command for these options, or None and why not."""
    program = shutil.which("ssh")
    if program is None:
        return None, "OpenSSH's ssh is not installed"
    unmapped = sorted(set(connect) - _MAPPED)
    if unmapped:
        return None, f"ssh has no equivalent of {', '.join(unmapped)}"
    if host.startswith("-") or _special(host):
        return None, "ssh would misread the host name"
    argv = [program, "-s", "-T", "-x", "-a", "-e", "none", *_PLAIN]
    if "port" in connect:
        argv += ["-p", str(int(connect["port"]))]
    if "username" in connect:
        user = connect["username"]
        if not isinstance(user, str) or user.startswith("-") or _special(user):
            return None, "ssh would refuse or misread the user name"
        argv += ["-l", user]
    keys = connect.get("client_keys")
    if keys is not None:
        if not _names(keys):
            return None, "client_keys must be plain file names for ssh"
        for key in [keys] if isinstance(keys, str) else keys:
            argv += ["-i", key]
        argv += ["-o", "IdentitiesOnly=yes"]
    known = connect.get("known_hosts", ())
    if known is None:  # asyncssh's "trust any server"
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "GlobalKnownHostsFile=/dev/null"]
    elif not known:  # asyncssh's default (any empty value), and ssh's: ~/.ssh/known_hosts
        argv += ["-o", "StrictHostKeyChecking=yes"]
    elif _names(known):
        files = [known] if isinstance(known, str) else list(known)
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null"]
        argv += ["-o", "UserKnownHostsFile=" + " ".join(_quoted(f) for f in files)]
    else:
        return None, "known_hosts must be plain file names for ssh"
    for option, name in (
        ("connect_timeout", "ConnectTimeout"),
        ("keepalive_interval", "ServerAliveInterval"),
        ("keepalive_count_max", "ServerAliveCountMax"),
    ):
        value = connect.get(option)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return None, f"{option} is not a number of seconds ssh can take"
        if value:  # 0: none (asyncssh's meaning), which is ssh's default too
            argv += ["-o", f"{name}={max(1, math.ceil(value))}"]
    ciphers = connect.get("encryption_algs")
    if ciphers is not None:
        if not _names(ciphers):
            return None, "encryption_algs must be names"
        names = [ciphers] if isinstance(ciphers, str) else list(ciphers)
        argv += ["-o", "Ciphers=" + ",".join(names)]
    return [*argv, "--", host, "sftp"], ""


def _names(value: object) -> bool:
    """A string, or a list or tuple of strings (TOML gives lists), none that ssh
    would expand or split."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)):
        return False
    return all(isinstance(v, str) and v and not _special(v) for v in values)


def _special(name: str) -> bool:
    return any(c in _SPECIAL for c in name)


def _quoted(path: str) -> str:
    return f'"{path}"' if " " in path else path


class Window(Generic[T]):
    """Writes in flight, oldest first, and the bytes they carry: `settle` waits for
    the oldest (`check` raises a failed one's error) until what is left fits."""

    def __init__(self, check: Callable[[Future[T]], object]) -> None:
        self._check = check
        self._writes: deque[tuple[Future[T], int]] = deque()
        self._bytes = 0

    def add(self, write: Future[T], size: int) -> None:
        self._writes.append((write, size))
        self._bytes += size

    def settle(self, allowed: int) -> None:
        while self._writes and self._bytes > max(allowed, 0):
            write, size = self._writes.popleft()
            self._bytes -= size
            self._check(write)


class PipeBulk:
    """Where the bytes of uploads go: part files on `ssh` sessions (see the module
    docstring). `make_folder` makes a missing folder (over asyncssh)."""

    def __init__(
        self,
        url: str,
        argv: list[str],
        window: int,
        connect_timeout: float,
        make_folder: Callable[[str], None],
    ) -> None:
        self._url = url
        self._argv = argv
        self._window = window
        self._handshake_timeout = (connect_timeout or _HANDSHAKE_EXTRA) + _HANDSHAKE_EXTRA
        self._make_folder = make_folder
        self._sessions: dict[str, _Session] = {}
        self._starting = {purpose: threading.Lock() for purpose in ("writes", "fsyncs")}
        self._in_background: set[str] = set()
        self._background_lock = threading.Lock()

    def open(self, path: str) -> PipeFile:
        """A part file at `path`: truncated if it exists, its folder made if missing."""
        session = self.session("writes")
        flags = _WRITE_FLAG | _CREATE | _TRUNCATE
        try:
            handle = session.open(path, flags)
        except FileNotFoundError:
            self._make_folder(path.rsplit("/", 1)[0] or "/")
            handle = session.open(path, flags)
        return PipeFile(self, session, path, handle, self._window)

    def check(self) -> None:
        """Start the writes' session if it is not running (start-up and /healthz)."""
        self.session("writes")

    def session(self, purpose: str) -> _Session:
        """The running session for `purpose` ("writes" or "fsyncs"), started if need be."""
        with self._starting[purpose]:
            session = self._sessions.get(purpose)
            if session is None or session.ended:
                session = _Session.start(self._argv, self._handshake_timeout, self._url)
                self._sessions[purpose] = session
            return session

    def running(self, purpose: str) -> _Session | None:
        """The session for `purpose` if it runs; else None, and one starts in the
        background (the writeback never waits for a handshake)."""
        session = self._sessions.get(purpose)
        if session is not None and not session.ended:
            return session
        with self._background_lock:
            if purpose in self._in_background:
                return None
            self._in_background.add(purpose)
        threading.Thread(
            target=self._start_in_background,
            args=(purpose,),
            name=f"uploadsvc-ssh-{purpose}-start",
            daemon=True,
        ).start()
        return None

    def stop(self) -> None:
        """End every `ssh` now (they would end with this object anyway)."""
        for session in list(self._sessions.values()):
            session.stop()

    def _start_in_background(self, purpose: str) -> None:
        try:
            self.session(purpose)
        except OSError as e:  # the writeback is skipped meanwhile; the commit's fsync holds
            log.warning("storage %s: no ssh session for %s: %s", self._url, purpose, e)
        finally:
            with self._background_lock:
                self._in_background.discard(purpose)


class PipeFile:
    """A part file written over a session: `sftpremote.Part`'s calls.

    Writes return while up to `window` bytes are unanswered; an error of one
    surfaces at a later `write` or at `flush`, and `close` after an error
    only cleans up, so an abort can go on to remove the part file.

    The writeback fsyncs the file through a second handle, on the "fsyncs"
    session, and never makes the upload wait: while that session starts or
    the handle opens, `start_writeback` answers False. The commit's fsync
    goes over the writes' own handle once every write is answered, so the
    bytes are durable on the server that took them whatever the writeback did.
    """

    def __init__(
        self, bulk: PipeBulk, session: _Session, path: str, handle: bytes, window: int
    ) -> None:
        self._bulk = bulk
        self._session = session
        self._path = path
        self._handle = handle
        self._window = window
        self._offset = 0
        self._unanswered: Window[bytes] = Window(lambda answer: _expect_status(answer.result()))
        self._writeback: Future[bytes] | None = None
        # The second handle: its session, and the answer to opening it.
        self._behind: tuple[_Session, Future[bytes]] | None = None
        self._closed = False

    def write(self, block: bytes) -> int:
        view = memoryview(block)
        most = self._session.max_write
        for at in range(0, len(view), most):
            piece = view[at : at + most]
            self._unanswered.settle(self._window - len(piece))
            offset = self._offset + at
            answer = self._session.request(
                _WRITE, _string(self._handle), _U64.pack(offset), _U32.pack(len(piece)), data=piece
            )
            self._unanswered.add(answer, len(piece))
        self._offset += len(block)
        return len(block)

    def flush(self) -> None:
        self._unanswered.settle(0)

    def start_writeback(self) -> bool:
        """Start an fsync of the bytes the server has; False while the last one runs,
        while its handle is not open yet, and on a server without fsync@openssh.com."""
        if not self._session.has_fsync:
            return False
        if self._writeback is not None:
            if not self._writeback.done():
                return False
            _expect_status(self._writeback.result())  # its error, if any
            self._writeback = None
        if self._behind is None:
            session = self._bulk.running("fsyncs")
            if session is not None:
                opening = session.request(_OPEN, *_open_fields(self._path, _READ))
                self._behind = (session, opening)
            return False
        session, opening = self._behind
        if not opening.done() or session.ended:
            return False
        handle = _handle(opening.result())
        self._writeback = session.request(_EXTENDED, _string(_FSYNC), _string(handle))
        return True

    def fsync(self) -> None:
        """Make every byte written durable: waits for the writes, the writeback and
        an fsync of its own."""
        self.flush()
        if not self._session.has_fsync:
            return  # the server's own pace
        if self._writeback is not None:
            writeback, self._writeback = self._writeback, None
            _expect_status(writeback.result())
        fsync = self._session.request(_EXTENDED, _string(_FSYNC), _string(self._handle))
        _expect_status(fsync.result())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.flush()  # reported by flush already, or we are aborting
            if self._writeback is not None:
                self._writeback.result()
        try:
            if self._behind is not None:
                session, opening = self._behind
                with contextlib.suppress(OSError):  # opened, or it was not
                    _close_handle(session, _handle(opening.result()))
        finally:
            _close_handle(self._session, self._handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_handle(session: _Session, handle: bytes) -> None:
    """Close `handle`; quietly when its session has ended, which closed it already."""
    try:
        _expect_status(session.request(_CLOSE, _string(handle)).result())
    except OSError:
        if not session.ended:
            raise  # the server refused


class _Session:
    """One `ssh` process speaking SFTP on its stdin and stdout.

    Two locks: `_sending` keeps requests whole on the pipe (a writer may wait
    there while `ssh` is busy), `_state` guards the requests waiting for an
    answer, so the reader never waits behind a writer.
    """

    def __init__(self, proc: subprocess.Popen[bytes], requests: int, url: str) -> None:
        self.pid = proc.pid
        self.ended = False
        self.max_write = SAFE_WRITE
        self.has_fsync = False
        self.url = url
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._proc = proc
        self._requests = requests  # a raw fd: `ssh` reads until it closes
        self._sending = threading.Lock()
        self._state = threading.Lock()
        self._waiting: dict[int, Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._why_ended = "ssh ended"
        self._gone = threading.Event()  # set once the reader knows why
        self._closer = weakref.finalize(self, _close_quietly, requests)

    @classmethod
    def start(cls, argv: Sequence[str], timeout: float, url: str) -> _Session:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            # Not in the service's process group: a Ctrl-C meant for the
            # service must not cut the uploads its graceful shutdown finishes.
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        # Only this object may hold `ssh`'s stdin (not the Popen, which the
        # reader keeps to reap it): when it goes, `ssh` reads the end and exits.
        requests = os.dup(proc.stdin.fileno())
        proc.stdin.close()
        proc.stdin = None
        session = cls(proc, requests, url)
        said = threading.Thread(
            target=_read_stderr,
            args=(proc, weakref.ref(session)),
            name=f"uploadsvc-ssh-{proc.pid}-stderr",
            daemon=True,
        )
        said.start()
        threading.Thread(
            target=_read_replies,
            args=(proc, weakref.ref(session), said),
            name=f"uploadsvc-ssh-{proc.pid}-replies",
            daemon=True,
        ).start()
        try:
            if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
                with contextlib.suppress(OSError):
                    fcntl.fcntl(requests, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            session.handshake(timeout)
        except BaseException:
            session.stop()
            raise
        return session

    def handshake(self, timeout: float) -> None:
        """SFTP's INIT and VERSION, then the server's limits, within `timeout` s."""
        deadline = time.monotonic() + timeout
        version = self.request(_INIT, _U32.pack(3), numbered=False)
        try:
            extensions = _extensions(version.result(timeout))
            self.has_fsync = _FSYNC in extensions
            if _LIMITS in extensions:
                asked = self.request(_EXTENDED, _string(_LIMITS))
                limits = asked.result(max(0.0, deadline - time.monotonic()))
                if limits[0] == _EXTENDED_REPLY and len(limits) >= 37:
                    packet, _, write = struct.unpack_from("!QQQ", limits, 5)
                    most = min(write, packet - _WRITE_OVERHEAD) if packet else write
                    self.max_write = most if most > 0 else SAFE_WRITE
        except TimeoutError:
            raise OSError(f"ssh did not start an SFTP session within {timeout:.0f} s") from None
        except (struct.error, IndexError) as e:
            raise OSError(f"ssh's SFTP handshake was garbled: {e}") from None

    def open(self, path: str, flags: int) -> bytes:
        """A handle on `path` (no attributes: the server's defaults)."""
        return _handle(self.request(_OPEN, *_open_fields(path, flags)).result())

    def request(
        self, kind: int, *fields: bytes, data: memoryview | bytes = b"", numbered: bool = True
    ) -> Future[bytes]:
        """Send one request; its reply (type byte first) settles the future, or an
        OSError if `ssh` ends first. INIT is the one request without an id."""
        future: Future[bytes] = Future()
        with self._sending:
            with self._state:
                if self.ended:
                    raise OSError(self._why_ended)
                number = next(self._ids) & 0xFFFFFFFF if numbered else 0
                self._waiting[number] = future
            head = b"".join([bytes([kind]), _U32.pack(number) if numbered else b"", *fields])
            try:
                _write_all(self._requests, _U32.pack(len(head) + len(data)) + head)
                if data:
                    _write_all(self._requests, data)
            except OSError:
                with self._state:
                    self._waiting.pop(number, None)
            else:
                return future
        # `ssh` went away: give the reader (bounded) the time to learn why.
        self._gone.wait(_HANDSHAKE_EXTRA)
        raise OSError(self._why_ended)

    def answer(self, number: int, reply: bytes) -> None:
        with self._state:
            future = self._waiting.pop(number, None)
        if future is not None:
            future.set_result(reply)

    def end(self, why: str) -> None:
        """`ssh` is gone: every request still waiting fails, saying why."""
        with self._state:
            self.ended = True
            self._why_ended = why
            waiting, self._waiting = self._waiting, {}
        self._gone.set()
        for future in waiting.values():
            future.set_exception(OSError(why))

    def stop(self) -> None:
        """End `ssh` now: its stdin closes, and it is killed (one that is not reading
        yet, stuck in a login, must not linger); the reader reaps it."""
        with self._sending:  # never while a request is being written
            with self._state:
                self.ended = True
            self._closer()
        with contextlib.suppress(OSError):
            self._proc.kill()


def _read_replies(
    proc: subprocess.Popen[bytes],
    session: Callable[[], _Session | None],
    said: threading.Thread,
) -> None:
    """The reader thread: replies to their requests until `ssh`'s stdout ends; then
    what `ssh` said last (`said` reads it) is why every waiting request fails."""
    assert proc.stdout is not None
    out = proc.stdout
    why = ""
    try:
        while (size := _read_exactly(out, 4)) is not None:
            length = _U32.unpack(size)[0]
            if not 5 <= length <= _MAX_REPLY:
                why = f"its replies are not SFTP (a packet of {length} bytes)"
                break
            reply = _read_exactly(out, length)
            if reply is None:
                break
            running = session()
            if running is None:
                break
            # VERSION carries no id: it answers INIT, request 0.
            number = 0 if reply[0] == _VERSION else _U32.unpack_from(reply, 1)[0]
            running.answer(number, reply)
            del running  # not held while blocked: the session must be free to go
    except (OSError, struct.error, IndexError) as e:
        why = f"reading its replies failed: {e}"
    finally:
        out.close()
        with contextlib.suppress(OSError):
            proc.kill()  # it may still run (a garbled reply): it must not linger
        status = proc.wait()
        said.join(_HANDSHAKE_EXTRA)
        running = session()
        if running is not None:
            words = "; ".join(running.stderr)
            why = why or (f"ssh said: {words}" if words else f"ssh exited with status {status}")
            running.end(why)


def _read_stderr(proc: subprocess.Popen[bytes], session: Callable[[], _Session | None]) -> None:
    """Keeps `ssh`'s last words (why it could not connect, say) and logs them."""
    assert proc.stderr is not None
    with proc.stderr:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            running = session()
            if line and running is not None:
                running.stderr.append(line)
                log.warning("ssh (pid %d) for %s: %s", proc.pid, running.url, line)
            del running  # not held while blocked: the session must be free to go


def _extensions(reply: bytes) -> set[bytes]:
    """The extension names of a VERSION reply."""
    if reply[0] != _VERSION:
        raise OSError(f"SFTP answered INIT with packet type {reply[0]}")
    names: set[bytes] = set()
    at = 5  # type, version
    while at < len(reply):
        name, at = _read_string(reply, at)
        _, at = _read_string(reply, at)
        names.add(name)
    return names


def _expect_status(reply: bytes) -> None:
    """Return on a STATUS reply saying OK; raise the OSError any other carries."""
    if reply[0] != _STATUS:
        raise OSError(f"SFTP answered with packet type {reply[0]}, not a status")
    code = _U32.unpack_from(reply, 5)[0]
    if code == _OK:
        return
    message = _read_string(reply, 9)[0].decode("utf-8", "replace") if len(reply) > 12 else ""
    if code == _NO_SUCH_FILE:
        raise FileNotFoundError(2, message or "No such file")
    if code == _PERMISSION_DENIED:
        raise PermissionError(13, message or "Permission denied")
    raise OSError(message or f"SFTP status {code}")


def _handle(reply: bytes) -> bytes:
    """The handle an OPEN's HANDLE reply carries; the error its STATUS says."""
    if reply[0] == _HANDLE:
        return _read_string(reply, 5)[0]
    _expect_status(reply)
    raise OSError("SFTP answered an open with OK but no handle")


def _open_fields(path: str, flags: int) -> tuple[bytes, ...]:
    """An OPEN's fields: the name, the flags, and no attributes (the server's defaults)."""
    return _string(path.encode()), _U32.pack(flags), _U32.pack(0)


def _string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _read_string(data: bytes, at: int) -> tuple[bytes, int]:
    size = _U32.unpack_from(data, at)[0]
    return data[at + 4 : at + 4 + size], at + 4 + size


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    parts: list[bytes] = []
    wanted = size
    while wanted:
        part = stream.read(wanted)
        if not part:
            return None
        parts.append(part)
        wanted -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
