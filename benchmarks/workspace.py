"""The temporary folder a benchmark run works in, and the machine chores before each timed run.

Everything lives under one temporary folder: the random source files, every storage root,
staging folder and `cp` destination, the server logs. So the source files are on the same
filesystem as the storage roots (as the `cp` limit assumes), and one `rmtree` at the end
removes it all.

Before each timed run, `before_timed_run` prefaults memory and flushes dirty pages. This VM
hands idle free memory back to its host and the first write into such memory is several times
slower: without the prefault the same app measured 191 instead of 348 MiB/s here. The `sync`
keeps one run's dirty pages from being flushed on the next run's clock.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
PREFAULT_FACTOR = 2  # scratch memory per timed run, as a multiple of the file size
PREFAULT_TIMEOUT_S = 120.0


def human_size(size: int) -> str:
    """256 MiB, 1 GiB: sizes as the tables and target names print them."""
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB} GiB"
    return f"{size / MiB:g} MiB"


@dataclass(frozen=True)
class SourceFile:
    """A file of random bytes to upload, with its digest to check what the server stored."""

    path: Path
    size: int
    sha256: str


class Workspace:
    """One temporary folder for the whole run; `close()` removes it."""

    def __init__(self, base: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="uploadsvc-bench-", dir=base))
        self.logs = self.dir("logs")
        self.files = self.dir("files")

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise SystemExit(
                f"not enough disk space in {self.root}: {free / GiB:.1f} GiB free, "
                f"{needed / GiB:.1f} GiB needed (use --tmpdir elsewhere, or --quick)"
            )

    def make_file(self, size: int, seed: int) -> SourceFile:
        """Random bytes (incompressible, so no layer can cheat), written once and flushed."""
        path = self.files / f"random-{size // MiB}MiB.bin"
        rng = random.Random(seed)
        digest = hashlib.sha256()
        chunk = 4 * MiB
        with path.open("wb") as f:
            for offset in range(0, size, chunk):
                block = rng.randbytes(min(chunk, size - offset))
                digest.update(block)
                f.write(block)
        os.sync()
        return SourceFile(path, size, digest.hexdigest())

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def prefault(python: str, loadgen: Path, total: int, env: Mapping[str, str]) -> None:
    """Fault in and release `total` bytes of memory, split over one process per core.

    Measured here: 2 GiB took ~5 s in one process and ~2 s in two, and a `cp` + `sync` of
    1 GiB right after ran at 1500-1700 MiB/s instead of 375-740 MiB/s.
    """
    workers = max(1, min(os.cpu_count() or 1, 8))
    share = max(MiB, total // workers)
    procs = [
        subprocess.Popen(
            [python, str(loadgen), "prefault", str(share)],
            env=dict(env),
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=PREFAULT_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def before_timed_run(python: str, loadgen: Path, size: int, env: Mapping[str, str]) -> None:
    prefault(python, loadgen, PREFAULT_FACTOR * size, env)
    os.sync()
