"""Listing cost: `GET /uploads?limit=100` with 100 records in the store, then with 10,000
(1,000 with --quick), on a real server process.

The listing reads one page of `index.` names and that page's records (records.py), so its
cost should follow the page size, not the store's size: the two figures should be close.

How: records are written by storetool.py in a process of its own through uploadsvc's own
`Records.create` (a 1 KiB object, the `index.` marker and the record, as a finished upload
leaves them), not by 10,000 HTTP uploads. The first count is seeded and measured by a fresh
server; then the rest are added to the same root and another fresh server measures again, so
the figures differ in the store's size alone. A server starts with one pass over every key
of its store (the leftovers sweep, jobs.py), which is O(records) by design and runs again
only every 10 minutes: the timing waits until the server's CPU is idle, and that wait is
reported as its own column ("start-up pass"). Each figure: 20 GETs on fresh connections from
a client process after 2 untimed ones, their median and p95 (nearest rank), and the server's
CPU per timed request. Beside them, storetool times `Storage.list` of one page alone: the part that
is the store's listing (moto's grows with the bucket, since it scans every key to list any
prefix; a local folder's is one read of the whole directory).

Before timing, one answer is checked: a full page of completed records, newest first. A
listing that comes back fast and empty (records seeded in the wrong place) is an error, not
a figure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import scenarios
import servers
from scenarios import Bench, BenchError, fresh_root, percentile, serving
from servers import Server

PAGE = 100
REQUESTS = 20
WARMUP = 2  # untimed requests first: lazy imports, connections to the store
IDLE_CPU_S = 0.05  # CPU seconds in one second under which a server counts as idle
IDLE_TIMEOUT_S = 300.0


@dataclass
class ListingResult:
    """`GET /uploads?limit=PAGE` with `records` records in the store."""

    storage: str
    records: int
    page: int = PAGE
    requests: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None
    server_cpu_ms: float | None = None  # per request
    store_list_ms: float | None = None  # median of `Storage.list` of one page, alone
    seed_s: float | None = None  # writing the records this row added
    startup_s: float | None = None  # from ready to idle: the start-up pass over the store
    error: str | None = None


def seed_timeout(count: int) -> float:
    """moto takes about 6 ms per write here, and a record is three writes."""
    return 120.0 + count * 0.1


def measure(bench: Bench, storage: str, counts: list[int]) -> list[ListingResult]:
    """One root, seeded up to each count in turn and measured at each."""
    name = bench.fresh_name(f"listing-{storage}")
    root = fresh_root(bench, storage, name)
    url, options = root
    results = []
    seeded = 0
    for count in counts:
        res = ListingResult(storage, count)
        out = bench.clients.storetool(
            f"seeding {count - seeded} records",
            seed_timeout(count - seeded),
            *("seed", url, "--options", json.dumps(options), "--count", str(count - seeded)),
        )
        seeded, res.seed_s = count, float(out["seconds"])
        listed = bench.clients.storetool(
            "Storage.list",
            seed_timeout(0),
            *("list", url, "--options", json.dumps(options)),
            *("--limit", str(PAGE + 1), "--count", str(REQUESTS)),
        )
        res.store_list_ms = percentile([1000 * s for s in listed["seconds"]], 50)
        with serving(bench, f"{name}-{count}", root) as server:
            res.startup_s = wait_idle(server)
            path = f"/uploads?limit={PAGE}"
            check_page(server.port, path, min(PAGE, count))
            bench.clients.get_times(server.base_url + path, WARMUP, timeout=60.0)
            cpu0 = server.cpu_seconds()
            out = bench.clients.get_times(server.base_url + path, REQUESTS, timeout=60.0)
            cpu = server.cpu_seconds() - cpu0
        bad = [s for s in out["statuses"] if s != 200]
        if bad:
            raise BenchError(f"GET {path}: {len(bad)} answers not 200: {sorted(set(bad))}")
        times = [1000 * s for s in out["seconds"]]
        res.requests = len(times)
        res.p50_ms, res.p95_ms = percentile(times, 50), percentile(times, 95)
        res.max_ms = max(times)
        res.server_cpu_ms = 1000 * cpu / len(times)
        scenarios.log(f"    {count:,} records: p50 {res.p50_ms:.1f} ms, p95 {res.p95_ms:.1f} ms")
        results.append(res)
    return results


def wait_idle(server: Server) -> float:
    """Seconds until the server used under IDLE_CPU_S of CPU in a second."""
    began = time.monotonic()
    last = server.cpu_seconds()
    while time.monotonic() - began < IDLE_TIMEOUT_S:
        time.sleep(1.0)
        now = server.cpu_seconds()
        if now - last < IDLE_CPU_S:
            return time.monotonic() - began - 1.0  # the idle second itself is not the pass's
        last = now
    raise BenchError(f"the server was still busy {IDLE_TIMEOUT_S:.0f} s after it started")


def check_page(port: int, path: str, expected: int) -> None:
    status, body = servers.http_get(port, path, timeout=60.0)
    if status != 200:
        raise BenchError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    items: list[dict[str, Any]] = json.loads(body)["items"]
    ids = [item["id"] for item in items]
    if len(items) != expected:
        raise BenchError(f"GET {path}: {len(items)} records, expected {expected}")
    if ids != sorted(ids, reverse=True):
        raise BenchError(f"GET {path}: records not newest first")
    if any(item["status"] != "completed" for item in items):
        raise BenchError(f"GET {path}: seeded records are not all completed")
