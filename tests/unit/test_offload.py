"""offload.Lane: calls run in order, one at a time; errors surface later, never get lost."""

from __future__ import annotations

import asyncio
import threading

import pytest

from uploadsvc.offload import Lane


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("in the worker")


def test_calls_run_in_submission_order_one_at_a_time() -> None:
    seen: list[int] = []
    active = 0
    most_active = 0
    lock = threading.Lock()

    def work(n: int) -> None:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
        seen.append(n)
        with lock:
            active -= 1

    async def main() -> None:
        lane = Lane()
        for n in range(50):
            await lane.submit(work, n)
        await lane.drain()

    asyncio.run(main())
    assert seen == list(range(50))
    assert most_active == 1


def test_submit_returns_before_the_call_finishes() -> None:
    """The overlap is the point: the caller goes on while the worker runs."""
    release = threading.Event()
    finished: list[str] = []

    def work() -> None:
        assert release.wait(10)
        finished.append("work")

    async def main() -> None:
        lane = Lane()
        await lane.submit(work)
        finished.append("caller")  # reached while work() still blocks
        release.set()
        await lane.drain()

    asyncio.run(main())
    assert finished == ["caller", "work"]


@pytest.mark.parametrize("finish", ["drain", "cancel"])
def test_drain_and_cancel_wait_for_the_call_in_flight(finish: str) -> None:
    """Cleanup must not return while a worker still touches the buffers being dropped."""
    release = threading.Event()
    done: list[int] = []

    def work() -> None:
        assert release.wait(10)
        done.append(1)

    async def main() -> None:
        lane = Lane()
        await lane.submit(work)
        asyncio.get_running_loop().call_soon(release.set)
        await getattr(lane, finish)()
        assert done == [1]

    asyncio.run(main())


def test_an_error_surfaces_at_the_next_submit_and_the_next_call_does_not_run() -> None:
    ran: list[str] = []

    async def main() -> None:
        lane = Lane()
        await lane.submit(fail)
        with pytest.raises(Boom, match="in the worker"):
            await lane.submit(ran.append, "after")
        await lane.drain()  # the error was reported once; the lane is usable again
        await lane.submit(ran.append, "later")
        await lane.drain()

    asyncio.run(main())
    assert ran == ["later"]


def test_an_error_surfaces_at_drain() -> None:
    async def main() -> None:
        lane = Lane()
        await lane.submit(fail)
        with pytest.raises(Boom):
            await lane.drain()
        await lane.drain()  # reported once

    asyncio.run(main())


def test_drain_on_an_idle_lane_is_a_no_op() -> None:
    async def main() -> None:
        lane = Lane()
        await lane.drain()
        await lane.cancel()

    asyncio.run(main())


def test_cancel_swallows_the_error() -> None:
    async def main() -> None:
        lane = Lane()
        await lane.submit(fail)
        await lane.cancel()
        await lane.drain()

    asyncio.run(main())


def test_a_cancelled_drain_still_waits_for_the_call_in_flight() -> None:
    """Cancelling the caller must not let clean-up race a write still running."""

    async def main() -> None:
        release = threading.Event()
        finished: list[bool] = []

        def slow() -> None:
            release.wait(10)
            finished.append(True)

        lane = Lane()
        await lane.submit(slow)
        task = asyncio.create_task(lane.drain())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done(), "drain gave up while the call was still running"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == [True]

    asyncio.run(main())


def test_lanes_run_on_the_bulk_pool() -> None:
    """Bulk bytes stay off the default pool, where short calls (health, records) run."""

    async def main() -> str:
        names: list[str] = []
        lane = Lane()
        await lane.submit(lambda: names.append(threading.current_thread().name))
        await lane.drain()
        return names[0]

    assert asyncio.run(main()).startswith("uploadsvc-bulk")
