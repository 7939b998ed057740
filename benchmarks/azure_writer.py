"""The Azure writer against adlfs's own `put_file`, on Azurite, and the server's peak RSS.

    .venv/bin/python -m benchmarks.azure_writer [--size-mib 256] [--rounds 3]

Three rows, each against a fresh Azurite (its own folder) on 127.0.0.1, so
that no row pays for what an earlier one left behind (Azurite collects
deleted extents in the background):

* `put_file`: adlfs's `AzureBlobFileSystem.put_file` of a local file (its
  defaults: the SDK's `upload_blob`, 4 MiB blocks, as many in parallel as
  fsspec's batch size allows);
* `writer`: the same file read in 1 MiB blocks into `AzureStorage.create(...)`,
  then `commit()` (the path every upload takes);
* `server`: a fresh `uploadsvc serve` on that container, one blocking upload
  of the file by curl, and the server's peak RSS (`VmHWM`), for the size
  asked and for a quarter of it (flat memory means the two are close).

The rows alternate within each round, so a noisy neighbour hurts both sides
of the ratio alike; the medians are printed at the end. Before each timed
row, scratch data of twice the file size is written and deleted (FACTS.md:
this VM hands idle memory back to its host, and the first touch of fresh
memory is several times slower).
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from tests.backends import tools
from tests.backends.azure import AZURITE, connection_string

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def peak_rss(pid: int | str = "self") -> float:
    """VmHWM in MiB: the kernel's high-water mark of the process's resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def prefault(size: int) -> None:
    """Touch and release `size` bytes in a process of its own (so no row's peak carries it)."""
    code = f"b = [bytes({MiB}) for _ in range({size // MiB})]"
    subprocess.run([sys.executable, "-c", code], check=True)


@contextmanager
def azurite(folder: Path) -> Iterator[str]:
    """A fresh Azurite on a free port; yields its connection string."""
    port = tools.free_port()
    args = [
        tools.npm_program("azurite-blob", AZURITE),
        *("--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder)),
        *("--skipApiVersionCheck", "--disableTelemetry", "--silent"),
    ]
    with tools.running(args, port, log=folder.with_suffix(".log")):
        yield connection_string(f"127.0.0.1:{port}")


# Rows that run inside this script, each in a process of its own (`row NAME ...`).


def put_file_row(cs: str, container: str, path: str) -> float:
    import adlfs

    fs = adlfs.AzureBlobFileSystem(connection_string=cs, skip_instance_cache=True)
    start = time.perf_counter()
    fs.put_file(path, f"{container}/put-file")
    return time.perf_counter() - start


def writer_row(cs: str, container: str, path: str) -> float:
    from uploadsvc.storage import open_storage
    from uploadsvc.storage.interface import read_blocks

    async def upload() -> float:
        storage = open_storage(f"az://{container}/writer", {"connection_string": cs})
        start = time.perf_counter()
        async with storage.create("obj") as writer:
            async for block in read_blocks(Path(path).open):
                await writer.write(block)
            await writer.commit()
        return time.perf_counter() - start

    return asyncio.run(upload())


def in_own_process(row: str, cs: str, container: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.azure_writer", "row", row, cs, container, str(path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def server_row(cs: str, container: str, path: Path, work: Path) -> dict[str, float]:
    port = tools.free_port()
    config = work / "server.toml"
    config.write_text(
        f'[storage]\nurl = "az://{container}/server"\n'
        f'[storage.options]\nconnection_string = "{cs}"\n'
        f'[staging]\npath = "{work / "staging"}"\n'
        f"[limits]\nmax_upload_bytes = {8 << 30}\n"
    )
    server = [sys.executable, "-m", "uploadsvc", "serve", "--config", str(config)]
    with tools.running([*server, "--port", str(port)], port, log=work / "server.log") as proc:
        prefault(2 * path.stat().st_size)
        start = time.perf_counter()
        out = subprocess.run(
            ["curl", "-sS", "-F", f"file=@{path}", f"http://127.0.0.1:{port}/upload-blocking/"],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        assert json.loads(out.stdout)["size"] == path.stat().st_size, out.stdout
        return {"seconds": seconds, "peak_rss_mib": peak_rss(proc.pid)}


def random_file(folder: Path, size_mib: int) -> Path:
    path = folder / f"random-{size_mib}MiB.bin"
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    os.sync()
    return path


def measure(row: str, path: Path, work: Path) -> dict[str, float]:
    """One row against a fresh Azurite and container."""
    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{row}-"))
    with azurite(folder / "azurite") as cs:
        container = f"bench-{uuid.uuid4().hex[:12]}"
        BlobServiceClient.from_connection_string(cs).create_container(container)
        if row == "server":
            return server_row(cs, container, path, folder)
        prefault(2 * path.stat().st_size)
        return in_own_process(row, cs, container, path)


def main() -> None:
    if sys.argv[1:2] == ["row"]:
        row, cs, container, path = sys.argv[2:6]
        seconds = {"put_file": put_file_row, "writer": writer_row}[row](cs, container, path)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": peak_rss()}))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    rates: dict[str, list[float]] = {"put_file": [], "writer": [], "server": []}
    peaks: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="azure-bench-") as tmp:
        work = Path(tmp)
        big = random_file(work, opts.size_mib)
        quarter = random_file(work, opts.size_mib // 4)
        for round_ in range(opts.rounds):
            for row in ("put_file", "writer", "server"):
                result = measure(row, big, work)
                rate = opts.size_mib / result["seconds"]
                rates[row].append(rate)
                if row == "server":
                    peaks.setdefault(opts.size_mib, []).append(result["peak_rss_mib"])
                print(f"round {round_} {row:8s} {rate:6.1f} MiB/s  {json.dumps(result)}")
            small = measure("server", quarter, work)
            peaks.setdefault(opts.size_mib // 4, []).append(small["peak_rss_mib"])
    median = {row: statistics.median(values) for row, values in rates.items()}
    print(
        f"\n{opts.size_mib} MiB, median of {opts.rounds}: put_file {median['put_file']:.1f} MiB/s, "
        f"writer {median['writer']:.1f} MiB/s ({median['writer'] / median['put_file']:.2f}x), "
        f"server {median['server']:.1f} MiB/s"
    )
    for size, values in sorted(peaks.items()):
        print(f"server peak RSS, {size} MiB upload: max {max(values):.1f} MiB, all {values}")


if __name__ == "__main__":
    main()
