"""A stalled body: its pending block goes to storage after a tick, and the upload
ends in `RequestTimeout` once it has sent nothing for the timeout. A slow body,
or a slow writer, is not a stalled one."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.unit.test_streaming import CONTENT_TYPE, FakeWriter, file_form, payload, split
from uploadsvc.errors import RequestTimeout
from uploadsvc.streaming import Received, receive_file


class IdleAwareWriter(FakeWriter):
    def __init__(self, write_seconds: float = 0.0) -> None:
        super().__init__()
        self.idled = 0
        self.write_seconds = write_seconds

    async def write(self, block: bytes) -> None:
        await asyncio.sleep(self.write_seconds)
        await super().write(block)

    async def idle(self) -> None:
        self.idled += 1


async def paced(
    chunks: list[bytes], pauses: dict[int, float], every: float = 0.0
) -> AsyncIterator[bytes]:
    """`chunks`, sleeping `pauses[i]` before chunk i (or `every`)."""
    for i, chunk in enumerate(chunks):
        await asyncio.sleep(pauses.get(i, every))
        yield chunk


def receive(body: AsyncIterator[bytes], writer: FakeWriter, timeout: float) -> Received:
    return asyncio.run(receive_file(body, CONTENT_TYPE, 64 << 20, writer, idle_timeout=timeout))


def test_a_stall_hands_the_pending_block_to_the_writer() -> None:
    data = payload(300 << 10)
    body = file_form(data)
    first, rest = body[: 200 << 10], body[200 << 10 :]
    writer = IdleAwareWriter()
    seen_at_resume: list[int] = []

    async def stalling() -> AsyncIterator[bytes]:
        yield first
        await asyncio.sleep(1.6)  # ticks every 0.5 s: progress, stall (hand-over), idle
        seen_at_resume.append(len(writer.data))
        yield rest

    received = receive(stalling(), writer, timeout=2.0)
    assert seen_at_resume == [len(first) - body.index(data)], "the partial block went first"
    assert writer.idled == 1
    assert writer.data == data
    assert received.sha256 == hashlib.sha256(data).hexdigest()


def test_a_body_that_sends_nothing_ends_at_the_timeout() -> None:
    body = file_form(payload(100 << 10))
    writer = IdleAwareWriter()
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match=r"0\.5 s"):
        receive(paced([body[:1000], body[1000:]], {1: 30.0}), writer, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.5
    assert not writer.committed


def test_a_slow_body_is_not_a_stalled_one() -> None:
    """Pauses just under the timeout, many of them: no timeout."""
    data = payload(64 << 10)
    writer = IdleAwareWriter()
    receive(paced(split(file_form(data), 8 << 10), {}, every=0.3), writer, timeout=0.8)
    assert writer.data == data


def test_a_slow_writer_is_not_a_stalled_body() -> None:
    """Time spent waiting for storage does not count against the client."""
    data = payload(3 << 20)
    writer = IdleAwareWriter(write_seconds=1.0)
    receive(paced(split(file_form(data), 256 << 10), {}), writer, timeout=0.5)
    assert writer.data == data
