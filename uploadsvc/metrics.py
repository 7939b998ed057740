"""Prometheus metrics: what the service counts, and how `/metrics` reads them.

Every metric is defined here, and each is updated at one place named in its
help text. Counters start from zero when the process starts, as Prometheus
expects of them.

Several worker processes (`uploadsvc serve --workers N`) each count their
own requests; `serve` then points `PROMETHEUS_MULTIPROC_DIR` at a fresh
folder before the workers start, prometheus-client keeps each process's
values in files there, and `/metrics` on any worker sums them, so one scrape
sees the whole service. The folder is removed when `serve` ends, so the next
start counts from zero again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from starlette.requests import ClientDisconnect

from .errors import ServiceError

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Upload durations from the first byte to the answer: a 1 MiB upload takes
#: milliseconds, a 10 GiB one minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

UPLOADS = Counter(
    "uploadsvc_uploads",
    "Uploads answered (web/api.py), by path and outcome: 2xx, or the error code",
    ["path", "outcome"],
)
RECEIVED_BYTES = Counter(
    "uploadsvc_received_bytes",
    "Request body bytes of uploads received (streaming.py), failed uploads included",
)
UPLOAD_DURATION = Histogram(
    "uploadsvc_upload_duration_seconds",
    "From the start of an upload request to its answer (web/api.py), by path",
    ["path"],
    buckets=_DURATION_BUCKETS,
)
UPLOADS_IN_PROGRESS = Gauge(
    "uploadsvc_uploads_in_progress",
    "Upload requests being received or processed now (web/api.py), by path",
    ["path"],
    multiprocess_mode="livesum",
)
JOBS = Gauge(
    "uploadsvc_jobs",
    "Uploads not final, by status, as the last sweep of the records found them (jobs.py)",
    ["status"],
    # Every process sweeps the same records: the latest sweep is the answer.
    multiprocess_mode="mostrecent",
)
STORAGE_ERRORS = Counter(
    "uploadsvc_storage_errors",
    "Storage calls that failed or timed out (storage/guarded.py), by backend and operation",
    ["backend", "operation"],
)
PROCESSOR_DURATION = Histogram(
    "uploadsvc_processor_duration_seconds",
    "Time each processor took (pipeline.py), by processor and outcome",
    ["processor", "outcome"],
    buckets=_DURATION_BUCKETS,
)


@contextmanager
def upload(path: str) -> Iterator[None]:
    """Count one upload request on `path` (blocking, background): in progress
    while it runs, then its outcome and duration."""
    started = time.monotonic()
    in_progress = UPLOADS_IN_PROGRESS.labels(path)
    in_progress.inc()
    outcome = "internal_error"
    try:
        yield
        outcome = "2xx"
    except ServiceError as e:
        outcome = e.code
        raise
    except ClientDisconnect:
        outcome = "client_disconnected"
        raise
    finally:
        in_progress.dec()
        UPLOADS.labels(path, outcome).inc()
        UPLOAD_DURATION.labels(path).observe(time.monotonic() - started)


def exposition(accept: str) -> tuple[bytes, str]:
    """What `/metrics` answers and its content type, in the format `accept` asks
    for (Prometheus text or OpenMetrics): this process's metrics, or every
    worker's summed when several share the multiprocess folder."""
    encode, content_type = choose_encoder(accept)
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return encode(registry), content_type
    return encode(REGISTRY), content_type
