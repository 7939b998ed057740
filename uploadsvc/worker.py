"""`uploadsvc worker`: runs background jobs from the Redis queue, serves no HTTP.

Each queued message names an upload; the worker runs its job exactly as the
service runs jobs in-process (`Jobs.run`: claim the record's lease, advance,
release), so what a message says is never trusted beyond the id. While a job
runs, its saq job beats every third of a lease: a worker that dies stops
beating, saq frees the id, and once the record's lease has expired the sweep
(which every worker runs too) pushes it again for another worker.

SIGTERM or SIGINT: stop taking messages, hand running jobs back (their
leases released, so another worker takes them at once), disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from . import logs
from .config import ConfigError, load_settings
from .jobs import CONCURRENT_JOBS, Jobs
from .redis_queue import DEQUEUE_SECONDS, JOB_FUNCTION, RedisQueue
from .wiring import build_jobs, check_reachable, or_exit

log = logging.getLogger(__name__)


def main(config: Path | None) -> None:
    """Build, check, and work until a signal; user mistakes are one line and exit 1."""

    def build() -> Jobs:
        settings = load_settings(config)
        if not settings.queue.url:
            raise ConfigError("queue.url: empty: the service runs its jobs itself; set a redis://")
        jobs = build_jobs(settings)
        check_reachable(jobs)
        logs.setup(settings)  # only now, as in app.py: a failed start-up is one line
        return jobs

    jobs = or_exit(build)
    asyncio.run(work(jobs))


async def work(jobs: Jobs) -> None:
    import saq
    from saq.types import PartialTimersDict

    queue = jobs.queue
    assert isinstance(queue, RedisQueue)

    async def run_job(ctx: Any, *, upload_id: str) -> None:
        beating = asyncio.create_task(_beat(ctx["job"], queue.heartbeat / 3))
        try:
            await jobs.run(upload_id)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    worker = saq.Worker(
        queue.saq,
        functions=[(JOB_FUNCTION, run_job)],
        concurrency=CONCURRENT_JOBS,
        # saq looks for jobs whose heartbeat stopped every second (its default:
        # a minute); the other timers are saq's defaults (its type wants them all).
        timers=PartialTimersDict(schedule=1, worker_info=10, sweep=1, abort=1),
        # Waits on Redis end within the client's socket timeout (redis_queue.py).
        dequeue_timeout=DEQUEUE_SECONDS,
    )
    worker.SIGNALS = []  # ours below: jobs hand their leases back before saq stops
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await jobs.start()
    running = asyncio.create_task(worker.start())
    log.info("worker %s taking jobs from %s", jobs.instance, queue.url)
    await stopping.wait()
    log.info("worker %s stopping: handing its jobs back", jobs.instance)
    # Jobs first: from here on a message saq still hands over is dropped unclaimed
    # (any sweep pushes it again), and the runs in flight release their leases.
    await jobs.stop()
    await worker.stop()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await jobs.close()


async def _beat(job: Any, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):  # a missed beat is not the job's failure
            await job.update()
