"""Turn one run's results into markdown tables (stdout) and a JSON document (file).

Every throughput figure is printed beside its limit and the ratio to it, since absolute
figures on a shared VM drift from run to run while ratios measured in the same run hold.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from listing import ListingResult
from processors import ProcessorResult
from recovery import RecoveryResult
from scenarios import ConcurrencyResult, HealthResult, Row
from stores import EMULATORS, TITLES
from targets import Results, Target
from workspace import MiB, human_size

DASH = "-"


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return DASH if value is None else f"{value:,.{digits}f}{suffix}"


TEXT_COLUMNS = {
    "row",
    "app",
    "server",
    "processor",
    "file",
    "storage",
    "target",
    "rule",
    "verdict",
    "note",
    "interrupted at SIGKILL, per run",
}


def markdown_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A pipe table; figures right-aligned, words left-aligned."""
    align = ["---" if h in TEXT_COLUMNS else "---:" for h in headers]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def row_label(row: Row) -> str:
    if row.mode == "limit":
        return f"limit: {row.app} ({EMULATORS.get(row.storage, 'local disk')})"
    return f"{row.app} {TITLES[row.storage]} {row.mode}"


def row_note(row: Row) -> str:
    if row.error:
        return f"ERROR: {row.error[:120]}"
    notes = []
    if row.paired_ratio is not None:
        notes.append(f"x limit: median of {len(row.runs)} rounds' own ratios")
    if row.arrival_ratio is not None:
        notes.append(f"202 at {row.arrival_ratio:.2f}x the last byte's send time")
    if row.slowest_poll_ms is not None:
        notes.append(f"slowest status poll {row.slowest_poll_ms:,.0f} ms")
    if row.store_cpu_s_per_gib is not None:
        notes.append(f"{EMULATORS[row.storage]}'s CPU {row.store_cpu_s_per_gib:.2f} s/GiB")
    if row.mode == "limit" and row.storage in EMULATORS:
        notes.append(f"server CPU is {EMULATORS[row.storage]}'s")
    if row.mode == "limit" and row.storage == "sftp":
        notes.append("sshfs's default cipher (ChaCha20); uploadsvc's prefers AES-GCM")
    if row.mode == "limit" and row.storage == "local":
        notes.append("client CPU is cp's + sync's")
    return "; ".join(notes)


def throughput_table(rows: Sequence[Row]) -> str:
    headers = [
        "row",
        "size",
        "MiB/s",
        "limit MiB/s",
        "x limit",
        "peak RSS MiB",
        "server CPU s/GiB",
        "client CPU s/GiB",
        "note",
    ]
    lines = [
        [
            row_label(r),
            human_size(r.size),
            fmt(r.mib_s),
            DASH if r.mode == "limit" else fmt(r.limit_mib_s),
            DASH if r.mode == "limit" else fmt(r.ratio, 2, "x"),
            fmt(None if r.peak_rss_bytes is None else r.peak_rss_bytes / MiB),
            fmt(r.server_cpu_s_per_gib, 2),
            fmt(r.client_cpu_s_per_gib, 2),
            row_note(r),
        ]
        for r in rows
    ]
    return markdown_table(headers, lines)


def concurrency_table(results: Sequence[ConcurrencyResult]) -> str:
    headers = [
        "app",
        "uploads",
        "uploads/s",
        "p50 ms",
        "p99 ms",
        "server CPU ms/upload",
        "client CPU ms/upload",
        "peak RSS MiB",
        "note",
    ]
    lines = [
        [
            c.app,
            f"{c.count} x {human_size(c.size)}",
            fmt(c.uploads_per_s),
            fmt(c.p50_ms, 1),
            fmt(c.p99_ms, 1),
            fmt(c.server_cpu_ms_per_upload, 2),
            fmt(c.client_cpu_ms_per_upload, 2),
            fmt(None if c.peak_rss_bytes is None else c.peak_rss_bytes / MiB),
            f"ERROR: {c.error[:120]}" if c.error else "",
        ]
        for c in results
    ]
    return markdown_table(headers, lines)


def workers_table(results: Sequence[ConcurrencyResult], cores: int | None = None) -> str:
    """`serve --workers N` rows, each against the one-worker row of the same run."""
    one = next((c for c in results if c.workers == 1 and c.uploads_per_s), None)
    one_rate = None if one is None else one.uploads_per_s
    one_cpu = None if one is None else one.server_cpu_ms_per_upload
    headers = [
        "server",
        "uploads",
        "uploads/s",
        "x 1 worker",
        "p50 ms",
        "p99 ms",
        "server CPU ms/upload",
        "x 1 worker CPU",
        "client CPU ms/upload",
        "peak RSS MiB",
        "note",
    ]

    def ratio(value: float | None, base: float | None) -> float | None:
        return None if value is None or not base else value / base

    def note(c: ConcurrencyResult) -> str:
        if c.error:
            return f"ERROR: {c.error[:120]}"
        parts = []
        if c.processes is not None and c.total_peak_rss_bytes is not None:
            processes = f"{c.processes} process{'es' if c.processes != 1 else ''}"
            parts.append(
                f"{processes}, {c.total_peak_rss_bytes / MiB:,.0f} MiB of peak RSS added over "
                "them; server CPU is the whole tree's"
            )
        parts.append(
            f"{cores or 'the'} cores shared by the server, the client (one Python process) "
            "and the kernel"
        )
        return "; ".join(parts)

    lines = [
        [
            f"uploadsvc serve --workers {c.workers}",
            f"{c.count} x {human_size(c.size)}",
            fmt(c.uploads_per_s),
            fmt(ratio(c.uploads_per_s, one_rate), 2, "x"),
            fmt(c.p50_ms, 1),
            fmt(c.p99_ms, 1),
            fmt(c.server_cpu_ms_per_upload, 2),
            fmt(ratio(c.server_cpu_ms_per_upload, one_cpu), 2, "x"),
            fmt(c.client_cpu_ms_per_upload, 2),
            fmt(None if c.peak_rss_bytes is None else c.peak_rss_bytes / MiB),
            note(c),
        ]
        for c in results
    ]
    return markdown_table(headers, lines)


def processors_table(results: Sequence[ProcessorResult]) -> str:
    """Each processor's blocking upload beside the same file's with an empty pipeline."""
    headers = [
        "processor",
        "file",
        "upload s",
        "empty pipeline s",
        "x time",
        "processor s",
        "peak RSS MiB",
        "empty pipeline MiB",
        "x RSS",
        "server CPU s",
        "note",
    ]

    def mib(value: int | None) -> float | None:
        return None if value is None else value / MiB

    def note(r: ProcessorResult) -> str:
        if r.error:
            return f"ERROR: {r.error[:160]}"
        parts = [r.note] if r.note else []
        if r.result is not None:
            parts.append(f"said {json.dumps(r.result, separators=(',', ':'))[:120]}")
        if r.helper is not None:
            parts.append(
                f"{r.helper}: {fmt(r.helper_cpu_s, 2)} CPU s per upload, "
                f"peak RSS {fmt(mib(r.helper_peak_rss_bytes))} MiB, "
                f"{fmt(r.helper_alone_s, 3)} s for the file from a plain client"
                + (
                    f" ({min(r.helper_alone_runs):.2f}-{max(r.helper_alone_runs):.2f} s "
                    f"over {len(r.helper_alone_runs)}, before and after the row)"
                    if r.helper_alone_runs
                    else ""
                )
            )
        if r.limit_server_cpu_s is not None:
            parts.append(f"empty pipeline's server CPU {r.limit_server_cpu_s:.2f} s")
        return "; ".join(parts)

    lines = [
        [
            r.processor,
            r.file,
            fmt(r.upload_s, 3),
            fmt(r.limit_upload_s, 3),
            fmt(r.time_ratio, 2, "x"),
            fmt(r.processor_s, 4),
            fmt(mib(r.peak_rss_bytes)),
            fmt(mib(r.limit_peak_rss_bytes)),
            fmt(r.rss_ratio, 2, "x"),
            fmt(r.server_cpu_s, 2),
            note(r),
        ]
        for r in results
    ]
    return markdown_table(headers, lines)


def healthz_table(results: Sequence[HealthResult]) -> str:
    headers = [
        "app",
        "during upload of",
        "probes",
        "p50 ms",
        "p99 ms",
        "max ms (all runs)",
        "failed",
        "upload MiB/s",
        "note",
    ]
    lines = [
        [
            h.app,
            human_size(h.size),
            fmt(h.probes),
            fmt(h.p50_ms, 2),
            fmt(h.p99_ms, 2),
            fmt(h.max_ms, 1),
            fmt(h.failed_probes),
            fmt(h.upload_mib_s),
            f"ERROR: {h.error[:120]}" if h.error else "",
        ]
        for h in results
    ]
    return markdown_table(headers, lines)


def listing_table(results: Sequence[ListingResult]) -> str:
    headers = [
        "storage",
        "records",
        "requests",
        "p50 ms",
        "p95 ms",
        "max ms",
        "server CPU ms/request",
        "Storage.list ms",
        "start-up pass s",
        "seeded in s",
        "note",
    ]
    lines = [
        [
            TITLES[r.storage],
            f"{r.records:,}",
            fmt(r.requests),
            fmt(r.p50_ms, 1),
            fmt(r.p95_ms, 1),
            fmt(r.max_ms, 1),
            fmt(r.server_cpu_ms, 1),
            fmt(r.store_list_ms, 1),
            fmt(r.startup_s, 1),
            fmt(r.seed_s, 1),
            f"ERROR: {r.error[:120]}" if r.error else "",
        ]
        for r in results
    ]
    return markdown_table(headers, lines)


def recovery_table(results: Sequence[RecoveryResult]) -> str:
    headers = [
        "storage",
        "uploads",
        "lease s",
        "ready s",
        "all completed s",
        "after leases s",
        "interrupted at SIGKILL, per run",
    ]
    lines = [
        [
            TITLES[r.storage],
            f"{r.uploads} x {human_size(r.size)}",
            fmt(r.lease_s, 1),
            fmt(r.ready_s, 2),
            fmt(r.recovered_s, 2),
            fmt(r.after_leases_s, 2),
            f"ERROR: {r.error[:120]}" if r.error else r.interrupted or "",
        ]
        for r in results
    ]
    return markdown_table(headers, lines)


def targets_table(targets: Sequence[Target]) -> str:
    def value(t: Target) -> str:
        if t.value is None:
            return DASH
        if t.unit == "x":
            return f"{t.value:.2f}x"
        return f"{t.value:.{1 if t.unit in ('ms', 'MiB') else 2}f} {t.unit}"

    lines = [[t.name, value(t), t.rule, t.verdict, t.context] for t in targets]
    return markdown_table(["target", "measured", "rule", "verdict", "note"], lines)


def render(meta: dict[str, Any], results: Results, targets: Sequence[Target]) -> str:
    """The report; a section whose rows were not asked for (`--rows`, `--apps`) is left out."""
    sections: list[tuple[str, Sequence[Any], Callable[[Any], str]]] = [
        ("Single uploads (median of runs)", results.rows, throughput_table),
        ("Many small uploads at once (blocking, local)", results.concurrency, concurrency_table),
        (
            "/healthz latency from a separate process during a blocking upload",
            results.healthz,
            healthz_table,
        ),
        (
            "Listing: GET /uploads?limit=100, 20 requests per store size (uploadsvc)",
            results.listing,
            listing_table,
        ),
        (
            "Recovery: restart after SIGKILL until every interrupted upload is completed",
            results.recovery,
            recovery_table,
        ),
        (
            "Processor cost: blocking upload, local folder, pipeline of one plugin "
            "(median of runs; processor s from /metrics)",
            results.processors,
            processors_table,
        ),
        (
            "Workers: 64 x 1 MiB at once, blocking, local, `uploadsvc serve --workers N`",
            results.workers,
            partial(workers_table, cores=meta.get("cores")),
        ),
    ]
    parts = [
        "# uploadsvc benchmark",
        "",
        ", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, list | dict)),
    ]
    for title, found, table in sections:
        if found:
            parts += ["", f"## {title}", "", table(found)]
    parts += ["", "## Targets", "", targets_table(targets)]
    notes = meta.get("notes") or []
    if notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(parts) + "\n"


def to_json(meta: dict[str, Any], results: Results, targets: Sequence[Target]) -> dict[str, Any]:
    rows = []
    for row in results.rows:
        data = dataclasses.asdict(row)
        data["ratio_to_limit"] = row.ratio
        rows.append(data)
    return {
        "meta": meta,
        "rows": rows,
        "concurrency": [dataclasses.asdict(c) for c in results.concurrency],
        "healthz": [dataclasses.asdict(h) for h in results.healthz],
        "listing": [dataclasses.asdict(r) for r in results.listing],
        "recovery": [dataclasses.asdict(r) for r in results.recovery],
        "processors": [
            dataclasses.asdict(r) | {"time_ratio": r.time_ratio, "rss_ratio": r.rss_ratio}
            for r in results.processors
        ],
        "workers": [dataclasses.asdict(c) for c in results.workers],
        "targets": [dataclasses.asdict(t) for t in targets],
    }
