"""The programs the harness runs in child processes: upload clients, a /healthz prober, a
burst of background uploads that ends in a SIGKILL, a GET timer, a storage library's own
`put_file`, and a memory prefaulter.

Why child processes: a client sharing the harness's (or the server's) interpreter would share
its GIL and CPU accounting. In a process of its own each client's CPU is its own, taken from
`resource.getrusage(RUSAGE_SELF)` here and reported in its output. Each subcommand prints one
JSON object on its last stdout line. Standard library only (plus fsspec and the storage
library for `put`), so the figures do not depend on an HTTP client library's overhead.
Timestamps are `time.monotonic()`: CLOCK_MONOTONIC is one clock for all processes on Linux,
so the harness can line up a prober's samples with an upload's start and end.

Run as `python benchmarks/loadgen.py SUBCOMMAND ...`; `--help` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import mmap
import os
import resource
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from typing import Any

HOST = "127.0.0.1"


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def split_url(url: str) -> tuple[int, str]:
    """(port, path) of an http://127.0.0.1:PORT/... URL; any other host is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname != HOST or parts.port is None:
        raise SystemExit(f"only http://{HOST}:PORT URLs are allowed, got {url!r}")
    return parts.port, parts.path or "/"


def multipart_frame(filename: str) -> tuple[str, bytes, bytes]:
    """(content type, bytes before the file, bytes after it) of a one-field multipart body."""
    boundary = "bench" + secrets.token_hex(16)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", head, tail


# ---------------------------------------------------------------- one streamed upload


def cmd_upload(args: argparse.Namespace) -> None:
    """POST one file as multipart, the file's bytes sent with sendfile(2) straight from the
    page cache: no userspace copy, so the client costs almost no CPU. It records when the
    last byte was handed to the kernel (`t_sent`) as well as when the answer came (`t_end`)."""
    port, path = split_url(args.url)
    size = os.path.getsize(args.file)
    content_type, head, tail = multipart_frame(os.path.basename(args.file))
    cpu0 = cpu_self()
    t_start = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout)
    t_sent = None
    send_error = None
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.putheader("Accept", "application/json")
        conn.endheaders()
        conn.send(head)
        assert conn.sock is not None
        with open(args.file, "rb") as f:
            conn.sock.sendfile(f)
        conn.send(tail)
        t_sent = time.monotonic()
    except OSError as e:  # the server may answer (413, 400) and close before the body ends
        send_error = str(e)
    try:
        resp = conn.getresponse()
        status, body = resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        status, body = 0, f"no response: {e}; send error: {send_error}"
    finally:
        conn.close()
    t_end = time.monotonic()
    emit(
        {
            "status": status,
            "body": body,
            "t_start": t_start,
            "t_sent": t_sent,
            "t_end": t_end,
            "bytes": size,
            "cpu_s": cpu_self() - cpu0,
        }
    )


# ---------------------------------------------------------------- many small uploads at once


async def _one_upload(port: int, path: str, payload: bytes, index: int) -> tuple[int, float, float]:
    """One upload on its own connection (`Connection: close`): (status, start, seconds)."""
    content_type, head, tail = multipart_frame(f"small-{index}.bin")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(head) + len(payload) + len(tail)}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.writelines([request, head, payload, tail])
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # headers and body, until the server closes
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    return status, t0, time.monotonic() - t0


async def _wave(port: int, path: str, count: int, payload: bytes, timeout: float) -> list[Any]:
    tasks = [_one_upload(port, path, payload, i) for i in range(count)]
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)


def cmd_concurrent(args: argparse.Namespace) -> None:
    """`count` uploads of `size` random bytes started at once, each on its own connection."""
    port, path = split_url(args.url)
    payload = os.urandom(args.size)
    cpu0 = cpu_self()
    t_start = time.monotonic()
    results = asyncio.run(_wave(port, path, args.count, payload, args.timeout))
    wall = time.monotonic() - t_start
    cpu = cpu_self() - cpu0
    latencies, statuses, errors = [], [], []
    for result in results:
        if isinstance(result, BaseException):
            errors.append(repr(result))
            continue
        status, _, seconds = result
        statuses.append(status)
        latencies.append(seconds)
    emit(
        {
            "latencies_s": latencies,
            "statuses": statuses,
            "errors": errors,
            "wall_s": wall,
            "cpu_s": cpu,
        }
    )


# ---------------------------------------------------------------- /healthz prober


def cmd_probe(args: argparse.Namespace) -> None:
    """Sequential GETs, one every `interval` seconds, each on a fresh connection like a load
    balancer's health check, until stdin closes (the harness's stop signal), `max_count`
    probes or `max_seconds`. Prints a `ready` line first, so the harness starts the upload
    only once this process has imported everything and warmed up."""
    port, path = split_url(args.url)

    def probe() -> tuple[float, float, int]:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(HOST, port, timeout=args.probe_timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = 0
        finally:
            conn.close()
        return t0, time.monotonic() - t0, status

    for _ in range(3):
        probe()
    stop = threading.Event()

    def wait_for_stdin_close() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_close, daemon=True).start()
    emit({"ready": True})
    samples: list[tuple[float, float, int]] = []
    deadline = time.monotonic() + args.max_seconds
    next_at = time.monotonic()
    while not stop.is_set() and len(samples) < args.max_count and time.monotonic() < deadline:
        samples.append(probe())
        next_at += args.interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    emit({"samples": samples})


# ---------------------------------------------------------------- a burst of uploads, then SIGKILL


async def _held_upload(
    port: int, path: str, payload: bytes, index: int, go: asyncio.Event
) -> tuple[int, bytes]:
    """One upload whose body is sent but for its closing boundary, which waits for `go`:
    the service cannot accept an upload before its last bytes, so every upload of a burst
    is accepted within a few milliseconds of the others."""
    content_type, head, tail = multipart_frame(f"burst-{index}.bin")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(head) + len(payload) + len(tail)}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.writelines([request, head, payload])
        await writer.drain()
        await go.wait()
        writer.write(tail)
        await writer.drain()
        status_line = await reader.readline()
        rest = await reader.read()  # headers and body, until the server closes
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    return (int(parts[1]) if len(parts) > 1 else 0), rest.partition(b"\r\n\r\n")[2]


async def _burst(args: argparse.Namespace, payloads: list[bytes]) -> dict[str, Any]:
    port, path = split_url(args.url)
    go = asyncio.Event()
    tasks = [
        asyncio.create_task(_held_upload(port, path, p, i, go)) for i, p in enumerate(payloads)
    ]
    # Bodies on their way; the server has read most of them once our sends stop blocking.
    await asyncio.sleep(args.settle)
    go.set()
    t_go = time.monotonic()
    answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), args.timeout)
    t_answered = time.monotonic()
    t_killed = None
    if args.kill_pid:
        os.kill(args.kill_pid, signal.SIGKILL)
        t_killed = time.monotonic()
    uploads: list[dict[str, Any]] = []
    for payload, answer in zip(payloads, answers, strict=True):
        if isinstance(answer, BaseException):
            uploads.append({"status": 0, "error": repr(answer)})
            continue
        status, body = answer
        upload: dict[str, Any] = {"status": status, "sha256": hashlib.sha256(payload).hexdigest()}
        try:
            upload["id"] = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            upload["error"] = body[:300].decode(errors="replace")
        uploads.append(upload)
    return {"uploads": uploads, "t_go": t_go, "t_answered": t_answered, "t_killed": t_killed}


def cmd_burst(args: argparse.Namespace) -> None:
    """`count` background uploads of `size` random bytes accepted at once, then (with
    `--kill-pid`) SIGKILL to the server the moment the last answer is in: the harness's
    way to leave accepted uploads mid-work. Killing from here, not from the harness, saves
    the ~50 ms a process exit and a JSON parse would give the jobs to finish."""
    payloads = [os.urandom(args.size) for _ in range(args.count)]
    emit(asyncio.run(_burst(args, payloads)))


# ---------------------------------------------------------------- GET latency


def cmd_get(args: argparse.Namespace) -> None:
    """`count` sequential GETs of one URL on fresh connections; each one's seconds and
    status. A fresh connection per request, as separate clients would come, so no request
    rides on another's warmed-up connection."""
    port, path = split_url(args.url)

    def get() -> tuple[float, int, int]:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return time.monotonic() - t0, resp.status, len(body)

    samples = [get() for _ in range(args.count)]
    emit({"seconds": [s for s, _, _ in samples], "statuses": [c for _, c, _ in samples]})


# ---------------------------------------------------------------- a library's own put_file


def cmd_put(args: argparse.Namespace) -> None:
    """The limit of a remote store: the fsspec library's own `put_file` of the file into
    the same emulator (s3fs, adlfs, gcsfs or sshfs, by `--protocol`), as a user of that
    library would upload it. Only the `put_file` call is timed; the object is removed after.
    `--options` are the filesystem's constructor arguments, as JSON."""
    import fsspec  # imported here: the other subcommands must not need it

    options = json.loads(args.options)
    fs = fsspec.filesystem(args.protocol, skip_instance_cache=True, **options)
    if args.makedirs:  # sshfs, unlike the object stores, needs the folder to exist
        fs.makedirs(args.target.rsplit("/", 1)[0], exist_ok=True)
    if args.warm_up:  # the library's first use (sessions, connections), not timed
        fs.put_file(args.warm_up, f"{args.target}.warm-up")
        fs.rm_file(f"{args.target}.warm-up")
    if args.handshake:
        # The harness prepares the machine and takes its first readings now, as it does
        # between a server's warm-up and its timed run; any line (or none) says go.
        print("warm", flush=True)
        sys.stdin.readline()
    cpu0 = cpu_self()
    t0 = time.monotonic()
    fs.put_file(args.file, args.target)
    seconds = time.monotonic() - t0
    cpu = cpu_self() - cpu0
    info = fs.info(args.target)
    fs.rm_file(args.target)
    emit({"seconds": seconds, "cpu_s": cpu, "stored_bytes": int(info["size"])})


# ---------------------------------------------------------------- memory prefault


def cmd_prefault(args: argparse.Namespace) -> None:
    """Make the VM take back `bytes` of memory from its host, then give it to the free list.

    This VM returns idle free memory to its host; the first write into such memory is several
    times slower, which swings a benchmark 2-5x. MAP_POPULATE faults the whole anonymous
    mapping in one system call; the harness runs one of these per core, in parallel.
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
    m = mmap.mmap(-1, args.bytes, flags=flags)
    if not populate:  # no MAP_POPULATE: touch one byte per page
        for offset in range(0, args.bytes, mmap.PAGESIZE):
            m[offset] = 1
    m.close()
    emit({"bytes": args.bytes})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upload", help="one multipart upload streamed from disk")
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("concurrent", help="many small uploads at once")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_concurrent)

    p = sub.add_parser("probe", help="sequential GETs until stdin closes")
    p.add_argument("url")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--max-count", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--probe-timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("burst", help="background uploads accepted at once, then SIGKILL")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=4 << 20)
    p.add_argument("--settle", type=float, default=0.5, help="seconds before the last bytes")
    p.add_argument("--kill-pid", type=int, help="SIGKILL this process once all answered")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_burst)

    p = sub.add_parser("get", help="sequential GETs of one URL, each timed")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("put", help="an fsspec library's own put_file of one file")
    p.add_argument("--protocol", required=True, help="s3, az, gs or ssh")
    p.add_argument("--options", default="{}", help="the filesystem's arguments, as JSON")
    p.add_argument("--target", required=True, help="where to put it, in the library's terms")
    p.add_argument("--makedirs", action="store_true", help="create the target's folder first")
    p.add_argument("--warm-up", help="a file to put (and remove) first, untimed")
    p.add_argument(
        "--handshake", action="store_true", help='say "warm", then wait for a line on stdin'
    )
    p.add_argument("file")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("prefault", help="fault in and release anonymous memory")
    p.add_argument("bytes", type=int)
    p.set_defaults(func=cmd_prefault)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
