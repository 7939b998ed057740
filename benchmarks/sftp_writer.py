"""The SFTP writer against sshfs's own `put_file`, on a local OpenSSH server.

    .venv/bin/python -m benchmarks.sftp_writer [--size-mib 256] [--rounds 5] [--same-cipher]
        [--window-mib N]

Two rows, alternated round by round against one `sshd` on 127.0.0.1 (the
tests' set-up: tests/backends/sftp.py), each in a fresh Python process so its
peak RSS is its own:

* `put_file`: sshfs's `SSHFileSystem.put_file` of a local file (asyncssh's
  parallel copier: 128 requests of 255 KiB in flight);
* `writer`: the same file read in 1 MiB blocks into `SFTPStorage.create(...)`
  and `commit()` (part file, fsync, posix-rename, folder fsync), the path
  every upload takes.

The writer runs with the backend's defaults, which prefer AES-GCM to
asyncssh's ChaCha20 (sftp.py says why); `put_file` with sshfs's. With
`--same-cipher`, both rows negotiate the same cipher (AES-GCM), which
compares the two write paths alone.

Before each timed row, scratch data of twice the file size is written and
deleted (FACTS.md: the first touch of fresh memory is slow on this VM). The
machine is shared by the client, sshd and anything else running: compare
medians, and rows of the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.backends.sftp import serve

MIB = 1 << 20


def prefault(folder: Path, size: int) -> None:
    scratch = folder / "scratch"
    block = os.urandom(MIB)
    with scratch.open("wb") as f:
        for _ in range(2 * size // MIB):
            f.write(block)
    scratch.unlink()


def put_file(server: dict[str, Any], source: Path, target: Path) -> tuple[float, float]:
    from sshfs import SSHFileSystem

    fs = SSHFileSystem(
        "127.0.0.1",
        port=server["port"],
        username=server["user"],
        skip_instance_cache=True,
        **server["options"],
    )
    fs.makedirs(str(target.parent), exist_ok=True)
    prefault(source.parent, source.stat().st_size)
    started, cpu = time.perf_counter(), time.process_time()
    fs.put_file(str(source), str(target))
    return time.perf_counter() - started, time.process_time() - cpu


def writer(server: dict[str, Any], source: Path, target: Path) -> tuple[float, float]:
    from uploadsvc.storage import BLOCK_SIZE, open_storage, sftp

    if server.get("window"):
        sftp.WRITE_WINDOW = server["window"]

    url = f"sftp://{server['user']}@127.0.0.1:{server['port']}{target.parent}"

    async def main() -> tuple[float, float]:
        storage = open_storage(url, dict(server["options"]))
        await storage.check()
        # Connected first, as put_file's row is (and as a running service is):
        # uploads travel on a connection of their own, made by the first.
        async with storage.create(f"{target.name}-warm") as w:
            await w.write(b"x")
            await w.commit()
        await storage.delete(f"{target.name}-warm")
        prefault(source.parent, source.stat().st_size)
        started, cpu = time.perf_counter(), time.process_time()
        with source.open("rb") as f:
            async with storage.create(target.name) as w:
                # Read on the loop, as an upload's body arrives there.
                while block := f.read(BLOCK_SIZE):
                    await w.write(block)
                await w.commit()
        return time.perf_counter() - started, time.process_time() - cpu

    return asyncio.run(main())


def row(name: str, server: dict[str, Any], source: Path, target: Path) -> dict[str, float]:
    """One timed row, in this process (the child's side)."""
    seconds, cpu = {"put_file": put_file, "writer": writer}[name](server, source, target)
    return {
        "mib_s": source.stat().st_size / MIB / seconds,
        "cpu_s": cpu,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--same-cipher", action="store_true")
    parser.add_argument("--window-mib", type=int, help="the writer's WRITE_WINDOW, to tune it")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.row:
        server, source, target = json.loads(sys.stdin.read())
        print(json.dumps(row(args.row, server, Path(source), Path(target))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "sshd").mkdir()
        source = home / "source"
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        results: dict[str, list[dict[str, float]]] = {"put_file": [], "writer": []}
        with serve(home / "sshd") as server:
            options = dict(server.options)
            if args.same_cipher:
                options["encryption_algs"] = ["aes128-gcm@openssh.com"]
            shared = {"port": server.port, "user": server.user, "options": options}
            if args.window_mib:
                shared["window"] = args.window_mib * MIB
            for _ in range(args.rounds):
                for name in results:
                    target = home / "remote" / name
                    child = subprocess.run(
                        [sys.executable, "-m", "benchmarks.sftp_writer", "--row", name],
                        input=json.dumps([shared, str(source), str(target)]),
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    results[name].append(json.loads(child.stdout))
                    target.unlink()
        for name, runs in results.items():
            speeds = [r["mib_s"] for r in runs]
            print(
                f"{name:9} median {statistics.median(speeds):6.0f} MiB/s "
                f"(runs: {', '.join(f'{s:.0f}' for s in speeds)}), "
                f"client CPU {statistics.median(r['cpu_s'] for r in runs):.2f} s, "
                f"peak RSS {max(r['rss_mib'] for r in runs):.0f} MiB"
            )
        ratio = statistics.median(r["mib_s"] for r in results["writer"]) / statistics.median(
            r["mib_s"] for r in results["put_file"]
        )
        print(f"writer / put_file: {ratio:.2f}")


if __name__ == "__main__":
    main()
