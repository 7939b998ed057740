"""The GCS writer against gcsfs's own `put_file`, on fake-gcs-server, and the server's peak RSS.

    .venv/bin/python -m benchmarks.gcs_writer [--size-mib 256] [--rounds 3]

Three figures, each row against a fresh fake-gcs-server (memory backend) on
127.0.0.1, so that no row pays for what an earlier one left in the emulator:

* `put_file`: gcsfs's `GCSFileSystem.put_file` of a local file (its defaults:
  50 MiB chunks, one after the other);
* `writer`: the same file read in 1 MiB blocks into `GCSStorage.create(...)`,
  then `commit()` (the path every upload takes);
* `server`: a fresh `uploadsvc serve` on that bucket, one upload of the file
  by curl (blocking, and non-blocking until its record says completed), and
  the server's peak RSS (`VmHWM`), for the size asked and for a quarter of it
  (flat memory means the two are close).

Before each timed row, scratch data of twice the file size is written and
deleted (see FACTS.md: this VM hands idle memory back to its host, and the
first touch of fresh memory is several times slower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gcsfs.core import GCSFileSystem

from tests.backends.gcs import BINARY
from tests.backends.tools import free_port, running
from uploadsvc.storage import BLOCK_SIZE, open_storage

MIB = 1 << 20


def prefault(folder: Path, size: int) -> None:
    scratch = folder / "scratch"
    block = os.urandom(MIB)
    with scratch.open("wb") as f:
        for _ in range(2 * size // MIB):
            f.write(block)
    scratch.unlink()


@contextmanager
def fake_gcs(folder: Path, bucket: str) -> Iterator[str]:
    """A fresh fake-gcs-server holding one empty bucket; yields its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    data = folder / f"data-{port}"
    data.mkdir()
    args = [str(BINARY), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    args += ["-backend", "memory", "-data", str(data), "-log-level", "warn"]
    args += ["-external-url", endpoint, "-public-host", f"127.0.0.1:{port}"]
    with running(args, port, log=folder / "fake.log"):
        body = json.dumps({"name": bucket}).encode()
        request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", data=body)
        request.add_header("Content-Type", "application/json")
        urllib.request.urlopen(request, timeout=30).close()
        yield endpoint


def time_put_file(options: dict[str, Any], source: Path) -> float:
    # gcsfs's own options: `block_size` is ours here (the writer's chunk size).
    fs = GCSFileSystem(**{k: v for k, v in options.items() if k != "block_size"})
    started = time.perf_counter()
    fs.put_file(str(source), "bench/put_file/obj")
    return time.perf_counter() - started


def time_writer(options: dict[str, Any], source: Path) -> float:
    async def upload() -> float:
        storage = open_storage("gs://bench/writer", dict(options))
        started = time.perf_counter()
        with source.open("rb") as f:
            async with storage.create("obj") as writer:
                while block := f.read(BLOCK_SIZE):
                    await writer.write(block)
                await writer.commit()
        return time.perf_counter() - started

    return asyncio.run(upload())


def server_peak_rss(options: dict[str, Any], source: Path, folder: Path, path: str) -> int:
    """Peak RSS in bytes of a fresh `uploadsvc serve` through one upload of `source` to
    `path`, until the upload is completed (in the background, for the non-blocking path)."""
    port = free_port()
    config = folder / "server.toml"
    toml_options = "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
    config.write_text(
        f'[storage]\nurl = "gs://bench/served"\n[storage.options]\n{toml_options}'
        f'[staging]\npath = "{folder / "staging"}"\n'
        f"[limits]\nmax_upload_bytes = {source.stat().st_size + MIB}\n"
    )
    args = [sys.executable, "-m", "uploadsvc", "serve", "--config", str(config)]
    args += ["--port", str(port)]
    with running(args, port, log=folder / "server.log") as proc:
        base = f"http://127.0.0.1:{port}"
        curl = ["curl", "-sS", "-F", f"file=@{source}", f"{base}{path}"]
        answer = json.loads(subprocess.run(curl, capture_output=True, check=True).stdout)
        deadline = time.monotonic() + 300
        while answer.get("status") != "completed":
            assert answer.get("status") != "failed" and time.monotonic() < deadline, answer
            time.sleep(0.2)
            with urllib.request.urlopen(f"{base}/uploads/{answer['id']}", timeout=30) as r:
                answer = json.loads(r.read())
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-mib", type=int, help="the writer's block_size (default: its own)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="gcs-bench-") as tmp:
        folder = Path(tmp)
        sources = {}
        for mib in (args.size_mib, args.size_mib // 4):
            sources[mib] = folder / f"source-{mib}"
            sources[mib].write_bytes(os.urandom(mib * MIB))
        source = sources[args.size_mib]
        base: dict[str, Any] = {"token": "anon", "project": "test"}
        if args.chunk_mib:
            base["block_size"] = args.chunk_mib * MIB
        rows: dict[str, list[float]] = {"put_file": [], "writer": []}
        for _ in range(args.rounds):
            for name, timed in (("put_file", time_put_file), ("writer", time_writer)):
                prefault(folder, size)
                with fake_gcs(folder, "bench") as endpoint:
                    rows[name].append(timed({**base, "endpoint_url": endpoint}, source))
        rss = {}
        for path in ("/upload-blocking/", "/upload-nonblocking/"):
            for mib, src in sources.items():
                with fake_gcs(folder, "bench") as endpoint:
                    options = {**base, "endpoint_url": endpoint}
                    rss[path, mib] = server_peak_rss(options, src, folder, path)
    speeds = {name: args.size_mib / statistics.median(times) for name, times in rows.items()}
    chunk = f"{args.chunk_mib} MiB chunks" if args.chunk_mib else "default chunks"
    print(f"{args.size_mib} MiB, {chunk}, median of {args.rounds} rounds on fake-gcs-server:")
    for name, times in rows.items():
        each = ", ".join(f"{args.size_mib / t:.1f}" for t in times)
        print(f"  {name:9} {speeds[name]:6.1f} MiB/s   (rounds: {each})")
    # Rounds are pairs run back to back: their ratios drift less than either speed
    # when other work shares the machine.
    ratios = [p / w for p, w in zip(rows["put_file"], rows["writer"], strict=True)]
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  writer / put_file: {statistics.median(ratios):.2f} (rounds: {each})")
    for (path, mib), peak in rss.items():
        print(f"  server peak RSS, one {mib} MiB upload to {path}: {peak / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
