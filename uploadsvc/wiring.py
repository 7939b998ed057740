"""Settings -> the parts that do the work, for the HTTP app and for `uploadsvc worker`.

Both build the same service and jobs from the same configuration; they
differ only in what drives them (HTTP requests, or a queue). A user's mistake
found here or in the start-up check (bad key, unreachable storage or queue,
staging that workers could not reach) becomes one line and exit status 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .admission import Admission
from .config import ConfigError, Settings
from .errors import StorageUnavailable
from .jobs import Jobs
from .pipeline import Pipeline, load_pipeline
from .queues import JobQueue
from .service import UploadService
from .storage import Ability, Storage, check_in_time, open_storage
from .storage.guarded import guard
from .storage.locations import check_apart

STARTUP_CHECK_TIMEOUT = 15.0

T = TypeVar("T")


def build_jobs(
    settings: Settings, *, storage: Storage | None = None, pipeline: Pipeline | None = None
) -> Jobs:
    """The service and its jobs; `storage` and `pipeline` replace the configured ones (tests)."""
    check_apart(settings.storage.url, settings.staging.url)
    timeout = settings.storage.timeout_seconds
    service = UploadService(
        storage=guard(
            storage or open_storage(settings.storage.url, settings.storage.options), timeout
        ),
        staging=guard(open_storage(settings.staging.url, settings.staging_options()), timeout),
        pipeline=pipeline if pipeline is not None else load_pipeline(settings),
        max_upload_bytes=settings.limits.max_upload_bytes,
        body_timeout=settings.limits.body_timeout_seconds,
        admission=Admission(settings.limits.max_concurrent_uploads, settings.limits.min_free_bytes),
    )
    return Jobs(service, settings.jobs, build_queue(settings, service.storage, service.staging))


def build_queue(settings: Settings, storage: Storage, staging: Storage) -> JobQueue | None:
    """None (jobs in this process) or the Redis queue, which needs storage and staging
    that every worker reaches and shares."""
    if not settings.queue.url:
        return None
    for key, url, store in (
        ("storage", settings.storage.url, storage),
        ("staging", settings.staging.url, staging),
    ):
        if Ability.shared_conditions not in store.abilities:
            raise ConfigError(
                f"{key}.url: {url} lives in one process; with queue.url set, workers in other "
                "processes must share it: use a folder, bucket or server"
            )
    if Ability.local_files in staging.abilities:
        raise ConfigError(
            f"staging.url: {settings.staging.url} is a local folder, which workers on other "
            f"machines cannot read; with queue.url set, stage into shared storage "
            "(a bucket prefix such as s3://bucket/staging)"
        )
    try:
        from .redis_queue import RedisQueue
    except ImportError as e:
        raise ConfigError(
            f"queue.url: {settings.queue.url} needs the package {e.name!r}: "
            "pip install 'uploadsvc[redis]'"
        ) from None
    return RedisQueue(settings.queue.url, heartbeat_seconds=settings.jobs.lease_seconds)


def check_reachable(jobs: Jobs) -> None:
    """Fail fast (before serving or working) when storage, staging or queue do not answer."""
    service = jobs.service

    async def all_of_them() -> None:
        await check_in_time(service.storage, STARTUP_CHECK_TIMEOUT)
        await check_in_time(service.staging, STARTUP_CHECK_TIMEOUT)
        await jobs.queue.check(STARTUP_CHECK_TIMEOUT)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(all_of_them())
        return
    # uvicorn imports `uploadsvc.app:app` inside its running loop (its own
    # workers, `uvicorn uploadsvc.app:app`): check on a loop of our own.
    with ThreadPoolExecutor(1, thread_name_prefix="uploadsvc-check") as thread:
        thread.submit(asyncio.run, all_of_them()).result()


def or_exit(build: Callable[[], T]) -> T:
    """`build()`, or one line on stderr and exit status 1 for the user's mistakes.

    Configuration, storage and queue problems are the user's to fix: they get
    one line naming the key or URL and the reason, never a traceback.
    """
    try:
        return build()
    except (ConfigError, StorageUnavailable) as e:
        print(f"uploadsvc: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(1) from None
