"""The targets issue 10 sets, and those of the issues "pluggable storage" and "accepted uploads
always finish", judged against one run's figures: PASS, MISS, or n/a.

Kept apart from the measuring so the rules can be read in one place. Each target names the
rows it reads; a target whose rows are missing or failed is "n/a", never a PASS. Sizes are
the run's "small" and "large" files (256 MiB and 1 GiB; with --quick 32 MiB and 128 MiB), so
a quick run judges the same rules on smaller files: indicative only.

Two choices the issue left open:
  * "1 GiB MiB/s within 10 % of the 256 MiB figure" is read as large >= 0.9 x small: the
    target guards against an upload path that slows down with size (buffering, growing
    memory); a large file being faster because fixed per-request costs are spread thinner
    is not a fault.
  * "background 202 within 1.1x the time the bytes take to arrive" compares the 202 with the
    moment the same request's client handed its last body byte to the kernel (see
    scenarios.py). A smaller ratio cannot be had honestly, since the 202 comes after the
    bytes; a larger one means the server waited for something after they arrived.
And one rule stricter than "median of runs": the /healthz max is the slowest probe of all
runs, since a maximum promises a worst case.

"Pluggable storage" asks each backend's blocking upload of the small file (256 MiB) to reach
0.9x its own library's `put_file` into the same emulator, at a server peak RSS under 160 MiB
(S3's are among issue 10's targets above); the RSS rule is read over the blocking and the
background row, as issue 10's is for S3. "Accepted uploads always finish" asks the listing
to cost O(page size), not O(records); read here as: the median `GET /uploads?limit=100` with
the most records seeded (10,000) within 1.5x of the one with 100 records. The context note
gives how the store's own listing of one page changed meanwhile (moto's grows with the
bucket). Recovery after SIGKILL has no target: its figures depend on the lease chosen, and
a run that does not recover every upload with its bytes is an error, not a figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from listing import ListingResult
from processors import ProcessorResult
from recovery import RecoveryResult
from scenarios import BASELINE, UPLOADSVC, ConcurrencyResult, HealthResult, Row
from stores import LIBRARIES, TITLES
from workspace import MiB, human_size


@dataclass
class Target:
    name: str
    rule: str  # e.g. ">= 0.50"
    value: float | None
    unit: str  # how to print the value: "x", "s/GiB", "MiB", "ms"
    verdict: str  # "PASS", "MISS" or "n/a"
    context: str = ""  # a figure that helps read this one


@dataclass
class Results:
    rows: list[Row]
    concurrency: list[ConcurrencyResult]
    healthz: list[HealthResult]
    listing: list[ListingResult]
    recovery: list[RecoveryResult]
    # No targets read these two: each is reported beside its own limit (report.py).
    processors: list[ProcessorResult] = field(default_factory=list)
    workers: list[ConcurrencyResult] = field(default_factory=list)  # serve --workers 1, 2

    def errors(self) -> list[str]:
        """Why each failed figure failed: any makes the run's exit status 1."""
        parts: list[list[Any]] = [
            self.rows,
            self.concurrency,
            self.healthz,
            self.listing,
            self.recovery,
            self.processors,
            self.workers,
        ]
        return [item.error for part in parts for item in part if item.error]

    def row(self, app: str, storage: str, mode: str, size: int) -> Row | None:
        for row in self.rows:
            key = (row.app, row.storage, row.mode, row.size)
            if key == (app, storage, mode, size) and row.error is None:
                return row
        return None

    def concurrent(self, app: str) -> ConcurrencyResult | None:
        return next((c for c in self.concurrency if c.app == app and c.error is None), None)

    def health(self, app: str) -> HealthResult | None:
        return next((h for h in self.healthz if h.app == app and h.error is None), None)


def _judge(
    name: str, value: float | None, op: str, limit: float, unit: str, context: str = ""
) -> Target:
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda v, t: v >= t,
        "<=": lambda v, t: v <= t,
        "<": lambda v, t: v < t,
    }
    verdict = "n/a" if value is None else "PASS" if checks[op](value, limit) else "MISS"
    rule = f"{op} {limit:g}x" if unit == "x" else f"{op} {limit:g} {unit}"
    return Target(name, rule, value, unit, verdict, context)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _max_mib(*values: float | None) -> float | None:
    """The largest of byte counts, in MiB; None unless every one was measured."""
    present = [v for v in values if v is not None]
    return max(present) / MiB if present and len(present) == len(values) else None


def _limit_scaling(res: Results, storage: str, small: int, large: int, name: str) -> str:
    """How the limit itself changed from the small file to the large one: moto, for one,
    slows down with size, and that is not the service's doing."""
    rows = [r for r in res.rows if r.mode == "limit" and r.storage == storage and r.mib_s]
    speeds = {r.size: r.mib_s for r in rows}
    ratio = _div(speeds.get(large), speeds.get(small))
    return "" if ratio is None else f"{name} itself: {ratio:.2f}x"


def evaluate(
    res: Results, small: int, large: int, healthz_size: int, backends: list[str]
) -> list[Target]:
    """Every target: issue 10's in the order it lists them, then each backend's, then the
    listing's."""
    return (
        _issue_10(res, small, large, healthz_size)
        + [t for kind in backends for t in _backend(res, kind, small)]
        + [t for storage in ("local", "s3") for t in _listing(res, storage)]
    )


def _backend(res: Results, kind: str, small: int) -> list[Target]:
    blocking = res.row(UPLOADSVC, kind, "blocking", small)
    background = res.row(UPLOADSVC, kind, "background completed", small)
    title, s = TITLES[kind], human_size(small)
    return [
        _judge(
            f"{title} blocking {s}: x {LIBRARIES[kind]} put_file",
            None if blocking is None else blocking.ratio,
            ">=",
            0.9,
            "x",
        ),
        _judge(
            f"peak RSS, {title} rows {s}",
            _max_mib(*(None if r is None else r.peak_rss_bytes for r in (blocking, background))),
            "<",
            160,
            "MiB",
        ),
    ]


def _listing(res: Results, storage: str) -> list[Target]:
    rows = [r for r in res.listing if r.storage == storage]
    if len(rows) < 2:
        return []
    few = min(rows, key=lambda r: r.records)
    many = max(rows, key=lambda r: r.records)
    store_growth = _div(many.store_list_ms, few.store_list_ms)
    return [
        _judge(
            f"{TITLES[storage]} GET /uploads?limit=100: {many.records:,} / {few.records:,} records",
            _div(many.p50_ms, few.p50_ms),
            "<=",
            1.5,
            "x",
            "" if store_growth is None else f"the store's own listing: {store_growth:.2f}x",
        )
    ]


def _issue_10(res: Results, small: int, large: int, healthz_size: int) -> list[Target]:
    """Issue 10's targets, in the order the issue lists them."""
    s, big, h = human_size(small), human_size(large), human_size(healthz_size)
    local_l = res.row(UPLOADSVC, "local", "blocking", large)
    local_s = res.row(UPLOADSVC, "local", "blocking", small)
    s3_s = res.row(UPLOADSVC, "s3", "blocking", small)
    s3_l = res.row(UPLOADSVC, "s3", "blocking", large)
    base_l = res.row(BASELINE, "local", "blocking", large)
    bg_local_l = res.row(UPLOADSVC, "local", "background 202", large)
    bg_s3_l = res.row(UPLOADSVC, "s3", "background 202", large)
    bg_s3_s = res.row(UPLOADSVC, "s3", "background 202", small)
    local_rows_l = [local_l, bg_local_l]
    s3_rows_l = [s3_l, bg_s3_l]
    health = res.health(UPLOADSVC)
    conc, conc_base = res.concurrent(UPLOADSVC), res.concurrent(BASELINE)

    def attr(result: object | None, name: str) -> float | None:
        return None if result is None else getattr(result, name)

    return [
        _judge(f"local blocking {big}: x cp+sync", attr(local_l, "ratio"), ">=", 0.5, "x"),
        _judge(
            f"local blocking {big}: x baseline",
            _div(attr(local_l, "mib_s"), attr(base_l, "mib_s")),
            ">=",
            1.6,
            "x",
        ),
        _judge(
            f"local blocking {big}: server CPU",
            attr(local_l, "server_cpu_s_per_gib"),
            "<=",
            1.9,
            "s/GiB",
        ),
        _judge(f"S3 blocking {s}: x s3fs put_file", attr(s3_s, "ratio"), ">=", 0.9, "x"),
        _judge(
            f"S3 blocking {s}: server CPU", attr(s3_s, "server_cpu_s_per_gib"), "<=", 4, "s/GiB"
        ),
        _judge(
            f"peak RSS, local rows {big}",
            _max_mib(*(attr(r, "peak_rss_bytes") for r in local_rows_l)),
            "<",
            100,
            "MiB",
        ),
        _judge(
            f"peak RSS, S3 rows {big}",
            _max_mib(*(attr(r, "peak_rss_bytes") for r in s3_rows_l)),
            "<",
            160,
            "MiB",
        ),
        _judge(
            f"local blocking MiB/s: {big} / {s}",
            _div(attr(local_l, "mib_s"), attr(local_s, "mib_s")),
            ">=",
            0.9,
            "x",
            _limit_scaling(res, "local", small, large, "cp+sync"),
        ),
        _judge(
            f"S3 blocking MiB/s: {big} / {s}",
            _div(attr(s3_l, "mib_s"), attr(s3_s, "mib_s")),
            ">=",
            0.9,
            "x",
            _limit_scaling(res, "s3", small, large, "s3fs put_file"),
        ),
        _judge(
            f"local background {big}: 202 / last byte sent",
            attr(bg_local_l, "arrival_ratio"),
            "<=",
            1.1,
            "x",
        ),
        _judge(
            f"S3 background {big}: 202 / last byte sent",
            attr(bg_s3_l, "arrival_ratio"),
            "<=",
            1.1,
            "x",
        ),
        _judge(
            f"S3 {s}: blocking answer / background 202",
            _div(attr(s3_s, "seconds"), attr(bg_s3_s, "seconds")),
            ">=",
            4,
            "x",
        ),
        _judge(f"/healthz p99 during {h} upload", attr(health, "p99_ms"), "<", 10, "ms"),
        _judge(f"/healthz max during {h} upload", attr(health, "max_ms"), "<", 50, "ms"),
        _judge(
            "64x1 MiB: server CPU per upload / baseline's",
            _div(
                attr(conc, "server_cpu_ms_per_upload"), attr(conc_base, "server_cpu_ms_per_upload")
            ),
            "<=",
            1.0,
            "x",
        ),
    ]
