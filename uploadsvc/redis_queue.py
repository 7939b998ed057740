"""Jobs on Redis through saq, run by `uploadsvc worker` processes.

Why saq: asyncio-native and small; its job keys make a push of an id that
is already waiting or running a no-op (no pile-up from repeated sweeps), and
its heartbeats free the key of a job whose worker died, so the sweep can push
that id again. taskiq's Redis stream broker would do as well but brings a
framework (brokers, receivers, its own worker command) for what is one
function here; arq is in maintenance-only mode. saq is an optional extra
(`uploadsvc[redis]`), imported only when `[queue] url` is set.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio
import redis.exceptions
import saq.queue.redis

from .config import ConfigError
from .errors import StorageUnavailable
from .shown import shown_url

#: The one function a worker runs: `run_job(upload_id=...)`.
JOB_FUNCTION = "run_job"

#: Every Redis call ends within this (a partitioned Redis must not hang a sweep,
#: a request's nudge or a shutdown); a worker's wait for work is shorter.
SOCKET_TIMEOUT_SECONDS = 15.0
DEQUEUE_SECONDS = 5.0


class RedisQueue:
    """Jobs on a Redis queue (saq), run by `uploadsvc worker` processes."""

    def __init__(self, url: str, heartbeat_seconds: float) -> None:
        try:
            client = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
                socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            )
            self.saq = _SaqQueue(client)
        except ValueError as e:
            raise ConfigError(f"queue.url: {shown_url(url)}: {e}") from None
        self.url = url
        #: A running job that has not beaten for this long is taken as dead by saq,
        #: which frees its id for the next push.
        self.heartbeat = max(1, round(heartbeat_seconds))

    async def open(self) -> None:
        await self.saq.connect()

    async def check(self, seconds: float) -> None:
        """`StorageUnavailable` unless Redis answers within `seconds`.

        On a client of its own: the check runs before the server's event loop
        exists, and a client stays bound to the loop it first ran on.
        """
        client = redis.asyncio.Redis.from_url(self.url)
        try:

            async def ping() -> None:
                await client.ping()  # type: ignore[misc]  # typed as sync-or-async

            await asyncio.wait_for(ping(), seconds)
        except TimeoutError:
            raise StorageUnavailable(
                f"queue {shown_url(self.url)} did not answer in {seconds:g} s"
            ) from None
        except (OSError, redis.exceptions.RedisError) as e:
            raise StorageUnavailable(f"queue {shown_url(self.url)} is not reachable: {e}") from None
        finally:
            await client.aclose()

    async def push(self, upload_id: str, delay: float = 0.0) -> None:
        """A push now shares its key with the job of the id, so repeats are no-ops; a
        later one (a retry) has a key of its own, or the job making it, still
        running, would swallow it."""
        await self.saq.enqueue(
            JOB_FUNCTION,
            key=upload_id if delay <= 0 else f"{upload_id}.later",
            upload_id=upload_id,
            timeout=0,  # steps may take long; the record's lease, not saq, bounds them
            heartbeat=self.heartbeat,
            retries=1,  # retries are the record's (attempts, backoff), not saq's
            scheduled=time.time() + delay if delay > 0 else 0,
        )

    async def close(self) -> None:
        await self.saq.disconnect()


class _SaqQueue(saq.queue.redis.RedisQueue):
    """saq's Redis queue, sweeping dead jobs without waiting for their dead workers.

    A worker's sweep aborts each job whose heartbeat stopped and waits (5 s
    by default, one job after another) for its worker to confirm; a worker
    that died never confirms, so six jobs of a killed worker stayed blocked
    for half a minute. Their ids now come free within a sweep.
    """

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return await super().sweep(lock, abort=min(abort, 0.1))
