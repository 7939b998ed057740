"""What each benchmark row measures, and how: limits (`cp`+`sync`, and each remote store's own
library's `put_file` into its emulator), single uploads, 64 small uploads at once, and
/healthz latency during a big upload. Listing cost and recovery after SIGKILL have modules
of their own (listing.py, recovery.py) built on the servers and roots made here.

Rules every row follows, so rows can be compared:
  * a fresh server process per row, so its VmHWM (peak RSS) belongs to that row alone; an upload
    row's peak RSS adds the peaks of the server's processes (the SFTP backend's `ssh` too);
  * memory prefaulted and dirty pages flushed before every timed run (see workspace.py);
  * each figure is the median over the runs (3, or 1 with --quick);
  * what the server stored is checked (size, and sha256 where the server reports one), because
    a fast wrong upload is not a result;
  * uploads are deleted after each run, so storage does not fill and no run pays for the last.

Times: a blocking row is start of request to the 201. A background row has two figures from the
same runs: start of request to the 202, and start of request to when polling first sees
`completed` (polls every 50 ms; a slow poll is reported, see clients.wait_completed).

The 202 is also compared with the moment the client handed the last body byte to the kernel
("the bytes' arrival", `arrival_ratio`): the 202 promises the bytes are durably
received, so the fastest honest 202 comes right after they arrive; a ratio near 1 means the
staging write and its flush overlapped the transfer, and that nothing else (storing, S3) was
waited for. Loopback socket buffers hold a few MiB at most, so the client's "last byte sent"
leads the server's "last byte read" by milliseconds: well inside the 10 % the target allows.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import clients
import servers
import stores
from clients import Clients, UploadResult
from servers import Processing, ProcessPool, Server
from stores import LIBRARIES, Store
from workspace import GiB, MiB, SourceFile, Workspace, before_timed_run

T = TypeVar("T")
UPLOADSVC = "uploadsvc"
BASELINE = "baseline"


class BenchError(RuntimeError):
    """A row could not be measured; the message says why, and the run goes on."""


@dataclass
class Bench:
    """Everything a measurement needs: interpreter, environment, folders, processes, clients."""

    python: str
    repo: Path
    bench_dir: Path
    env: dict[str, str]
    ws: Workspace
    pool: ProcessPool
    clients: Clients
    runs: int
    stores: dict[str, Store] = field(default_factory=dict)  # emulators running now, by kind
    #: When set, every server and every `put_file` process uploads this file once, untimed,
    #: before its timed runs: rows whose server makes a single timed run would otherwise
    #: charge it the first use of everything (connections, imports, the emulator's warm-up),
    #: which a row of three runs spreads thin and the medians hide.
    warm_up: SourceFile | None = None
    row_counter: int = 0

    @property
    def loadgen(self) -> Path:
        return self.bench_dir / "loadgen.py"

    def prepare(self, size: int) -> None:
        before_timed_run(self.python, self.loadgen, size, self.env)

    def fresh_name(self, stem: str) -> str:
        self.row_counter += 1
        return f"{self.row_counter:02d}-{stem}"

    def store(self, kind: str) -> Store:
        if kind not in self.stores:
            raise BenchError(f"no {stores.EMULATORS.get(kind, kind)} is running for {kind} rows")
        return self.stores[kind]


@dataclass
class Row:
    """One line of the throughput table: a limit or an app's upload path at one file size."""

    app: str  # "uploadsvc", "baseline", or the limit's name
    storage: str  # "local", "s3", "azure", "gcs" or "sftp"
    mode: str  # "limit", "blocking", "background 202", "background completed"
    size: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    mib_s: float | None = None
    limit_mib_s: float | None = None
    peak_rss_bytes: int | None = None
    server_cpu_s_per_gib: float | None = None
    client_cpu_s_per_gib: float | None = None
    store_cpu_s_per_gib: float | None = None  # the emulator's, for app rows on one
    arrival_ratio: float | None = None
    slowest_poll_ms: float | None = None  # background rows: the slowest status request
    #: Rows measured in rounds with their limit (see `pair_with`): the median of each
    #: round's own ratio, which a drift of the machine between rounds does not move.
    paired_ratio: float | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.mib_s is None or not self.limit_mib_s:
            return None
        return self.mib_s / self.limit_mib_s

    def absorb(self, other: Row, round_number: int) -> None:
        """Take the runs of `other`, one round of this row measured apart, marked with it."""
        self.runs.extend({**run, "round": round_number} for run in other.runs)
        if other.peak_rss_bytes is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes or 0, other.peak_rss_bytes)

    def pair_with(self, limit: Row) -> None:
        """The ratio to `limit` round by round, for rows `absorb`ed in rounds with it."""
        limit_seconds = {run["round"]: run["seconds"] for run in limit.runs}
        ratios = [
            limit_seconds[run["round"]] / run["seconds"]
            for run in self.runs
            if run["round"] in limit_seconds
        ]
        self.paired_ratio = statistics.median(ratios) if ratios else None

    def summarise(self) -> None:
        """Medians over the runs; each run holds seconds, server_cpu_s, client_cpu_s."""
        if not self.runs:
            return
        gib = self.size / GiB
        self.seconds = statistics.median(r["seconds"] for r in self.runs)
        self.mib_s = self.size / MiB / self.seconds
        if all("server_cpu_s" in r for r in self.runs):
            self.server_cpu_s_per_gib = statistics.median(
                r["server_cpu_s"] / gib for r in self.runs
            )
        if all("client_cpu_s" in r for r in self.runs):
            self.client_cpu_s_per_gib = statistics.median(
                r["client_cpu_s"] / gib for r in self.runs
            )
        if all("store_cpu_s" in r for r in self.runs):
            self.store_cpu_s_per_gib = statistics.median(r["store_cpu_s"] / gib for r in self.runs)
        if all("slowest_poll_s" in r for r in self.runs):
            self.slowest_poll_ms = 1000 * max(r["slowest_poll_s"] for r in self.runs)
        if self.mode == "background 202" and all(r.get("sent_seconds") for r in self.runs):
            self.arrival_ratio = statistics.median(
                r["seconds"] / r["sent_seconds"] for r in self.runs
            )


@dataclass
class ConcurrencyResult:
    """Many small uploads at once on the blocking path to local storage."""

    app: str
    count: int
    size: int
    workers: int | None = None  # `serve --workers N`; None: without the option (one process)
    runs: list[dict[str, Any]] = field(default_factory=list)
    uploads_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_ms_per_upload: float | None = None
    client_cpu_ms_per_upload: float | None = None
    peak_rss_bytes: int | None = None  # the largest one process's
    total_peak_rss_bytes: int | None = None  # every process's peak, added
    processes: int | None = None  # in the server's tree at the end (parent, workers, helpers)
    error: str | None = None


@dataclass
class HealthResult:
    """/healthz latency seen by a separate prober while one big blocking upload runs."""

    app: str
    size: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    probes: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    failed_probes: int | None = None
    upload_mib_s: float | None = None
    error: str | None = None


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation between samples."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def upload_timeout(size: int) -> float:
    """Generous bound for one upload: 60 s plus 2 MiB/s (moto alone moves 50-80 MiB/s)."""
    return 60.0 + size / (2 * MiB)


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- limits


def measure_cp_sync(bench: Bench, src: SourceFile) -> Row:
    """`cp FILE DEST && sync` onto the same filesystem: what the disk allows for durable bytes."""
    row = Row("cp + sync", "local", "limit", src.size)
    dest_dir = bench.ws.dir("limit-cp")
    for _ in range(bench.runs):
        bench.prepare(src.size)
        dest = dest_dir / "copy.bin"
        cpu0 = clients.children_cpu()
        t0 = time.monotonic()
        subprocess.run(
            ["sh", "-c", 'cp "$1" "$2" && sync', "cp-sync", str(src.path), str(dest)],
            check=True,
            timeout=upload_timeout(src.size),
        )
        seconds = time.monotonic() - t0
        row.runs.append({"seconds": seconds, "client_cpu_s": clients.children_cpu() - cpu0})
        dest.unlink()
        os.sync()
    row.summarise()
    return row


def measure_put_file(bench: Bench, store: Store, src: SourceFile) -> Row:
    """The store's own library's `put_file` into the same emulator: what the emulator allows.
    The emulator's CPU is given in the server column, since it is what limits these rows
    (moto, for one, spends about 10 CPU s per GiB)."""
    row = Row(f"{LIBRARIES[store.kind]} put_file", store.kind, "limit", src.size)
    readings: dict[str, float] = {}

    def ready() -> None:  # as before a server's timed run: after its warm-up, if any
        bench.prepare(src.size)
        readings["cpu0"] = store.cpu_seconds()

    for i in range(bench.runs):
        out = bench.clients.put(
            store,
            store.target(f"limit/{src.size}-{i}.bin"),
            src.path,
            upload_timeout(src.size),
            ready,
            warm_up=bench.warm_up.path if bench.warm_up else None,
        )
        if int(out["stored_bytes"]) != src.size:
            raise BenchError(f"{row.app} stored {out['stored_bytes']} bytes of {src.size}")
        row.runs.append(
            {
                "seconds": float(out["seconds"]),
                "client_cpu_s": float(out["cpu_s"]),
                "server_cpu_s": store.cpu_seconds() - readings["cpu0"],
            }
        )
    row.summarise()
    return row


@contextmanager
def emulator(bench: Bench, kind: str) -> Iterator[Store]:
    """A fresh emulator of `kind` (see stores.py) for the rows run inside the block."""
    workdir = bench.ws.dir(f"emulators/{bench.fresh_name(kind)}")
    with stores.running(kind, workdir) as store:
        bench.stores[kind] = store
        try:
            yield store
        finally:
            del bench.stores[kind]


# ---------------------------------------------------------------- the apps


@dataclass
class AppUnderTest:
    """A running server of one app, and how to clean up after an upload to it."""

    name: str
    server: Server
    store: Path | None  # the local folder it writes to, for the baseline's cleanup

    def cleanup(self, result: UploadResult) -> None:
        if self.name == UPLOADSVC:
            clients.delete_upload(self.server.port, str(result.json()["id"]))
        elif self.store is not None:
            for path in self.store.iterdir():
                path.unlink()
        os.sync()


def fresh_root(bench: Bench, storage: str, name: str) -> tuple[str, dict[str, Any]]:
    """A storage URL and options nothing has written to yet: a new local folder, or a new
    prefix in the running emulator's bucket."""
    if storage == "local":
        return f"file://{bench.ws.dir(f'rows/{name}') / 'store'}", {}
    store = bench.store(storage)
    return store.url(name), dict(store.options)


@contextmanager
def serving(
    bench: Bench,
    name: str,
    root: tuple[str, dict[str, Any]],
    *,
    workdir: Path | None = None,
    jobs: Mapping[str, float] | None = None,
    processing: Processing | None = None,
    workers: int | None = None,
) -> Iterator[Server]:
    """A fresh `uploadsvc serve` on `root`, its staging folder in `workdir` (so a restart
    given the same one finds what the last left there); stopped after. `processing` sets
    its pipeline (none by default), `workers` its `--workers`."""
    workdir = workdir or bench.ws.dir(f"rows/{name}")
    url, options = root
    server = servers.start_uploadsvc(
        bench.pool,
        python=bench.python,
        env=bench.env,
        workdir=workdir,
        storage_url=url,
        storage_options=options,
        staging=workdir / "staging",
        name=name,
        jobs=jobs,
        processing=processing,
        workers=workers,
    )
    try:
        yield server
    finally:
        bench.pool.stop(server.proc)


@dataclass(frozen=True)
class Setup:
    """How uploadsvc's server is run for a row, beyond storage: its pipeline and workers.
    The default is what every upload row uses: no pipeline, `serve` without `--workers`."""

    processing: Processing | None = None
    workers: int | None = None


@contextmanager
def running_app(
    bench: Bench, app: str, storage: str, stem: str, setup: Setup | None = None
) -> Iterator[AppUnderTest]:
    """A fresh server of `app` writing to a fresh local folder or bucket prefix; stopped after."""
    name = bench.fresh_name(f"{app}-{storage}-{stem}")
    setup = setup or Setup()
    if app == UPLOADSVC:
        root = fresh_root(bench, storage, name)
        with serving(
            bench, name, root, processing=setup.processing, workers=setup.workers
        ) as server:
            yield AppUnderTest(app, server, None)
        return
    if setup != Setup():
        raise BenchError("only uploadsvc runs with a pipeline or several workers")
    if storage != "local":
        raise BenchError("the baseline app only writes to a local folder")
    workdir = bench.ws.dir(f"rows/{name}")
    store = workdir / "store"
    server = servers.start_baseline(
        bench.pool,
        python=bench.python,
        env=bench.env,
        bench_dir=bench.bench_dir,
        workdir=workdir,
        upload_dir=store,
        name=name,
    )
    try:
        yield AppUnderTest(app, server, store)
    finally:
        bench.pool.stop(server.proc)


def check_stored(app: str, record: Mapping[str, Any], src: SourceFile) -> None:
    """The record must describe exactly the bytes sent."""
    if int(record.get("size", -1)) != src.size:
        raise BenchError(f"{app} stored {record.get('size')} bytes, sent {src.size}")
    if "sha256" in record and record["sha256"] != src.sha256:
        raise BenchError(f"{app} stored bytes with sha256 {record['sha256']}, sent {src.sha256}")


def store_cpu(bench: Bench, storage: str) -> Callable[[], dict[str, float]]:
    """Start reading the CPU of the emulator `storage` runs on; the function returned gives
    what it used since, as a run's `store_cpu_s` (nothing for a local folder). Beside the
    limit row's, it tells whether the emulator was what held a row back."""
    store = bench.stores.get(storage)
    if store is None:
        return dict
    cpu0 = store.cpu_seconds()
    return lambda: {"store_cpu_s": store.cpu_seconds() - cpu0}


#: Starts reading more figures of one run from the server just before its upload; the
#: function it returns is called once the answer is in and gives them (see `store_cpu`).
RunFigures = Callable[[Server], Callable[[UploadResult], dict[str, Any]]]


def measure_blocking(
    bench: Bench,
    app: str,
    storage: str,
    src: SourceFile,
    setup: Setup | None = None,
    figures: RunFigures | None = None,
    stem: str = "blocking",
) -> Row:
    """POST /upload-blocking/ until the 201. `setup` runs the server with a pipeline (or
    several workers); `figures` adds what it reads to each run's figures."""
    row = Row(app, storage, "blocking", src.size)
    with running_app(bench, app, storage, f"{stem}-{src.size // MiB}", setup) as target:
        warm_up(bench, target, "/upload-blocking/")
        for _ in range(bench.runs):
            bench.prepare(src.size)
            more = figures(target.server) if figures else None
            cpu0 = target.server.cpu_seconds()
            emulator_cpu = store_cpu(bench, storage)
            result = bench.clients.upload(
                target.server.base_url + "/upload-blocking/", src.path, upload_timeout(src.size)
            )
            cpu = target.server.cpu_seconds() - cpu0
            if result.status != 201:
                raise BenchError(
                    f"{app} blocking upload: HTTP {result.status}: {result.body[:300]}"
                )
            check_stored(app, result.json(), src)
            row.runs.append(
                {
                    "seconds": result.seconds,
                    "sent_seconds": result.sent_seconds,
                    "server_cpu_s": cpu,
                    "client_cpu_s": result.client_cpu_s,
                    "client_process_cpu_s": result.client_process_cpu_s,
                    **emulator_cpu(),
                    **(more(result) if more else {}),
                }
            )
            target.cleanup(result)
        row.peak_rss_bytes = target.server.total_peak_rss_bytes()
    row.summarise()
    return row


def warm_up(bench: Bench, target: AppUnderTest, path: str) -> None:
    """`bench.warm_up`'s untimed upload to `path`, finished (completed, for a background
    one) and removed; nothing when the bench has none."""
    if bench.warm_up is None:
        return
    result = bench.clients.upload(
        target.server.base_url + path, bench.warm_up.path, upload_timeout(bench.warm_up.size)
    )
    if result.status not in (201, 202):
        raise BenchError(f"warm-up upload: HTTP {result.status}: {result.body[:300]}")
    record = result.json()
    if result.status == 202:
        _, record, _ = completed(target.server.port, record, upload_timeout(bench.warm_up.size))
    check_stored(target.name, record, bench.warm_up)
    target.cleanup(result)


def completed(
    port: int, accepted: Mapping[str, Any], timeout: float
) -> tuple[float, dict[str, Any], float]:
    """A background upload's status followed from its 202 until `completed` (see
    `clients.wait_completed`); `BenchError` if it ends `failed`."""
    status_path = str(accepted.get("status_url") or f"/uploads/{accepted['id']}")
    t_done, record, slowest_poll = clients.wait_completed(port, status_path, timeout)
    if record.get("status") != "completed":
        raise BenchError(f"background upload failed: {record.get('error')}")
    return t_done, record, slowest_poll


def measure_background(bench: Bench, storage: str, src: SourceFile) -> list[Row]:
    """POST /upload-nonblocking/: the 202, then polling until `completed`. Two rows, one server."""
    answer = Row(UPLOADSVC, storage, "background 202", src.size)
    done = Row(UPLOADSVC, storage, "background completed", src.size)
    with running_app(bench, UPLOADSVC, storage, f"background-{src.size // MiB}") as target:
        warm_up(bench, target, "/upload-nonblocking/")
        port = target.server.port
        for _ in range(bench.runs):
            bench.prepare(src.size)
            cpu0 = target.server.cpu_seconds()
            emulator_cpu = store_cpu(bench, storage)
            result = bench.clients.upload(
                target.server.base_url + "/upload-nonblocking/", src.path, upload_timeout(src.size)
            )
            cpu_answer = target.server.cpu_seconds() - cpu0
            if result.status != 202:
                raise BenchError(f"background upload: HTTP {result.status}: {result.body[:300]}")
            t_done, record, slowest_poll = completed(port, result.json(), upload_timeout(src.size))
            cpu_done = target.server.cpu_seconds() - cpu0
            check_stored(UPLOADSVC, record, src)
            answer.runs.append(
                {
                    "seconds": result.seconds,
                    "sent_seconds": result.sent_seconds,
                    # Not tabled: by the time the harness reads it, the server has already
                    # spent CPU on the background work the 202 started.
                    "server_cpu_s_at_answer": cpu_answer,
                    "client_cpu_s": result.client_cpu_s,
                    "client_process_cpu_s": result.client_process_cpu_s,
                }
            )
            done.runs.append(
                {
                    "seconds": t_done - result.t_start,
                    "slowest_poll_s": slowest_poll,
                    "server_cpu_s": cpu_done,
                    **emulator_cpu(),
                    "client_cpu_s": result.client_cpu_s,
                    "client_process_cpu_s": result.client_process_cpu_s,
                }
            )
            target.cleanup(result)
        answer.peak_rss_bytes = done.peak_rss_bytes = target.server.total_peak_rss_bytes()
    answer.summarise()
    done.summarise()
    return [answer, done]


def measure_concurrency(
    bench: Bench, app: str, count: int = 64, size: int = MiB, workers: int | None = None
) -> ConcurrencyResult:
    """`count` uploads of `size` bytes started together, blocking path, local storage;
    with `workers`, against `uploadsvc serve --workers N`.

    One unmeasured wave first, so first-request costs (lazy imports, folder creation) are not
    charged to the figures. The server's CPU is read before and after each wave's client
    process, which sends nothing until its payload is ready; it is the whole process tree's
    (with workers: the parent, every worker and multiprocessing's resource tracker).
    """
    res = ConcurrencyResult(app, count, size, workers)
    url_path = "/upload-blocking/"
    stem = f"concurrent-{count}x{size // MiB}" + (f"-workers-{workers}" if workers else "")
    with running_app(bench, app, "local", stem, Setup(workers=workers)) as target:
        url = target.server.base_url + url_path
        bench.clients.concurrent(url, count, size, timeout=120.0)  # warm-up
        for _ in range(bench.runs):
            bench.prepare(count * size)
            cpu0 = target.server.cpu_seconds()
            out = bench.clients.concurrent(url, count, size, timeout=120.0)
            cpu = target.server.cpu_seconds() - cpu0
            bad = [s for s in out["statuses"] if s != 201]
            if out["errors"] or bad or len(out["statuses"]) != count:
                raise BenchError(
                    f"{app}: {len(bad)} uploads not 201 ({sorted(set(bad))}), "
                    f"errors: {out['errors'][:3]}"
                )
            latencies = [s * 1000 for s in out["latencies_s"]]
            res.runs.append(
                {
                    "wall_s": out["wall_s"],
                    "p50_ms": percentile(latencies, 50),
                    "p99_ms": percentile(latencies, 99),
                    "server_cpu_s": cpu,
                    "client_cpu_s": out["cpu_s"],
                    "client_process_cpu_s": out["process_cpu_s"],
                }
            )
        res.peak_rss_bytes = target.server.peak_rss_bytes()
        res.total_peak_rss_bytes = target.server.total_peak_rss_bytes()
        res.processes = len(servers.process_tree(target.server.proc.pid))

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in res.runs))

    res.uploads_per_s = count / med("wall_s")
    res.p50_ms, res.p99_ms = med("p50_ms"), med("p99_ms")
    res.server_cpu_ms_per_upload = med("server_cpu_s") * 1000 / count
    res.client_cpu_ms_per_upload = med("client_cpu_s") * 1000 / count
    return res


def measure_healthz(bench: Bench, app: str, src: SourceFile, expected_mib_s: float) -> HealthResult:
    """/healthz from a separate process, about 200 probes spread over one blocking upload.

    The probe interval is the expected upload time (from this app's blocking row) over 200;
    only probes that started between the upload's start and its answer are counted. p50 and
    p99 are medians over the runs; the max is the slowest probe of all runs.
    """
    res = HealthResult(app, src.size)
    expected_s = src.size / MiB / max(expected_mib_s, 1.0)
    interval = max(0.002, expected_s / 200)
    with running_app(bench, app, "local", f"healthz-{src.size // MiB}") as target:
        for _ in range(bench.runs):
            bench.prepare(src.size)
            probe = bench.clients.start_probe(
                bench.pool,
                target.server.base_url + "/healthz",
                interval,
                max_seconds=upload_timeout(src.size),
            )
            try:
                result = bench.clients.upload(
                    target.server.base_url + "/upload-blocking/",
                    src.path,
                    upload_timeout(src.size),
                )
            finally:
                samples = probe.stop()
            if result.status != 201:
                raise BenchError(f"{app} upload under probing: HTTP {result.status}")
            check_stored(app, result.json(), src)
            during = [s for s in samples if result.t_start <= s[0] <= result.t_end]
            if not during:
                raise BenchError(f"{app}: no /healthz probe started during the upload")
            latencies = [s[1] * 1000 for s in during]
            res.runs.append(
                {
                    "probes": len(during),
                    "p50_ms": percentile(latencies, 50),
                    "p99_ms": percentile(latencies, 99),
                    "max_ms": max(latencies),
                    "failed": sum(1 for s in during if s[2] != 200),
                    "upload_seconds": result.seconds,
                }
            )
            target.cleanup(result)

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in res.runs))

    res.probes = int(med("probes"))
    res.p50_ms, res.p99_ms = med("p50_ms"), med("p99_ms")
    res.max_ms = max(r["max_ms"] for r in res.runs)  # a maximum is the worst case: all runs
    res.failed_probes = int(max(r["failed"] for r in res.runs))
    res.upload_mib_s = src.size / MiB / med("upload_seconds")
    return res


def where(error: BaseException) -> str:
    """The innermost harness line an exception passed through: which step of a row failed."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if Path(f.filename).parent == Path(__file__).parent] or frames
    if not ours:
        return "no traceback"
    frame = ours[-1]
    return f"at {Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def attempt(what: str, measure: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run one measurement: (result, None), or (None, why it failed) so the run goes on and
    one broken row does not lose the others. Progress and failures are logged to stderr."""
    log(f"... {what}")
    t0 = time.monotonic()
    try:
        result = measure()
    except Exception as e:  # any failure of one row; KeyboardInterrupt still stops the run
        message = f"{type(e).__name__}: {e} ({where(e)})"
        log(f"    FAILED: {message}")
        return None, message
    log(f"    done in {time.monotonic() - t0:.1f} s")
    return result, None
