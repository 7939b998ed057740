"""Conditional writes hold between processes, on every backend that declares it.

Two real processes share one store and race: each adds 1 to a counter 50
times by read / replace-if-unchanged (retrying lost races), and both try to
create the same 50 records. Every acknowledged write must count: the counter
ends at exactly 100, and each record has exactly one creator, whose bytes it
holds. A lock of one process (what local folders had before) lost about a
quarter to a half of the increments here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import Backend
from uploadsvc.storage import Ability

INCREMENTS = 50
CREATES = 50

_RACER = f"""
import asyncio, json, sys
from uploadsvc.errors import PreconditionFailed
from uploadsvc.storage import open_storage

async def main(url, options, me):
    storage = open_storage(url, options)
    sys.stdin.readline()  # both racers start together
    lost = 0
    for _ in range({INCREMENTS}):
        while True:
            data, etag = await storage.get_small("counter.json")
            try:
                await storage.put_small("counter.json", b"%d" % (int(data) + 1), if_match=etag)
                break
            except PreconditionFailed:
                lost += 1
    won = []
    for i in range({CREATES}):
        try:
            await storage.put_small(f"c{{i}}.json", me.encode(), if_none_match=True)
            won.append(i)
        except PreconditionFailed:
            pass
    print(json.dumps({{"won": won, "lost": lost}}), flush=True)

asyncio.run(main(*json.loads(sys.argv[1])))
"""


def test_two_processes_lose_no_update_and_each_create_has_one_winner(backend: Backend) -> None:
    storage = backend.storage()
    if Ability.shared_conditions not in storage.abilities:
        pytest.skip(f"{backend.name} declares no {Ability.shared_conditions.value}")

    import asyncio

    async def seed() -> None:
        await storage.check()
        await storage.put_small("counter.json", b"0", if_none_match=True)

    asyncio.run(seed())
    outputs = _race(_RACER, [[backend.url, backend.options, me] for me in ("first", "second")])
    outcomes = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

    async def final() -> tuple[bytes, dict[int, bytes]]:
        counter, _ = await storage.get_small("counter.json")
        created = {i: (await storage.get_small(f"c{i}.json"))[0] for i in range(CREATES)}
        return counter, created

    counter, created = asyncio.run(final())
    assert int(counter) == 2 * INCREMENTS, f"updates lost: {outcomes}"
    first, second = (set(o["won"]) for o in outcomes)
    assert first.isdisjoint(second) and first | second == set(range(CREATES))
    for i, data in created.items():
        assert data == (b"first" if i in first else b"second")


_RECORD_RACER = f"""
import asyncio, json, sys
from uploadsvc.records import Records
from uploadsvc.storage import open_storage

async def main(url, options, upload_id):
    records = Records(open_storage(url, options))
    sys.stdin.readline()
    for _ in range({INCREMENTS}):
        await records.change(
            upload_id, lambda r: r.model_copy(update={{"attempts": r.attempts + 1}})
        )
    print("done", flush=True)

asyncio.run(main(*json.loads(sys.argv[1])))
"""


def test_two_processes_changing_one_record_lose_no_change(backend: Backend) -> None:
    """What `uvicorn --workers 4` on one folder does to a record: every change counts."""
    import asyncio

    from uploadsvc.models import Status, StoredRecord, new_id, now
    from uploadsvc.records import Records

    storage = backend.storage()
    if Ability.shared_conditions not in storage.abilities:
        pytest.skip(f"{backend.name} declares no {Ability.shared_conditions.value}")
    upload_id = new_id()
    record = StoredRecord(
        id=upload_id,
        filename="f",
        size=0,
        content_type="application/octet-stream",
        sha256="0" * 64,
        status=Status.storing,
        created_at=now(),
        url="/",
    )
    asyncio.run(Records(storage).create(record))
    arguments = [backend.url, backend.options, upload_id]
    assert [out.strip() for out in _race(_RECORD_RACER, [arguments] * 2)] == ["done"] * 2
    assert asyncio.run(Records(storage).get(upload_id)).attempts == 2 * INCREMENTS


def _race(script: str, arguments: list[list[object]]) -> list[str]:
    """Run `script` once per argument list, all released at once; their outputs.

    A racer that fails or hangs fails the test, and no racer outlives it.
    """
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for args in arguments
    ]
    try:
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = []
        for racer in racers:
            out, _ = racer.communicate(timeout=110)
            assert racer.returncode == 0, out
            outputs.append(out)
        return outputs
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
            racer.communicate()
