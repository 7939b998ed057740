"""Processor cost: what each shipped processor plugin (plugins/*.py) adds to a blocking upload.

Each row is a blocking upload (scenarios.measure_blocking: a fresh `uploadsvc serve` per row,
local-folder backend, prefaulted memory, sha256 checked, median of the runs) with
`[processing] pipeline = ["<plugin>"]`, beside the same file uploaded to a server with an empty
pipeline in the same run: the limit. Per row:

  * the processor's own time, from the service's /metrics: the change of
    `uploadsvc_processor_duration_seconds_sum{processor="<plugin>", outcome="ok"}` across the
    upload (its `_count` must go up by exactly one, and no other outcome may move);
  * the whole upload's wall time, and its ratio to the empty pipeline's;
  * the server's peak RSS (VmHWM, as every row), and its ratio to the empty pipeline's;
  * the server's CPU per upload, and for clamav clamd's own CPU and peak RSS beside it;
  * what the plugin said (`results.<plugin>` in the 201), so a row that took the plugin's
    short way (the thumbnail's skips) says so.

Files: random bytes of the run's small size (256 MiB; 32 MiB with --quick) for every plugin,
and for the thumbnail also a 48-megapixel JPEG (8000x6000) made here once with Pillow. Its
content is upscaled random noise: no photo ships with the project, and a photo's detail
only changes the JPEG's size, which is chosen (about 15 MiB) like a camera's.

clamav scans with a real clamd, started by the test suite's own `tests.plugins.clamd.serve`
(its tiny EICAR-only database), with its StreamMaxLength, MaxFileSize and MaxScanSize raised to
twice the file so the whole file is scanned (AlertExceedsMax stays on: a skip would be a
rejection, which fails the row), and its clean-file cache off: clamd remembers the MD5 of each
clean file and answers the same bytes again unscanned, so every run after the first would
time a hash (32 MiB: 0.3 s against 0.9-1.3 s scanned, here). Beside the row, the same file is
sent to the same clamd by a plain blocking INSTREAM client in the harness (1 MiB chunks, as
the plugin sends), as many times as the row's runs before the row and again after it (the
load on a shared machine drifts): clamd's own time for the file, the median of those, so the
plugin's share of its processor time shows.

`delay` runs with `seconds = 0`: its overhead alone. `webhook` has no row: it only overrides
`finished`, which runs after the upload is final, so it adds no processing step and nothing
to the upload's time (see plugins/webhook.py).
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import statistics
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import servers
from clients import UploadResult
from scenarios import (
    UPLOADSVC,
    Bench,
    BenchError,
    Row,
    RunFigures,
    Setup,
    attempt,
    measure_blocking,
    upload_timeout,
)
from servers import Processing, Server
from workspace import MiB, SourceFile, human_size

#: The histogram pipeline.py observes each processor's duration in.
DURATION = "uploadsvc_processor_duration_seconds"
#: The JPEG: 48 megapixels, a camera's 4:3, about 15 MiB at quality 90.
JPEG_SIZE = (8000, 6000)
JPEG_NOISE_DIVISOR = 8  # noise drawn at 1/8 of the size, then upscaled: a camera-like file size
JPEG_QUALITY = 90
WEBHOOK_NOTE = (
    "not measured: webhook only overrides `finished`, which runs after the upload is final "
    "(outside the answer), so it is not a processing step and adds nothing to an upload's time"
)


@dataclass
class ProcessorResult:
    """One processor on one file, beside the same file with an empty pipeline."""

    processor: str  # the plugin's name
    file: str  # what was uploaded, in words
    size: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    upload_s: float | None = None  # median wall time of the blocking upload, to its 201
    processor_s: float | None = None  # median of the processor's own time, from /metrics
    limit_upload_s: float | None = None  # the same file, empty pipeline, same run
    peak_rss_bytes: int | None = None
    limit_peak_rss_bytes: int | None = None
    server_cpu_s: float | None = None  # median per upload
    limit_server_cpu_s: float | None = None
    helper: str | None = None  # a process the plugin talks to (clamd), its figures beside
    helper_cpu_s: float | None = None  # median per upload
    helper_peak_rss_bytes: int | None = None
    helper_alone_s: float | None = None  # median: the helper given the file by a plain client
    helper_alone_runs: list[float] = field(default_factory=list)  # before the row, then after
    result: dict[str, Any] | None = None  # the plugin's `results.<name>`, last run
    note: str = ""
    error: str | None = None

    @property
    def time_ratio(self) -> float | None:
        if self.upload_s is None or not self.limit_upload_s:
            return None
        return self.upload_s / self.limit_upload_s

    @property
    def rss_ratio(self) -> float | None:
        if self.peak_rss_bytes is None or not self.limit_peak_rss_bytes:
            return None
        return self.peak_rss_bytes / self.limit_peak_rss_bytes


@dataclass(frozen=True)
class Case:
    """One processor row: the plugin, its options, the file, what runs beside it."""

    processor: str
    options: Mapping[str, Any]
    src: SourceFile
    file: str
    helper: Callable[[Bench, SourceFile], AbstractContextManager[Helper | None]] | None = None


@dataclass(frozen=True)
class Helper:
    """A process a plugin needs (clamd): the options it adds, its pid for its costs, and how
    to time it on the file without the service (seconds; BenchError if it did not pass)."""

    name: str
    options: Mapping[str, Any]
    pid: int
    alone: Callable[[SourceFile], float]


def measure(bench: Bench, random_src: SourceFile) -> list[ProcessorResult]:
    """Every processor row, each beside the empty pipeline on the same file. A failed row is
    recorded with its error and the rest go on."""
    random_file = f"{human_size(random_src.size)} random bytes"
    jpeg, error = attempt("making a 48 MP JPEG with Pillow", partial(make_jpeg, bench))
    width, height = JPEG_SIZE
    jpeg_file = f"{width * height / 1e6:g} MP JPEG ({width}x{height}, " + (
        f"{jpeg.size / MiB:.1f} MiB)" if jpeg else "not made)"
    )
    cases = [
        Case("delay", {"seconds": 0.0}, random_src, random_file),
        Case("mimetype", {}, random_src, random_file),
        Case("thumbnail", {}, random_src, f"{random_file} (not an image)"),
        Case("clamav", {}, random_src, random_file, helper=clamd),
    ]
    limit = limit_row(bench, random_src, random_file)
    results = [measure_case(bench, case, limit) for case in cases]
    if jpeg is None:
        results.append(ProcessorResult("thumbnail", jpeg_file, 0, error=error))
    else:
        limit = limit_row(bench, jpeg, jpeg_file)
        results.append(measure_case(bench, Case("thumbnail", {}, jpeg, jpeg_file), limit))
    results.append(ProcessorResult("webhook", "-", 0, note=WEBHOOK_NOTE))
    return results


def limit_row(bench: Bench, src: SourceFile, file: str) -> Row | str:
    """The file's blocking upload with an empty pipeline; or why it failed."""
    row, error = attempt(
        f"uploadsvc local blocking {file}, empty pipeline (the limit)",
        partial(_blocking, bench, src, Setup(Processing()), None, "pipeline-none"),
    )
    return row or str(error)


def _blocking(
    bench: Bench, src: SourceFile, setup: Setup, figures: RunFigures | None, stem: str
) -> Row:
    return measure_blocking(bench, UPLOADSVC, "local", src, setup, figures, stem)


def measure_case(bench: Bench, case: Case, limit: Row | str) -> ProcessorResult:
    res = ProcessorResult(case.processor, case.file, case.src.size)
    found, error = attempt(
        f"uploadsvc local blocking {case.file}, pipeline [{case.processor}]",
        partial(_measure_case, bench, case, res),
    )
    if found is None:
        res.error = error
        return res
    if isinstance(limit, str):
        res.error = f"empty pipeline row failed: {limit}"
        return res
    res.limit_upload_s = limit.seconds
    res.limit_peak_rss_bytes = limit.peak_rss_bytes
    res.limit_server_cpu_s = _median([r["server_cpu_s"] for r in limit.runs])
    return res


def _measure_case(bench: Bench, case: Case, res: ProcessorResult) -> ProcessorResult:
    starter = case.helper or (lambda _bench, _src: nullcontext(None))
    with starter(bench, case.src) as helper:
        options = {**case.options, **(helper.options if helper else {})}
        timeout = upload_timeout(case.src.size)
        setup = Setup(Processing((case.processor,), {case.processor: options}, timeout))
        figures = run_figures(case.processor, helper)
        # The helper alone as often before the row as after it: on a shared machine the
        # load drifts within minutes, and a side timed only after would meet other load.
        alone = time_alone(bench, helper, case.src)
        row = _blocking(bench, case.src, setup, figures, f"pipeline-{case.processor}")
        alone += time_alone(bench, helper, case.src)
        if helper is not None:
            res.helper = helper.name
            res.helper_alone_runs = alone
            res.helper_alone_s = _median(alone)
            res.helper_peak_rss_bytes = servers.peak_rss_bytes(helper.pid)
    res.runs = row.runs
    res.upload_s = row.seconds
    res.peak_rss_bytes = row.peak_rss_bytes
    res.server_cpu_s = _median([r["server_cpu_s"] for r in row.runs])
    res.processor_s = _median([r["processor_s"] for r in row.runs])
    if helper is not None:
        res.helper_cpu_s = _median([r["helper_cpu_s"] for r in row.runs])
    res.result = row.runs[-1]["result"]
    return res


def time_alone(bench: Bench, helper: Helper | None, src: SourceFile) -> list[float]:
    """The helper's time for `src` without the service, once per run, each prefaulted."""
    if helper is None:
        return []
    seconds = []
    for _ in range(bench.runs):
        bench.prepare(src.size)
        seconds.append(helper.alone(src))
    return seconds


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def run_figures(processor: str, helper: Helper | None) -> RunFigures:
    """For measure_blocking: the processor's time from /metrics across one upload, what it
    answered, and the helper's CPU. Read before the server's CPU and after it, so the
    scrapes are not charged to the upload."""

    def start(server: Server) -> Callable[[UploadResult], dict[str, Any]]:
        before = scrape(server, processor)
        helper_cpu0 = _helper_cpu(helper)

        def end(result: UploadResult) -> dict[str, Any]:
            helper_cpu = _helper_cpu(helper) - helper_cpu0
            after = scrape(server, processor)
            moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            if moved.get(("ok", "count")) != 1 or any(
                v for (outcome, _), v in moved.items() if outcome != "ok"
            ):
                raise BenchError(f"{processor}: /metrics did not count one ok run: {moved}")
            record = result.json()
            said = record.get("results", {}).get(processor)
            if not isinstance(said, dict):
                raise BenchError(f"{processor}: no results.{processor} in the 201: {record}")
            figures: dict[str, Any] = {"processor_s": moved[("ok", "sum")], "result": said}
            if helper is not None:
                figures["helper_cpu_s"] = helper_cpu
            return figures

        return end

    return start


def scrape(server: Server, processor: str) -> dict[tuple[str, str], float]:
    """{(outcome, "sum" or "count"): value} of `processor`'s duration histogram, from the
    Prometheus text the service serves at GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = servers.http_get(server.port, "/metrics")
    if status != 200:
        raise BenchError(f"GET /metrics: HTTP {status}: {body[:300]!r}")
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name != DURATION:
            continue
        for sample in family.samples:
            kind = sample.name.removeprefix(DURATION + "_")
            if kind in ("sum", "count") and sample.labels.get("processor") == processor:
                key = (sample.labels.get("outcome", ""), kind)
                found[key] = found.get(key, 0.0) + sample.value
    return found


def _helper_cpu(helper: Helper | None) -> float:
    return 0.0 if helper is None else servers.tree_cpu_seconds(helper.pid, reaped_children=True)


@contextmanager
def clamd(bench: Bench, src: SourceFile) -> Iterator[Helper | None]:
    """A real clamd, as the tests start it (tests/plugins/clamd.py), with its stream and scan
    limits at twice the file, so the whole file is scanned, and no clean-file cache, so each
    run scans; the plugin on its unix socket."""
    # `tests` is importable: stores.py (imported by scenarios) put the checkout on sys.path.
    from tests.plugins import clamd as test_clamd

    home = bench.ws.dir(f"clamd/{bench.fresh_name('clamd')}")
    with test_clamd.serve(home, stream_max_bytes=2 * src.size, cache=False) as server:
        timeout = upload_timeout(src.size)
        options = {"address": server.unix, "timeout_seconds": timeout}
        yield Helper("clamd", options, server.pid, partial(instream, server.socket_path))


def instream(socket_path: Path, src: SourceFile, chunk: int = MiB) -> float:
    """Seconds for clamd to answer a plain INSTREAM of `src` (1 MiB chunks, as the plugin's
    default), from the file's first byte read to the reply; the reply must be clean."""
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX) as sock, src.path.open("rb") as f:
        sock.settimeout(upload_timeout(src.size))
        sock.connect(str(socket_path))
        sock.sendall(b"zINSTREAM\0")
        while block := f.read(chunk):
            sock.sendall(struct.pack(">I", len(block)))
            sock.sendall(block)
        sock.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    seconds = time.monotonic() - t0
    if reply != b"stream: OK\0":
        raise BenchError(f"clamd alone answered {reply[:200]!r} for {src.path.name}")
    return seconds


def make_jpeg(bench: Bench) -> SourceFile:
    """A baseline 8000x6000 JPEG of upscaled random noise, about 15 MiB; made once."""
    from PIL import Image

    width, height = JPEG_SIZE
    small = (width // JPEG_NOISE_DIVISOR, height // JPEG_NOISE_DIVISOR)
    rng = random.Random(48)
    noise = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3))
    out = io.BytesIO()
    noise.resize(JPEG_SIZE, Image.Resampling.BICUBIC).save(out, "JPEG", quality=JPEG_QUALITY)
    data = out.getvalue()
    path = bench.ws.files / f"photo-{width}x{height}.jpg"
    path.write_bytes(data)
    return SourceFile(path, len(data), hashlib.sha256(data).hexdigest())
